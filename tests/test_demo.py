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
    assert 50 <= first < 200  # while the LR is still warming up ...
    losses = {r["gradema/step"]: r["gradema/loss"] for r in run.history if "gradema/loss" in r}
    dead = min(s for s in losses if s > first and all(v > 2.0 for t, v in losses.items() if t >= s))
    assert dead - first >= 10  # ... and well before the run dies at chance level (ln 10 = 2.3)
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
