"""The README's first command: the demo trains, drifts, escalates and leaves an offline run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from wandb_gradema.offline import find_runs, read_run


def test_demo_escalates_and_prints_where_the_offline_run_is(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wandb_gradema", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ESCALATED at step" in out
    (run_dir,) = find_runs(tmp_path / "wandb")
    assert f"wandb leet {run_dir}" in out and f"wandb sync {run_dir}" in out
    run = read_run(run_dir)
    assert run.state == "finished"
    first = run.summary["gradema/first_escalation_step"]
    assert 150 <= first <= 170  # the LR bug hits at step 150
    layer_rows = [r for r in run.history if "gradema/layers/0.weight" in r]
    assert layer_rows and layer_rows[0]["gradema/step"] == first
    assert run.alerts


def test_demo_with_prune_fails_the_run_and_exits_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "wandb_gradema", "demo", "--prune", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "PRUNED: Run pruned at step" in done.stdout
    (run_dir,) = find_runs(tmp_path / "wandb")
    run = read_run(run_dir, history=False)
    assert (run.state, run.exit_code) == ("failed", 1)
    assert run.summary["gradema/pruned"] is True
