"""``wandb-gradema sweep CONFIG.yaml``: run a W&B sweep offline with W&B's own sweep engine.

What the W&B server and ``wandb agent`` do together, on one machine and with no server:
``sweeps.next_run`` suggests each run (grid, random, bayes) from the runs so far,
``sweeps.stop_runs`` applies the config's ``early_terminate``, and each run is launched the way
the agent launches it: the YAML's ``program`` and ``command`` with the parameters as arguments,
``WANDB_SWEEP_ID``, ``WANDB_SWEEP_PARAM_PATH`` (a YAML of ``{name: {value: v}}``),
``WANDB_RUN_ID`` and ``WANDB_MODE=offline`` in its environment. Each run's state and metric
history are read back from its offline transaction log (``wandb_gradema.offline.read_run``) and
fed to the engine as the server would feed them. The runs are ordinary offline runs under
``DIR/wandb/``; the sweep's files (parameter files, one output log per run, ``results.json``)
are under ``DIR/wandb/sweep-<id>/``. To upload the runs later with ``wandb sync``, give the id
of a sweep created on the server (``wandb sweep``) with ``--sweep-id``: runs carrying a made-up
sweep id are refused by the server ("sweep ... not found").

``--no-prune`` runs the same sweep with pruning off (``gradema.on_escalation=warn`` is added to
every run's parameters) so the two can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import string
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .._validate import check_int
from .config import (
    SweepConfigError,
    build_command,
    command_args,
    grid_size,
    import_sweeps,
    load_sweep_config,
    resolve_program,
    searched_parameters,
)
from .report import progress_line, result_rows, summary_table
from .trial import Trial

SIBLINGS_DIR_ENV = "GRADEMA_SIBLINGS_DIR"  # wandb_gradema.siblings.SIBLINGS_DIR_ENV

__all__ = ["SweepRunner", "add_arguments", "run"]

#: Seconds between checks of the running processes.
POLL_INTERVAL_S = 0.2
#: Seconds the runs get to end after Ctrl-C before they are killed.
INTERRUPT_GRACE_S = 20.0
_ID_CHARS = string.ascii_lowercase + string.digits


def _new_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


def _plain(value: Any) -> Any:
    """``value`` as JSON would carry it (the server sends JSON): numpy scalars become floats."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep (the CLI flags).

    Attributes:
        count: runs to launch (a grid may end sooner).
        parallel: runs at a time.
        wandb_dir: ``WANDB_DIR`` of the runs (the runs land in ``wandb_dir/wandb/``).
        seed: seeds the engine's random draws (random and bayes); None draws a seed.
        prune: False adds ``gradema.on_escalation=warn`` to every run's parameters.
        budget_key: the run config key holding the step budget, for "steps run vs budget".
        stop_interval: seconds between ``early_terminate`` checks (each reads running logs).
        siblings: runs share sibling records in ``DIR/wandb/sweep-<id>/siblings/`` and are
            judged against their healthy siblings (``--no-siblings``: per-run rules only).
        sweep_id: ``ID``, ``PROJECT/ID`` or ``ENTITY/PROJECT/ID`` of a sweep created on a W&B
            server (``wandb sweep``), so that ``wandb sync`` can later upload the runs into it;
            None makes up a local id (the server rejects runs of a sweep it does not know).
    """

    count: int
    parallel: int = 1
    wandb_dir: Path = Path(".")
    seed: int | None = None
    prune: bool = True
    budget_key: str = "steps"
    stop_interval: float = 10.0
    sweep_id: str | None = None
    siblings: bool = True


class SweepRunner:
    """Drives one sweep: suggest, launch, watch, read back, stop early, report.

    Args:
        config_path: the sweep YAML.
        options: see ``SweepOptions``.
        out: where progress and the table go.

    Raises:
        SweepConfigError: the YAML is invalid (W&B's engine lists the violations) or its
            program cannot be found.
        ValueError: ``count`` or ``parallel`` < 1.
    """

    def __init__(self, config_path: str | Path, options: SweepOptions, out: TextIO = sys.stdout) -> None:
        check_int("count", options.count, minimum=1)
        check_int("parallel", options.parallel, minimum=1)
        self.config_path = Path(config_path)
        self.config = load_sweep_config(self.config_path)
        self.program = resolve_program(self.config, self.config_path)
        self.options = options
        self.out = out
        self.sweep_id, self.project, self.entity = _parse_sweep_path(options.sweep_id)
        self.project = self.project or self.config.get("project")
        self.entity = self.entity or self.config.get("entity")
        self.wandb_dir = Path(options.wandb_dir).resolve()
        self.sweep_dir = self.wandb_dir / "wandb" / f"sweep-{self.sweep_id}"
        metric = self.config.get("metric") or {}
        self.metric: str | None = metric.get("name")
        self.goal: str = metric.get("goal", "minimize")
        self.columns = searched_parameters(self.config.get("parameters", {}))
        self.total = options.count
        if self.config["method"] == "grid":  # a grid ends when it is done
            self.total = min(options.count, grid_size(self.config.get("parameters", {})))
        self.trials: list[Trial] = []
        self._exhausted = False
        self._engine_failed = False
        self._last_stop_check = 0.0
        self._status_shown = False
        self._sweeps = import_sweeps()
        self._seed = options.seed if options.seed is not None else secrets.randbelow(2**31)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Run the sweep to its end; returns 0, 1 if the engine failed, 130 after Ctrl-C (ended
        runs are kept either way)."""
        random.seed(self._seed)
        import numpy as np

        np.random.seed(self._seed)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self._print_header()
        status = 0
        with _sigterm_as_interrupt():
            try:
                while self._step():
                    time.sleep(POLL_INTERVAL_S)
            except KeyboardInterrupt:
                status = 130
                self._interrupt()
        self._clear_status()
        self._print(summary_table(self.trials, self.columns, self.metric, self.goal, self.options.budget_key))
        if self.options.siblings:
            from ..siblings.report import sibling_lines

            self._print("\n".join(sibling_lines(self.trials, self.options.budget_key, self.metric, self.goal)))
        self._write_results()
        self._print(f"runs: {self.wandb_dir / 'wandb'}/offline-run-*  {self._sync_hint()}")
        self._print(f"charts of every run: wandb-gradema report {self.sweep_dir}")
        return 1 if status == 0 and self._engine_failed else status

    def _step(self) -> bool:
        """One pass: reap ended runs, stop runs early, launch new ones; False when all is done."""
        for trial in self.running:
            if trial.poll() is not None:
                self._reap(trial)
        self._early_terminate()
        while len(self.running) < self.options.parallel and self._can_launch():
            self._launch_next()
        if not self.running and not self._can_launch():
            return False
        self._show_status()
        return True

    @property
    def running(self) -> list[Trial]:
        return [t for t in self.trials if t.outcome is None]

    def _can_launch(self) -> bool:
        return not self._exhausted and len(self.trials) < self.total

    # ------------------------------------------------------------------ runs
    def _launch_next(self) -> None:
        try:
            suggestion = self._sweeps.next_run(self.config, [t.sweep_run() for t in self.trials])
        except ValueError as exc:  # the engine cannot go on (e.g. a config it rejects at run time)
            self._print(f"sweep engine stopped the sweep: {exc}")
            self._exhausted = True
            self._engine_failed = True
            return
        if suggestion is None:  # a grid that is done
            self._exhausted = True
            return
        trial = Trial(number=len(self.trials) + 1, run_id=_new_id(), params=_plain(suggestion.config))
        params = self._run_params(trial.params)
        param_path = self.sweep_dir / f"config-{trial.run_id}.yaml"
        _write_param_file(param_path, params)
        json_path = self.sweep_dir / f"config-{trial.run_id}.json"
        argv = build_command(self.config, params, program=self.program, args_json_file=json_path)
        if any("${args_json_file}" == str(c) for c in self.config.get("command") or []):
            json_path.write_text(command_args(params)["args_json"][0])
        trial.launch(argv, self._run_env(trial, param_path), self.sweep_dir / f"{trial.run_id}.log")
        self.trials.append(trial)
        self._clear_status()
        self._print(
            progress_line(trial, self.total, self.columns, self.metric, self.goal, self.options.budget_key)
        )

    def _run_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters the run gets: the suggestion, plus ``on_escalation=warn`` for --no-prune."""
        params = dict(params)
        if not self.options.prune:
            section = params.get("gradema", {}).get("value")
            section = dict(section) if isinstance(section, Mapping) else {}
            params["gradema"] = {"value": {**section, "on_escalation": "warn"}}
        return params

    def _run_env(self, trial: Trial, param_path: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("WANDB_SERVICE", None)  # as the agent does: each run starts its own service
        env.update(
            WANDB_SWEEP_ID=self.sweep_id,
            WANDB_SWEEP_PARAM_PATH=str(param_path),
            WANDB_RUN_ID=trial.run_id,
            WANDB_MODE="offline",
            WANDB_DIR=str(self.wandb_dir),
        )
        if self.options.siblings:  # sweep-aware judgement: the runs share their records here
            env[SIBLINGS_DIR_ENV] = str(self.sweep_dir / "siblings")
        else:
            env.pop(SIBLINGS_DIR_ENV, None)
        env.update(
            WANDB_PROJECT=str(self.project or env.get("WANDB_PROJECT") or "gradema-sweeps"),
        )
        if self.entity:
            env["WANDB_ENTITY"] = str(self.entity)
        return env

    def _reap(self, trial: Trial) -> None:
        trial.finish(self.wandb_dir)
        self._clear_status()
        self._print(
            progress_line(trial, self.total, self.columns, self.metric, self.goal, self.options.budget_key)
        )
        if trial.outcome == "crashed" and trial.log_path is not None:
            self._print(f"    output: {trial.log_path}")

    def _early_terminate(self) -> None:
        """Apply the config's ``early_terminate`` to the running runs, every ``stop_interval`` s."""
        if "early_terminate" not in self.config or not self.running:
            return
        now = time.monotonic()
        if now - self._last_stop_check < self.options.stop_interval:
            return
        self._last_stop_check = now
        runs = [t.sweep_run(live=t.read(self.wandb_dir) if t.outcome is None else None) for t in self.trials]
        by_id = {t.run_id: t for t in self.running}
        for stop in self._sweeps.stop_runs(self.config, runs):
            trial = by_id.get(stop.name)
            if trial is not None and trial.stop_requested is None:
                self._clear_status()
                self._print(f"    early_terminate: stopping {trial.run_id}")
                trial.signal(signal.SIGTERM, "early_terminate")

    def _interrupt(self) -> None:
        """Ctrl-C: interrupt the running runs, wait for them (a second Ctrl-C kills), reap them."""
        running = self.running
        self._clear_status()
        self._print(
            f"\nCtrl-C: stopping {len(running)} running run(s), waiting up to {INTERRUPT_GRACE_S:.0f}s "
            "(Ctrl-C again kills them). Ended runs are kept."
        )
        for trial in running:
            trial.signal(signal.SIGINT, "interrupt")
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        try:
            while any(t.poll() is None for t in running) and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_S)
        except KeyboardInterrupt:
            pass
        for trial in running:
            if trial.poll() is None:
                trial.kill()
                if trial.process is not None:
                    trial.process.wait()
            trial.finish(self.wandb_dir)

    # ------------------------------------------------------------------ output
    def _print_header(self) -> None:
        method = self.config["method"]
        target = f"{self.metric} ({self.goal})" if self.metric else "no metric"
        searched = ", ".join(self.columns) or "fixed parameters"
        mode = "pruning on" if self.options.prune else "pruning OFF (gradema.on_escalation=warn)"
        self._print(
            f"sweep {self.sweep_id}: {method} over {searched}, metric {target}; {self.total} runs, "
            f"{self.options.parallel} at a time; {mode}; seed {self._seed}\n"
            f"files: {self.sweep_dir}"
        )

    def _show_status(self) -> None:
        # A live line needs a real terminal; Jupyter's "!" shell also reports a tty but prints
        # every "\r" update on a line of its own.
        if not self.out.isatty() or "JPY_PARENT_PID" in os.environ or os.environ.get("TERM") == "dumb":
            return
        running = ", ".join(f"{t.run_id} {t.seconds:.0f}s" for t in self.running)
        done = len(self.trials) - len(self.running)
        pruned = sum(t.outcome == "pruned" for t in self.trials)
        line = f"  running: {running or '-'} | ended {done}/{self.total}, pruned {pruned}"
        self.out.write("\r" + line[:150].ljust(150))
        self.out.flush()
        self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown:
            self.out.write("\r" + " " * 150 + "\r")
            self._status_shown = False

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _sync_hint(self) -> str:
        if self.options.sweep_id is not None:
            return f"(upload into sweep {self.options.sweep_id} with `wandb sync` on them)"
        return (
            f"(local sweep id {self.sweep_id}: to upload with `wandb sync`, create the sweep with "
            "`wandb sweep` and rerun with --sweep-id, as a W&B server rejects runs of an unknown sweep)"
        )

    def _write_results(self) -> None:
        rows = result_rows(self.trials, self.columns, self.metric, self.goal, self.options.budget_key)
        payload = {
            "sweep_id": self.sweep_id,
            "config": str(self.config_path),
            "method": self.config["method"],
            "metric": self.metric,
            "goal": self.goal,
            "seed": self._seed,
            "prune": self.options.prune,
            "runs": rows,
        }
        (self.sweep_dir / "results.json").write_text(json.dumps(payload, indent=1, default=str))


def _parse_sweep_path(path: str | None) -> tuple[str, str | None, str | None]:
    """``ID`` / ``PROJECT/ID`` / ``ENTITY/PROJECT/ID`` -> (id, project, entity); None -> a new id."""
    if path is None:
        return _new_id(), None, None
    parts = path.split("/") if isinstance(path, str) else []
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise ValueError(f"`sweep_id` must be ID, PROJECT/ID or ENTITY/PROJECT/ID; got {path!r}.")
    sweep_id = parts[-1]
    project = parts[-2] if len(parts) >= 2 else None
    entity = parts[0] if len(parts) == 3 else None
    return sweep_id, project, entity


def _write_param_file(path: Path, params: Mapping[str, Any]) -> None:
    """The file ``WANDB_SWEEP_PARAM_PATH`` names, in the agent's format."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(dict(params), default_flow_style=False, sort_keys=False, allow_unicode=True)
    path.write_text(f"wandb_version: 1\n\n{body}")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the sweep runs, SIGTERM stops it like Ctrl-C (main thread only)."""
    previous: Callable[..., Any] | int | None = None
    installed = False
    if hasattr(signal, "SIGTERM"):
        try:
            previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
            installed = True
        except ValueError:  # not the main thread
            pass
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sweep`` subcommand's flags."""
    parser.add_argument("config", help="sweep YAML (W&B's format), e.g. sweeps/lr.yaml")
    parser.add_argument(
        "--count", type=int, default=10, help="runs to launch (default 10; a grid may end sooner)"
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument(
        "--dir", default=".", help="WANDB_DIR for the runs: they land in DIR/wandb/ (default .)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the engine's random draws (default: drawn)"
    )
    parser.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="run with pruning off (adds gradema.on_escalation=warn to every run) to compare",
    )
    parser.add_argument(
        "--no-siblings",
        dest="siblings",
        action="store_false",
        help="judge each run alone (no sibling records shared in DIR/wandb/sweep-<id>/siblings/)",
    )
    parser.add_argument(
        "--budget-key", default="steps", help="run config key of the step budget (default steps)"
    )
    parser.add_argument(
        "--sweep-id",
        default=None,
        metavar="[ENTITY/PROJECT/]ID",
        help="a sweep created with `wandb sweep`, so `wandb sync` can upload the runs into it "
        "(default: a local id, which a W&B server does not know)",
    )
    parser.add_argument(
        "--stop-interval",
        type=float,
        default=10.0,
        help="seconds between early_terminate checks (default 10; each reads the running logs)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the ``sweep`` command; returns the exit status (2: invalid config or flags)."""
    options = SweepOptions(
        count=args.count,
        parallel=args.parallel,
        wandb_dir=Path(args.dir),
        seed=args.seed,
        prune=args.prune,
        budget_key=args.budget_key,
        stop_interval=args.stop_interval,
        sweep_id=args.sweep_id,
        siblings=args.siblings,
    )
    try:
        runner = SweepRunner(args.config, options)
    except (SweepConfigError, ValueError, TypeError, ImportError) as exc:
        print(f"wandb-gradema sweep: {exc}", file=sys.stderr)
        return 2
    return runner.run()
