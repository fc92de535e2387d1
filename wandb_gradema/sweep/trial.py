"""One run of an offline sweep: launched as ``wandb agent`` launches it, read back from its log.

A ``Trial`` holds what the runner knows about one run: the parameters the engine suggested,
the child process, and, once it has ended, what its offline transaction log says (state,
summary, metric history). ``sweep_run()`` turns that into the ``sweeps.SweepRun`` the engine
reads, the same fields the W&B server would give it.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..offline import OfflineRun, find_runs, read_run
from ..wandb_sink import PREFIX

__all__ = ["OUTCOMES", "Trial", "flatten_params", "gradema_value", "metric_values"]

#: How the runner labels a run that has ended (``Trial.outcome``).
OUTCOMES = ("finished", "pruned", "failed", "crashed", "killed")


def flatten_params(params: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{name: {"value": v}}`` -> ``{name: v}``, nested dict values as ``outer.inner``."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for name, spec in params.items():
        walk(name, spec.get("value"))
    return flat


def gradema_value(summary: Mapping[str, Any], name: str) -> Any:
    """Summary value ``gradema/<name>`` (or ``gradema/<monitor name>/<name>``), else None."""
    if f"{PREFIX}/{name}" in summary:
        return summary[f"{PREFIX}/{name}"]
    for key, value in summary.items():
        if key.startswith(f"{PREFIX}/") and key.endswith(f"/{name}") and key.count("/") == 2:
            return value
    return None


def would_prune(summary: Mapping[str, Any]) -> str:
    """For a finished run: "would prune at step N: reason" when it had a prune-grade escalation.

    Why: with pruning off (``--no-prune``), this is what a user compares against the pruned sweep.
    """
    events = gradema_value(summary, "events")
    if isinstance(events, list):
        for event in events:
            if isinstance(event, Mapping) and event.get("confirmed"):
                return f"would prune at step {event.get('step')}: {event.get('reason', '')}"
        if events:
            first = events[0] if isinstance(events[0], Mapping) else {}
            return f"escalated at step {first.get('step')} (not prune-grade): {first.get('reason', '')}"
    return ""


def metric_values(run: OfflineRun, metric: str) -> list[float]:
    """Every finite value of ``metric`` in the run's history and summary (what the engine reads)."""
    values = [row[metric] for row in run.history if metric in row]
    if metric in run.summary:
        values.append(run.summary[metric])
    return [
        float(v)
        for v in values
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


@dataclass
class Trial:
    """One run of the sweep.

    Attributes:
        number: 1-based launch order.
        run_id: the W&B run id (``WANDB_RUN_ID``).
        params: the engine's suggestion, ``{name: {"value": v}}``.
        outcome: None while running, then one of ``OUTCOMES``.
        run: the run as its offline log records it (None before it ends, or if it never started).
        exit_code: the process exit status (negative: killed by that signal).
        note: why it ended that way, in a few words (prune reason, crash line).
    """

    number: int
    run_id: str
    params: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    outcome: str | None = None
    run: OfflineRun | None = None
    exit_code: int | None = None
    note: str = ""
    stop_requested: str | None = None  # "early_terminate" or "interrupt"

    # ------------------------------------------------------------------ process
    def launch(self, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        """Start the run's process (own process group, stdin closed, output to ``log_path``)."""
        self.log_path = log_path
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            # As `wandb agent` does: the terminal's Ctrl-C reaches the runner only, which then
            # decides what the runs get.
            kwargs["process_group"] = 0
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **kwargs
            )
        self.started = time.monotonic()

    def poll(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int, why: str) -> None:
        """Send ``sig`` to the run's process (if still alive) and remember why it was stopped."""
        self.stop_requested = self.stop_requested or why
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(sig)
            except OSError:
                pass  # it ended meanwhile

    def kill(self) -> None:
        self.signal(getattr(signal, "SIGKILL", signal.SIGTERM), self.stop_requested or "interrupt")

    # ------------------------------------------------------------------ read back
    def find_dir(self, wandb_dir: Path) -> Path | None:
        """The run's offline directory under ``wandb_dir`` (None until ``wandb.init`` made it)."""
        matches = [p for p in find_runs(wandb_dir) if p.name.endswith(f"-{self.run_id}")]
        return matches[-1] if matches else None

    def read(self, wandb_dir: Path) -> OfflineRun | None:
        """Read the run's offline log (history included), or None when there is none (yet)."""
        path = self.find_dir(wandb_dir)
        if path is None:
            return None
        try:
            return read_run(path, history=True)
        except (RuntimeError, OSError, ValueError):
            return None

    def finish(self, wandb_dir: Path) -> None:
        """Record how the ended process left its run: outcome, note, the run as logged."""
        self.ended = time.monotonic()
        self.exit_code = self.poll()
        self.run = self.read(wandb_dir)
        summary = self.run.summary if self.run is not None else {}
        if self.stop_requested is not None:
            self.outcome = "killed"
            self.note = (
                "stopped by early_terminate" if self.stop_requested == "early_terminate" else "interrupted"
            )
        elif gradema_value(summary, "pruned") and self.exit_code == 0:
            self.outcome = "pruned"
            self.note = str(gradema_value(summary, "prune_reason") or "")
        elif self.exit_code == 0 and self.run is not None and self.run.state == "finished":
            self.outcome = "finished"
            self.note = would_prune(summary)
        elif self.exit_code == 0 and self.run is not None:
            self.outcome = "failed"  # the program marked its run failed itself, and exited 0
            self.note = f"W&B state {self.run.state}, exit 0"
        else:
            self.outcome = "crashed"
            self.note = f"exit {self.exit_code}: {self._last_log_line()}"

    def _last_log_line(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "no output"

    # ------------------------------------------------------------------ facts
    @property
    def wandb_state(self) -> str:
        """The state W&B gives the run (what the engine is fed)."""
        if self.outcome is None:
            return "running"
        if self.outcome == "killed":
            return "killed"
        if self.run is None or self.run.state not in ("finished", "failed"):
            return "crashed"  # no exit record: the server calls it crashed
        return "failed" if self.outcome != "finished" else "finished"

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def steps(self) -> int | None:
        """Optimizer steps the monitor observed (None when unknown)."""
        if self.run is None:
            return None
        steps = gradema_value(self.run.summary, "steps_observed")
        if isinstance(steps, (int, float)):
            return int(steps)
        logged = [s for s in self.run.column(f"{PREFIX}/step") if isinstance(s, (int, float))]
        return int(max(logged)) + 1 if logged else None

    def budget(self, key: str) -> int | None:
        """The step budget: the run config's ``key`` (e.g. ``steps``), when it is a number."""
        value = self.run.config.get(key) if self.run is not None else None
        if value is None:
            value = flatten_params(self.params).get(key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def pruned_step(self) -> int | None:
        step = gradema_value(self.run.summary, "pruned_step") if self.run is not None else None
        return int(step) if isinstance(step, (int, float)) and self.outcome == "pruned" else None

    def best(self, metric: str | None, goal: str) -> float | None:
        """The best finite value of ``metric`` the run logged (history and summary)."""
        if metric is None or self.run is None:
            return None
        values = metric_values(self.run, metric)
        if not values:
            return None
        return min(values) if goal == "minimize" else max(values)

    def last(self, metric: str | None) -> Any:
        """The run's summary value of ``metric`` (its last logged value, or a pruned run's penalty)."""
        if metric is None or self.run is None:
            return None
        return self.run.summary.get(metric)

    def sweep_run(self, live: OfflineRun | None = None) -> Any:
        """The ``sweeps.SweepRun`` the engine reads; ``live``: a running run's log so far."""
        from .config import import_sweeps

        sweeps = import_sweeps()
        logged = self.run if self.run is not None else live
        return sweeps.SweepRun(
            name=self.run_id,
            state=self.wandb_state,
            config=self.params,
            history=logged.history if logged is not None else [],
            summary_metrics=logged.summary if logged is not None else {},
            exitcode=self.exit_code,
        )
