"""Pruning inside a W&B sweep: real offline runs that see a sweep exactly as an agent sets it up.

``WANDB_SWEEP_ID`` and ``WANDB_SWEEP_PARAM_PATH`` (a YAML of ``{name: {value: v}}``) are what both
agents export before the training code calls ``wandb.init()``; with them ``run.sweep_id`` and
``run.config`` look as they do under an agent. Divergence is a NaN gradient: it escalates at
once, whatever the detector's tuning.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
import yaml
from helpers import decided_at, train_loop

import wandb_gradema
from wandb_gradema import EscalationError, GrademaWarning, RunPruned
from wandb_gradema.monitor import PRUNED_TAG
from wandb_gradema.offline import find_runs, read_run
from wandb_gradema.pruning import pruned_metric_value

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def enter_sweep(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Export what an agent exports for one run: the sweep id and the run's parameter file.

    W&B reads the environment into a process-wide settings singleton at setup time, so the
    helper tears W&B down before (to pick the sweep up) and after (so no later test runs
    "inside" this sweep), as the agents do between runs.
    """

    def enter(params: dict[str, Any] | None = None) -> Path:
        path = tmp_path / "sweep-params.yaml"
        body = {name: {"value": value} for name, value in (params or {}).items()}
        path.write_text("wandb_version: 1\n\n" + (yaml.safe_dump(body) if body else ""))
        monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
        monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(path))
        wandb.teardown()
        return path

    yield enter
    if wandb.run is not None:
        wandb.finish()
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_PARAM_PATH", raising=False)
    wandb.teardown()


# ---------------------------------------------------------------------------- policy
def test_inside_a_sweep_the_default_prunes_and_records_why(tiny, wandb_offline, enter_sweep, sync_every: int) -> None:
    stop = decided_at(6, sync_every)  # found at step 6, pruned by the step() that decides
    model, batch = tiny
    enter_sweep({"lr": 0.01})
    run = wandb_offline.init()
    assert run.sweep_id == "sweep123" and run.config["lr"] == 0.01
    opt = torch.optim.SGD(model.parameters(), lr=run.config["lr"])
    monitor = wandb_gradema.watch(opt)
    cleaned: list[bool] = []
    with pytest.warns(GrademaWarning, match=f"Run pruned at step {stop}"), pytest.raises(RunPruned) as pruned:
        try:
            train_loop(model, opt, batch, 50, monitor=monitor, nan_at={6}, log=lambda i, v: run.log({"loss": v}))
        except Exception:  # noqa: BLE001 - a broad handler in training code must not swallow it
            pytest.fail("RunPruned was caught as an Exception")
        finally:
            cleaned.append(True)
            monitor.remove()  # the usual cleanup after a prune: quiet, writes nothing
    err = pruned.value
    assert cleaned == [True]
    assert isinstance(err, SystemExit) and not isinstance(err, Exception) and err.code == 0
    assert (err.step, monitor.pruned) == (stop, err)
    assert "Non-finite" in err.reason and "at step 6" in err.reason and str(err).startswith(f"Run pruned at step {stop}: ")

    logged = wandb_offline.read(run)
    assert (logged.state, logged.exit_code) == ("failed", 1)
    s = logged.summary
    assert s["gradema/pruned"] is True and s["gradema/pruned_step"] == stop
    assert s["gradema/prune_reason"] == err.reason and "nonfinite" in s["gradema/prune_types"]
    assert s["gradema/steps_observed"] == stop + 1 and s["gradema/nonfinite_steps"] == stop - 6 + 1  # (deferred: the NaN update went in)
    assert math.isnan(s["gradema/grad_norm"])  # the last values stay in the summary
    assert PRUNED_TAG in logged.tags
    assert any(a["level"] == "ERROR" and f"pruned at step {stop}" in a["title"] for a in logged.alerts)
    assert len(logged.column("loss")) == stop  # steps before it logged; it stopped inside opt.step()


def test_outside_a_sweep_the_default_warns_and_training_goes_on(tiny, wandb_offline) -> None:
    model, batch = tiny
    run = wandb_offline.init()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    with pytest.warns(GrademaWarning, match="gradient drift escalated at step 6"):
        assert train_loop(model, opt, batch, 20, monitor=monitor, nan_at={6}) == 20
    monitor.remove()
    run.finish()
    logged = wandb_offline.read(run, history=False)
    assert logged.state == "finished" and logged.summary["gradema/escalated"] is True
    assert "gradema/pruned" not in logged.summary and PRUNED_TAG not in logged.tags


@pytest.mark.parametrize(
    ("in_sweep", "action", "outcome"),
    [
        (True, "warn", "continues"),
        (True, "raise", EscalationError),
        (False, "prune", RunPruned),
    ],
)
def test_on_escalation_overrides_the_sweep_default(
    tiny, wandb_offline, enter_sweep, in_sweep: bool, action: str, outcome: Any
) -> None:
    model, batch = tiny
    if in_sweep:
        enter_sweep()
    run = wandb_offline.init()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, on_escalation=action)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrademaWarning)
        if outcome == "continues":
            assert train_loop(model, opt, batch, 12, monitor=monitor, nan_at={3}) == 12
        else:
            with pytest.raises(outcome, match="at step 3"):
                train_loop(model, opt, batch, 12, monitor=monitor, nan_at={3})
    monitor.remove()
    if wandb.run is run:  # not finished by a prune
        run.finish()
    logged = wandb_offline.read(run, history=False)
    assert (logged.state == "failed") == (outcome is RunPruned)


def test_a_callable_on_escalation_decides_inside_a_sweep(tiny, wandb_offline, enter_sweep) -> None:
    model, batch = tiny
    enter_sweep()
    run = wandb_offline.init()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    monitor = wandb_gradema.watch(opt, on_escalation=seen.append)
    assert train_loop(model, opt, batch, 10, monitor=monitor, nan_at={2}) == 10
    monitor.remove()
    run.finish()
    assert [e.step for e in seen] == [2] and wandb_offline.read(run, history=False).state == "finished"


# ---------------------------------------------------------------------------- options from the sweep
def test_sweep_parameters_set_options_through_the_param_file(tiny, wandb_offline, enter_sweep) -> None:
    """Nested sweep parameters arrive as ``wandb.config["gradema"]``; explicit arguments win."""
    model, batch = tiny
    section = {"on_escalation": "warn", "patience": 4, "log_every": 3, "sweep_metric": "loss"}
    enter_sweep({"lr": 0.01, "gradema": section})
    run = wandb_offline.init()
    assert dict(run.config["gradema"]) == section
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, patience=2)
    assert (monitor.on_escalation, monitor.policy.patience, monitor.log_every) == ("warn", 2, 3)
    with pytest.warns(GrademaWarning, match="escalated"):  # warn from the sweep: no prune
        assert train_loop(model, opt, batch, 8, monitor=monitor, nan_at={2}) == 8
    monitor.remove()
    run.finish()
    assert wandb_offline.read(run, history=False).state == "finished"


@pytest.mark.parametrize(
    ("section", "error", "match"),
    [
        (
            {"on_escalation": "stop"},
            ValueError,
            r"`on_escalation` must be one of .*got 'stop' \(set in wandb.config",
        ),
        (
            {"sweep_goal": "lowest"},
            ValueError,
            r"`sweep_goal` must be one of 'minimize', 'maximize'; got 'lowest'",
        ),
        ({"sweep_metric": 3}, TypeError, r"`sweep_metric` must be a non-empty string or None, got 3"),
        ({"sweep_penalty": 2.3}, ValueError, r"`sweep_penalty` needs `sweep_metric`"),
        ({"cooldown": 5}, TypeError, r"wandb.config\['gradema'\] got unknown option\(s\) `cooldown`"),
    ],
)
def test_invalid_sweep_values_name_the_option(
    tiny, wandb_offline, enter_sweep, section, error, match
) -> None:
    model, _ = tiny
    enter_sweep({"gradema": section})
    wandb_offline.init()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(error, match=match):
        wandb_gradema.watch(opt)


# ---------------------------------------------------------------------------- search hygiene
@pytest.mark.parametrize(
    ("first", "current", "penalty", "goal", "expected"),
    [
        (2.3, 0.4, None, "minimize", 2.3),  # looked good when pruned: no better than untrained
        (2.3, float("nan"), None, "minimize", 2.3),  # NaN at prune time
        (2.3, None, None, "minimize", 2.3),
        (2.3, 40.0, None, "minimize", 40.0),  # a worse value it logged itself is kept
        (None, 0.9, None, "minimize", 0.9),  # pruned before the first check: the value it has
        (None, float("inf"), 5.0, "minimize", 5.0),
        (2.3, 0.4, 5.0, "minimize", 5.0),  # an explicit penalty is the base
        (0.1, 0.8, None, "maximize", 0.1),  # accuracy: never better than at the start
        (0.1, 0.05, None, "maximize", 0.05),
        (None, None, None, "minimize", None),  # nothing to go on: the caller warns
        (None, "NaN", None, "maximize", None),
    ],
)
def test_pruned_metric_value_table(first, current, penalty, goal, expected) -> None:
    assert pruned_metric_value(first=first, current=current, penalty=penalty, goal=goal) == expected


def test_a_pruned_run_records_a_bounded_sweep_metric(tiny, wandb_offline, enter_sweep, sync_every: int) -> None:
    """val_loss looked great just before the prune; the run records its first value instead."""
    stop = decided_at(22, sync_every)
    model, batch = tiny
    enter_sweep({"gradema": {"sweep_metric": "val_loss"}})
    run = wandb_offline.init()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, log_every=5)
    values = {0: 2.5, 10: 0.3, 20: 0.01}  # logged after the step: 2.5 is seen at step 5

    def log(i: int, loss: float) -> None:
        run.log({"val_loss": values[i]} if i in values else {"train_loss": loss})

    with pytest.warns(GrademaWarning, match=f"Run pruned at step {stop}"), pytest.raises(RunPruned, match=f"step {stop}"):
        train_loop(model, opt, batch, 40, monitor=monitor, nan_at={22}, log=log)
    logged = wandb_offline.read(run, history=False)
    assert logged.state == "failed"
    assert logged.summary["val_loss"] == 2.5 and logged.summary["gradema/sweep_penalty"] == 2.5
    assert logged.summary["gradema/sweep_metric_at_prune"] == 0.01


def test_a_run_pruned_before_any_finite_metric_warns_or_takes_the_fixed_penalty(
    tiny, wandb_offline, sync_every: int
) -> None:
    stop = decided_at(1, sync_every)
    model, batch = tiny
    run = wandb_offline.init()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, on_escalation="prune", sweep_metric="val_acc", sweep_goal="maximize")
    with pytest.warns(GrademaWarning, match=f"Run pruned at step {stop}") as record, pytest.raises(
        RunPruned, match=f"step {stop}"
    ):
        train_loop(model, opt, batch, 10, monitor=monitor, nan_at={1})
    assert any("pruned before logging a finite `val_acc`" in str(w.message) for w in record)
    assert "val_acc" not in wandb_offline.read(run, history=False).summary

    model2 = torch.nn.Linear(8, 1)
    run = wandb_offline.init()
    opt = torch.optim.SGD(model2.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(
        opt, on_escalation="prune", sweep_metric="val_acc", sweep_goal="maximize", sweep_penalty=0.1
    )
    with pytest.warns(GrademaWarning, match="Run pruned at step"), pytest.raises(RunPruned, match="Run pruned"):
        train_loop(
            model2,
            opt,
            batch,
            10,
            monitor=monitor,
            nan_at={1},
            log=lambda i, v: run.log({"val_acc": float("nan")}),
        )
    assert wandb_offline.read(run, history=False).summary["val_acc"] == 0.1


# ---------------------------------------------------------------------------- the process
def test_cli_mode_a_pruned_script_exits_0_with_its_run_failed_and_finally_run(tmp_path, sync_every: int) -> None:
    """What ``wandb agent`` sees: the program's exit status. A prune must read as success."""
    stop = decided_at(5, sync_every)
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, wandb, wandb_gradema
            run = wandb.init(project="gradema-tests")
            model = torch.nn.Linear(4, 1)
            opt = torch.optim.SGD(model.parameters(), lr=run.config.lr)
            monitor = wandb_gradema.watch(opt, sync_every=SYNC_EVERY)
            try:
                for step in range(100):
                    opt.zero_grad()
                    model(torch.randn(8, 4)).pow(2).mean().backward()
                    if step == 5:
                        model.weight.grad.fill_(float("nan"))
                    opt.step()
                print("loop ended")
            finally:
                print("finally ran at step", step)
                monitor.remove()
            run.finish()
            """
        ).replace("SYNC_EVERY", str(sync_every))
    )
    params = tmp_path / "params.yaml"
    params.write_text("wandb_version: 1\n\nlr:\n  value: 0.01\n")
    env = {
        **os.environ,
        "WANDB_SWEEP_ID": "sweep123",
        "WANDB_SWEEP_PARAM_PATH": str(params),
        "WANDB_RUN_ID": "prunecli",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"finally ran at step {stop}" in done.stdout and "loop ended" not in done.stdout
    assert "Traceback" not in done.stderr
    (path,) = find_runs(tmp_path)
    logged = read_run(path, history=False)
    assert (logged.run_id, logged.state, logged.exit_code) == ("prunecli", "failed", 1)
    assert logged.summary["gradema/pruned_step"] == stop and PRUNED_TAG in logged.tags
