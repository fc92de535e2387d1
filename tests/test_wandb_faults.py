"""W&B faults: whatever W&B does, training continues, with one warning, and nothing the monitor
already decided is lost (events, counters, ``state_dict()``).

The faults that need a process of their own run ``fault_train.py`` (``wandb`` not importable,
W&B's service killed, W&B's writes failing as on a full or read-only disk) and compare its
monitor with the same script run without the fault. ``run.log`` raising on every call is
injected into a real offline run in this process. (The run finished by the script while
training goes on: ``test_monitor.py::test_a_wandb_failure_never_stops_training``.)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from fault_harness import NAN_AT, run_script, uninterrupted, wandb_runs
from helpers import nan_safe

import wandb_gradema
from wandb_gradema import GrademaWarning

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the harness reads /proc")
EVENTS = [[15, ["nonfinite"], True], [27, ["nonfinite"], True], [50, ["nonfinite"], True]]


def _not_escalations(result: dict[str, Any]) -> list[str]:
    """The warnings that are not the decisions themselves (an escalation, a prune)."""
    return [w for w in result["warnings"] if "escalated at step" not in w and "Run pruned at step" not in w]


def _decided(state: dict[str, Any]) -> dict[str, Any]:
    """What the monitor decided and keeps, whether or not rows were logged: statistics, events,
    counters (the log window and the cadence depend on rows being written)."""
    return nan_safe({
        **{k: state[k] for k in ("step", "ticks", "tracker", "detector", "policy", "events", "internal_errors")},
        "counters": state["aggregator"]["counters"],
    })


@linux_only
@pytest.mark.parametrize("on_escalation", ["warn", "prune"])
def test_without_wandb_tracking_escalation_and_pruning_work_with_one_clear_warning(
    tmp_path: Path, on_escalation: str
) -> None:
    done = run_script(tmp_path, "--no-wandb", "--nan-loss-at", *NAN_AT, "--on-escalation", on_escalation)
    assert done.returncode == 0 and done.result is not None, done.stderr[-3000:]
    result = done.result
    assert result["wandb_imported"] is False and wandb_runs(tmp_path) == []
    (warning,) = _not_escalations(result)
    assert warning.startswith("wandb cannot be imported (is it installed?)") and "pip install wandb" in warning
    if on_escalation == "prune":
        assert result["ended"] == "pruned" and result["step"] == 16 and result["events"] == EVENTS[:1]
        assert any("Run pruned at step 15" in w for w in result["warnings"])
    else:
        full, _ = uninterrupted(1)
        assert full.result is not None
        assert result["ended"] == "finished" and result["events"] == EVENTS
        assert _decided(result["state"]) == _decided(full.result["state"])


@linux_only
def test_wandb_service_killed_mid_run_warns_once_and_loses_nothing_decided(tmp_path: Path) -> None:
    done = run_script(tmp_path, "--nan-loss-at", *NAN_AT, "--fault", "service-killed", "--fault-at", "20")
    assert done.returncode == 0 and done.result is not None, done.stderr[-3000:]
    assert "FAULT service-killed" in done.stdout
    result = done.result
    assert result["ended"].startswith("finish raised"), "the script's own run.finish() meets the dead service"
    (warning,) = _not_escalations(result)
    assert warning.startswith("W&B ") and "this warning is shown once" in warning
    full, _ = uninterrupted(1)
    assert full.result is not None
    assert result["events"] == EVENTS and result["step"] == 60
    assert nan_safe(result["state"]) == nan_safe(full.result["state"])


@linux_only
def test_wandb_writes_failing_mid_run_never_reach_training(tmp_path: Path) -> None:
    """A full (or read-only) disk under the W&B directory: from step 20 on every write of W&B's
    service fails (its file-size limit set to what it has written). W&B records the errors in its
    own log and tells the SDK nothing, so there is nothing to warn about; training, decisions and
    the run's end are as without the fault."""
    done = run_script(tmp_path, "--nan-loss-at", *NAN_AT, "--fault", "disk-full", "--fault-at", "20")
    assert done.returncode == 0 and done.result is not None, done.stderr[-3000:]
    assert "FAULT disk-full" in done.stdout
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert "file too large" in (run_dir / "logs" / "debug-internal.log").read_text(), "the fault took effect"
    result = done.result
    assert result["ended"] == "finished" and _not_escalations(result) == []
    full, _ = uninterrupted(1)
    assert full.result is not None
    assert result["events"] == EVENTS and nan_safe(result["state"]) == nan_safe(full.result["state"])


def _train_logged(tiny: Any, wandb_offline: Any, sync_every: int, *, broken_log: bool) -> tuple[Any, Any, list[str]]:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    if broken_log:
        def log(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("log is broken")

        run.log = log  # every call raises, the monitor's rows and anything else
    monitor = wandb_gradema.watch(opt, run=run, log_every=1, sync_every=sync_every, on_escalation="warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(30):
            x, y = batch(i)
            loss = torch.nn.functional.mse_loss(model(x), y)
            monitor.observe_loss(float("nan") if i == 10 else loss)  # escalates; weights stay finite
            loss.backward()
            opt.step()
            opt.zero_grad()
        monitor.remove()
    run.finish()
    messages = [str(w.message) for w in caught if issubclass(w.category, GrademaWarning)]
    return monitor, wandb_offline.read(run, history=False), messages


@pytest.mark.parametrize("sync_every", [1, 8], ids=["host", "deferred"])
def test_run_log_raising_on_every_call_warns_once_and_keeps_everything_else(
    tiny: Any, wandb_offline: Any, sync_every: int
) -> None:
    reference = [p.detach().clone() for p in tiny[0].parameters()]
    monitor, logged, messages = _train_logged(tiny, wandb_offline, sync_every, broken_log=True)
    failures = [m for m in messages if "escalated at step" not in m]
    assert failures == [
        "W&B log failed (RuntimeError: log is broken); training continues and gradema keeps tracking "
        "drift (events, counters, state_dict()); this warning is shown once for any W&B error."
    ]
    assert monitor.step == 30 and [e.step for e in monitor.events] == [10] and monitor.internal_errors == 0
    # The summary does not go through log(): the run's record of the escalation is whole.
    assert logged.summary["gradema/first_escalation_step"] == 10
    assert logged.summary["gradema/steps_observed"] == 30 and logged.summary["gradema/escalated"] is True

    with torch.no_grad():  # the same training again, W&B working: the monitor ends the same
        for p, p0 in zip(tiny[0].parameters(), reference):
            p.copy_(p0)
    clean, _, _ = _train_logged(tiny, wandb_offline, sync_every, broken_log=False)
    assert nan_safe(monitor.state_dict()) == nan_safe(clean.state_dict())
