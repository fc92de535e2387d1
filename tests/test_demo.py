"""The README's first command: the demo trains, drifts, escalates and leaves an offline run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from wandb_gradema.offline import find_runs, read_run

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "python -m wandb_gradema demo --figure docs/demo-report.png"


def readme_caption_steps() -> tuple[list[int], int]:
    """The escalation steps and the prune-grade step the README's demo caption states."""
    text = README.read_text()
    found = re.search(r"escalates at steps ([\d,\sand]+?)\s+\(the\s+first\s+prune-grade\s+one:\s+(\d+)\)", text)
    assert found, "the README's demo caption lost its 'escalates at steps ... (the first prune-grade one: N)'"
    return [int(s) for s in re.findall(r"\d+", found.group(1))], int(found.group(2))


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
    run_dir = run_dir.resolve()
    for command in ("wandb leet", "wandb sync", "wandb-gradema report"):
        assert f"{command} {run_dir}\n" in out  # absolute paths, ready to paste
    assert "= chance level (ln 10 = 2.303 for 10 classes)" in out
    steps = [int(s) for s in re.findall(r"ESCALATED at step (\d+)", out)]
    prune_grade = int(re.search(r"would have stopped at step (\d+)", out).group(1))
    assert f"ESCALATED at step {prune_grade} (drift first seen at step" in out and prune_grade in steps
    # The README's figure caption names the same steps: regenerate it (the command in the
    # caption) when the detector changes them.
    caption_steps, caption_prune = readme_caption_steps()
    assert (steps, prune_grade) == (caption_steps, caption_prune), (
        f"The demo now escalates at {steps} (prune-grade at {prune_grade}); the README caption says "
        f"{caption_steps} ({caption_prune}). Rerun: {REGENERATE} and update the caption."
    )
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
    assert f"wandb-gradema report {run_dir.resolve()}\n" in done.stdout  # absolute here too
    run = read_run(run_dir, history=False)
    assert (run.state, run.exit_code) == ("failed", 1)
    assert run.summary["gradema/pruned"] is True
