"""Killed and resumed: a training script SIGKILLed mid-run and restarted from its checkpoint.

Real processes (``fault_train.py``): a checkpoint (model, optimizer with the monitor's state
inside) every 10 steps, W&B offline with a fixed run id and ``resume="allow"``. Offline, each
process writes its own run file, as ``wandb sync`` would upload them, in order. Escalations are
NaN losses (critical under any detector). Both decision paths: on the deferred one
(``sync_every=8``) the escalation at step 27 (of ``NAN_AT``) is still undecided when step 30's checkpoint is
written, so it must travel in the checkpoint and be decided after the restart.

What W&B itself loses at a kill is W&B's: its offline transaction log is written in 32 KiB
blocks, so a killed process's last rows may be missing from its file (the test allows a gap
there, never a repeat or a step going back).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from fault_harness import (
    NAN_AT,
    gradema_rows,
    run_script,
    run_until_killed,
    uninterrupted,
    wandb_runs,
)
from helpers import nan_safe

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the harness reads /proc")

STEPS = 60
CKPT = 30  # the checkpoint the killed process left (written after step 29)
PATHS = pytest.mark.parametrize("sync_every", [1, pytest.param(8, marks=pytest.mark.slow)], ids=["host", "deferred"])
#: Summary keys W&B aggregates over the history of one process (define_metric summary="max"/"min").
AGGREGATED = {"grad_norm_max", "health_drift_max", "norm_drift_max", "score_max", "health_min"}


def _summary(run: Any) -> dict[str, Any]:
    return {k: v for k, v in run.summary.items() if k.startswith("gradema/") and k[8:] not in AGGREGATED}


@PATHS
def test_a_killed_run_resumes_its_step_axis_statistics_events_and_summary(tmp_path: Path, sync_every: int) -> None:
    args = ("--sync-every", str(sync_every), "--nan-loss-at", *NAN_AT, "--user-log")
    killed = run_until_killed(tmp_path, *args, "--block-at", "37")
    assert killed.returncode == -9 and killed.result is None
    resumed = run_script(tmp_path, *args)
    assert resumed.returncode == 0 and resumed.result is not None, resumed.stderr[-3000:]
    assert resumed.result["start"] == CKPT
    full, full_run = uninterrupted(sync_every)
    assert full.result is not None

    # Statistics come back: the resumed monitor ends exactly where the uninterrupted one does
    # (detector, tracker, policy, counters, events), so nothing after the resume is a cold start.
    assert nan_safe(resumed.result["state"]) == nan_safe(full.result["state"])
    assert resumed.result["events"] == full.result["events"] == [
        [15, ["nonfinite"], True], [27, ["nonfinite"], True], [50, ["nonfinite"], True]
    ]
    # After the restart only what was not decided before the checkpoint is acted on (27 on the
    # deferred path), then step 50: nothing false, nothing twice.
    acted = [w.split("escalated at step ")[1].split(":")[0] for w in resumed.result["warnings"] if "escalated" in w]
    assert acted == (["27", "50"] if sync_every == 8 else ["50"])

    before, after = wandb_runs(tmp_path)
    assert (before.run_id, after.run_id) == ("faultrun1", "faultrun1")
    assert before.state != "finished" and after.state == "finished"
    rows_before, rows_after, rows_full = gradema_rows(before), gradema_rows(after), gradema_rows(full_run)
    # The step axis continues where the checkpoint left it, on both paths (on the deferred one,
    # saving the checkpoint read steps 24-29 back and wrote their rows: their escalation waits in
    # the checkpoint, their rows do not). No step repeats or goes back, and every row is the
    # uninterrupted run's row for that step.
    resumes_at = CKPT
    assert list(rows_after) == list(range(resumes_at, STEPS))
    kept = [s for s in rows_before if s < resumes_at]
    assert kept == list(range(len(kept))) and len(kept) >= 10, "W&B loses at most its last block"
    for step in kept + list(rows_after):
        row = rows_before[step] if step < resumes_at else rows_after[step]
        assert nan_safe(row) == nan_safe(rows_full[step]), step
    # The summary at the end is the uninterrupted run's, escalation history included.
    assert nan_safe(_summary(after)) == nan_safe(_summary(full_run))
    assert after.summary["gradema/first_escalation_step"] == 15
    assert after.summary["gradema/escalations"] == 3 and after.summary["gradema/steps_observed"] == STEPS


@PATHS
def test_a_kill_inside_a_prune_never_leaves_a_finished_run_and_the_restart_prunes_again(
    tmp_path: Path, sync_every: int
) -> None:
    """SIGKILL after the prune wrote its summary, before it finished the run (``--kill-in-prune``)."""
    args = ("--sync-every", str(sync_every), "--nan-loss-at", "33", "--on-escalation", "prune")
    # Decided at once on the host path; at the decision step 39 (the 40th) on the deferred one.
    prune_step = 33 if sync_every == 1 else 39
    killed = run_script(tmp_path, *args, "--kill-in-prune")
    assert killed.returncode == -9 and killed.result is None
    assert f"Run pruned at step {prune_step}" in killed.stderr  # the prune got as far as its warning
    restarted = run_script(tmp_path, *args)
    assert restarted.returncode == 0 and restarted.result is not None, restarted.stderr[-3000:]
    assert restarted.result["start"] == CKPT and restarted.result["ended"] == "pruned"
    assert restarted.result["events"] == [[33, ["nonfinite"], True]]

    first, second = wandb_runs(tmp_path)
    assert first.state != "finished", "a run killed inside its prune must never read as a success"
    assert (second.state, second.exit_code) == ("failed", 1)
    assert second.summary["gradema/pruned"] is True and second.summary["gradema/pruned_step"] == prune_step
    assert "gradema:pruned" in second.tags
    assert list(gradema_rows(second)) == list(range(CKPT, prune_step + 1))
