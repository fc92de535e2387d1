"""The offline sweep runner end to end: real subprocesses, real offline W&B runs, W&B's engine.

The main test runs ``sweeps/train.py`` (an MLP on digits) over learning rates of which five
clearly diverge: each is pruned (W&B state *failed*, exit status 0, the reason recorded) and the
sweep carries on through all five in a row; the healthy ones finish. The runs it produced then
go to the engine's bayes search, whose suggestions leave the diverging LRs alone. The other
tests use a small stand-in program (no torch) for crashes, Ctrl-C and ``early_terminate``.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from wandb_gradema.offline import OfflineRun, read_run
from wandb_gradema.sweep.config import import_sweeps
from wandb_gradema.sweep.runner import SweepOptions, SweepRunner
from wandb_gradema.sweep.trial import Trial

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "sweeps" / "train.py"
DIVERGING = [8.0, 6.0, 5.0, 4.0, 3.0]
HEALTHY = [0.03, 0.1]
STEPS = 120
LR_BAYES = {
    "method": "bayes",
    "metric": {"name": "val_loss", "goal": "minimize"},
    "parameters": {"lr": {"distribution": "log_uniform_values", "min": 0.001, "max": 10.0}},
}


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def high_lr_share(runs: list[Any], n: int = 20) -> float:
    """Share of ``n`` bayes suggestions (seeds 0..n-1) with lr >= 0.5, given ``runs``."""
    sweeps = import_sweeps()
    high = 0
    for seed in range(n):
        np.random.seed(seed)
        random.seed(seed)
        high += sweeps.next_run(LR_BAYES, runs).config["lr"]["value"] >= 0.5
    return high / n


# ---------------------------------------------------------------------------- the real task
@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepRunner, str, int]:
    """One grid sweep over LR on sweeps/train.py, 2 runs at a time: 5 diverging LRs first."""
    root = tmp_path_factory.mktemp("lr_sweep")
    config = write_yaml(
        root / "lr_grid.yaml",
        {
            "program": str(TRAIN),
            "method": "grid",
            "metric": {"name": "val_loss", "goal": "minimize"},
            "parameters": {
                "lr": {"values": DIVERGING + HEALTHY},
                "steps": {"value": STEPS},
                "gradema": {"parameters": {"sweep_metric": {"value": "val_loss"}}},
            },
        },
    )
    out = io.StringIO()
    old = {k: os.environ.pop(k, None) for k in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_ID")}
    try:
        runner = SweepRunner(config, SweepOptions(count=10, parallel=2, wandb_dir=root, seed=0), out=out)
        status = runner.run()
    finally:
        os.environ.update({k: v for k, v in old.items() if v is not None})
    return runner, out.getvalue(), status


@pytest.mark.slow
def test_diverging_runs_are_pruned_failed_with_exit_0_and_healthy_ones_finish(lr_sweep) -> None:
    runner, output, status = lr_sweep
    assert status == 0
    by_lr = {t.params["lr"]["value"]: t for t in runner.trials}
    assert sorted(by_lr) == sorted(DIVERGING + HEALTHY)  # a grid of 7: all ran, then it ended
    for lr in DIVERGING:
        t = by_lr[lr]
        assert (t.outcome, t.exit_code, t.wandb_state) == ("pruned", 0, "failed"), (lr, t.note, t.log_path)
        assert t.run is not None and t.run.state == "failed" and t.run.exit_code == 1
        assert t.note and t.note == t.run.summary["gradema/prune_reason"]
        assert t.pruned_step is not None and t.steps is not None and t.steps < STEPS
        assert "gradema:pruned" in t.run.tags
        # search hygiene: a bounded sweep metric, never NaN or an exploded value
        assert 1.0 < t.run.summary["val_loss"] < 5.0
    for lr in HEALTHY:
        t = by_lr[lr]
        assert (t.outcome, t.exit_code, t.wandb_state, t.steps) == ("finished", 0, "finished", STEPS)
        assert t.best("val_loss", "minimize") < 0.5
    # they are ordinary offline runs: what `wandb sync` would upload
    assert all(t.run is not None and t.run.path.name.startswith("offline-run-") for t in runner.trials)


@pytest.mark.slow
def test_runner_carries_on_through_five_prunes_in_a_row(lr_sweep) -> None:
    """The grid starts the five diverging LRs first: each is pruned, and the sweep goes on to
    run the healthy ones (compared by start order and LR: with two runs at a time, a healthy
    run may end before the last diverging one under load)."""
    runner, _, _ = lr_sweep
    started = sorted(runner.trials, key=lambda t: t.number)
    assert [t.params["lr"]["value"] for t in started] == DIVERGING + HEALTHY
    assert [t.outcome for t in started] == ["pruned"] * len(DIVERGING) + ["finished"] * len(HEALTHY)


@pytest.mark.slow
def test_summary_table_and_results_file(lr_sweep) -> None:
    runner, output, _ = lr_sweep
    table = output[output.index("#  run") :]
    assert "state" in table and "pruned@" in table and "best val_loss" in table and "steps" in table
    rows = [line.split() for line in table.splitlines()[2:9]]
    assert [r[3] for r in rows].count("pruned") == 5 and [r[3] for r in rows].count("finished") == 2
    assert "7 runs: 5 pruned, 2 finished" in table
    assert "pruning saved" in table and "best finished run:" in table
    results = json.loads((runner.sweep_dir / "results.json").read_text())
    assert [r["outcome"] for r in results["runs"]].count("pruned") == 5
    saved = sum(r["budget"] - r["steps"] for r in results["runs"] if r["outcome"] == "pruned")
    assert f"pruning saved {saved:,} steps" in table
    # a progress line per start and per end
    assert output.count(" start ") == 7 and output.count(" pruned  ") >= 5
    # every run left its sibling record in the sweep's directory (the default store); with fewer
    # than 3 healthy siblings no run was judged against them: the same prunes as without
    from wandb_gradema.siblings import DirectoryStore

    records = {r.run_id: r for r in DirectoryStore(runner.sweep_dir / "siblings").load()}
    assert sorted(r.state for r in records.values()) == ["finished"] * 2 + ["pruned"] * 5
    assert all(r.config.get("lr") in DIVERGING + HEALTHY for r in records.values())
    assert "sweep-aware pruning:" in output and "stopped against healthy siblings               0 of 7" in output


@pytest.mark.slow
def test_bayes_moves_away_from_the_pruned_high_lr_region(lr_sweep) -> None:
    """W&B's bayes search, fed the sweep's real runs as the server would feed them."""
    runner, _, _ = lr_sweep
    before = high_lr_share([])
    after = high_lr_share([t.sweep_run() for t in runner.trials])
    assert before >= 0.2  # a third of the log-uniform range diverges
    assert after < before and after <= 0.1, (before, after)


def test_pruned_penalty_keeps_bayes_from_imputing_the_best_score() -> None:
    """Runs pruned before logging a finite metric: without a penalty bayes imputes 0.0."""
    sweeps = import_sweeps()
    from sweeps.bayes_search import ImputeStrategy, impute

    def pruned(summary: dict[str, Any]) -> Any:
        return sweeps.SweepRun(
            name="p", state="failed", config={"lr": {"value": 5.0}}, history=[], summary_metrics=summary
        )

    nan_only = [pruned({"val_loss": float("nan")}) for _ in range(3)]
    penalised = [pruned({"val_loss": 2.3}) for _ in range(3)]
    assert impute("minimize", "val_loss", ImputeStrategy.worst, runs=nan_only) == 0.0  # the trap
    assert impute("minimize", "val_loss", ImputeStrategy.worst, runs=penalised) == 2.3


# ---------------------------------------------------------------------------- a stand-in program
STANDIN = textwrap.dedent(
    """
    # A training program without torch: behaves as --mode and its config say.
    import sys, time, wandb
    mode = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--mode=")), "ok")
    run = wandb.init()
    if mode == "crash":
        raise ValueError("boom")
    level = run.config.get("level", 1.0)
    n, pause = (600, 0.05) if mode == "slow" else (int(run.config.get("n", 6)), run.config.get("pause", 0.0))
    if level > 1:
        n *= 4  # a bad run would also run longest
    for i in range(n):
        run.log({"loss": level, "step": i})
        time.sleep(pause)
    run.summary["gradema/steps_observed"] = n
    run.finish()
    """
)


@pytest.fixture
def standin(tmp_path: Path) -> Path:
    path = tmp_path / "standin.py"
    path.write_text(STANDIN)
    return path


def grid(tmp_path: Path, program: Path, **parameters: list[Any]) -> Path:
    return write_yaml(
        tmp_path / "sweep.yaml",
        {
            "program": str(program),
            "method": "grid",
            "metric": {"name": "loss", "goal": "minimize"},
            "parameters": {name: {"values": values} for name, values in parameters.items()},
        },
    )


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cli_goes_on_after_a_crash_and_ctrl_c_keeps_the_ended_runs(tmp_path, standin) -> None:
    """``python -m wandb_gradema sweep``: run 1 crashes (recorded, the sweep goes on), run 2
    finishes, Ctrl-C during run 3 stops it; run 4 never starts; the table is printed."""
    config = grid(tmp_path, standin, mode=["crash", "ok", "slow", "ok"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wandb_gradema", "sweep", str(config), "--count", "4", "--dir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # wait for run 3 (slow) to start
        line = proc.stdout.readline()
        lines.append(line)
        if not line or ("[3/4]" in line and " start " in line):
            break
    time.sleep(2)  # let it get going
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out + err[-3000:]
    assert "crashed" in out and "exit 1: ValueError: boom" in out
    assert "Ctrl-C: stopping 1 running run(s)" in out
    assert "3 runs: " in out and "wandb sync" in out  # the table, for the runs there are
    (results,) = tmp_path.glob("wandb/sweep-*/results.json")
    runs = json.loads(results.read_text())["runs"]
    assert [(r["outcome"], r["exit_code"]) for r in runs][:2] == [("crashed", 1), ("finished", 0)]
    assert runs[2]["outcome"] == "killed" and runs[2]["note"] == "interrupted" and len(runs) == 3
    assert read_run(runs[1]["path"], history=False).state == "finished"  # intact


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            {"program": "train.py", "method": "bayes", "parameters": {"lr": {"min": "tiny", "max": 1.0}}},
            r"Invalid sweep config .*\n  - .*\n  - invalid hyperparameter configuration: lr",
        ),
        (
            {"program": "train.py", "method": "bayes", "parameters": {"lr": {"min": 0.1, "max": 1.0}}},
            r"`metric` is missing: bayes search and early_terminate need metric.name",
        ),
        ("method: [grid\n", r"is not valid YAML"),
        ({"method": "grid", "parameters": {"lr": {"values": [1]}}}, r"`program` is missing"),
        (
            {"program": "missing.py", "method": "grid", "parameters": {"lr": {"values": [1]}}},
            r"`program: missing.py` from .* is in none of the current directory, the YAML.s folder and the folder above it",
        ),
    ],
)
def test_bad_configs_get_the_engines_violations_as_a_clear_error(
    tmp_path, monkeypatch, capsys, config, match
) -> None:
    from wandb_gradema.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    if isinstance(config, str):
        path.write_text(config)
    else:
        write_yaml(path, config)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wandb-gradema sweep: ")
    assert re.search(match, err, flags=re.S), err


def test_no_siblings_leaves_the_runs_to_judge_alone(tmp_path, standin) -> None:
    config = write_yaml(tmp_path / "s.yaml", {"program": str(standin), "method": "random", "parameters": {"x": {"values": [1]}}})
    on = SweepRunner(config, SweepOptions(count=1, wandb_dir=tmp_path), out=io.StringIO())
    off = SweepRunner(config, SweepOptions(count=1, wandb_dir=tmp_path, siblings=False), out=io.StringIO())
    trial = Trial(number=1, run_id="r1", params={})
    assert on._run_env(trial, tmp_path / "p.yaml")["GRADEMA_SIBLINGS_DIR"] == str(on.sweep_dir / "siblings")
    assert "GRADEMA_SIBLINGS_DIR" not in off._run_env(trial, tmp_path / "p.yaml")


def test_count_and_parallel_are_checked(tmp_path, standin) -> None:
    config = grid(tmp_path, standin, mode=["ok"])
    with pytest.raises(ValueError, match=r"`parallel` must be an int >= 1, got 0"):
        SweepRunner(config, SweepOptions(count=1, parallel=0))
    with pytest.raises(ValueError, match=r"`count` must be an int >= 1, got 0"):
        SweepRunner(config, SweepOptions(count=0))


def test_early_terminate_hyperband_stops_a_bad_running_run(tmp_path, standin, monkeypatch) -> None:
    """The runner feeds the running runs' live logs to ``sweeps.stop_runs`` and stops the ones
    it names as the agent does (SIGTERM); they end *killed*. Logs are stand-ins here."""
    config = write_yaml(
        tmp_path / "hb.yaml",
        {
            "program": str(standin),
            "method": "grid",
            "metric": {"name": "loss", "goal": "minimize"},
            "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
            "parameters": {"level": {"values": [1.0, 1.1, 5.0]}},
        },
    )
    runner = SweepRunner(config, SweepOptions(count=3, stop_interval=0.0), out=io.StringIO())

    def logged(level: float, state: str) -> OfflineRun:
        history = [{"loss": level, "_step": i} for i in range(3)]
        return OfflineRun(Path("."), "x", state, None, {"loss": level}, [], {}, history=history)

    for number, level in enumerate([1.0, 1.1, 5.0], start=1):
        trial = Trial(number=number, run_id=f"run{number}", params={"level": {"value": level}})
        trial.launch(
            [sys.executable, "-c", "import time; time.sleep(60)"], os.environ, tmp_path / f"{number}.log"
        )
        runner.trials.append(trial)
    monkeypatch.setattr(
        Trial, "read", lambda self, wandb_dir: logged(self.params["level"]["value"], "running")
    )
    runner._early_terminate()
    good, good2, bad = runner.trials
    assert bad.process is not None and bad.process.wait(timeout=30) == -signal.SIGTERM
    assert good.poll() is None and good2.poll() is None
    for t in runner.trials:
        t.kill()
        t.process.wait()
    bad.finish(tmp_path)
    assert (bad.outcome, bad.wandb_state, bad.note) == ("killed", "killed", "stopped by early_terminate")
    assert "early_terminate: stopping run3" in runner.out.getvalue()
