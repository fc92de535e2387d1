"""The drift report tells a run's story from real offline runs: one run in detail, a sweep as a grid."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import wandb_gradema
from wandb_gradema.offline import find_runs, read_run
from wandb_gradema.report import load, render, run_figure, sweep_figure
from wandb_gradema.sweep.report import summary_table
from wandb_gradema.sweep.trial import Trial, would_prune

pytest.importorskip("matplotlib")


def _offline_run(wandb_offline, *, nan_at: int | None, prune: bool, lr: float, log_every: int = 2) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    run = wandb_offline.init(config={"lr": lr})
    monitor = wandb_gradema.watch(opt, model=model, log_every=log_every, on_escalation="prune" if prune else "warn")
    try:
        for i in range(40):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            monitor.observe_loss(loss)
            loss.backward()
            if i == nan_at:
                model[0].weight.grad.fill_(float("nan"))
            opt.step()
            opt.zero_grad()
    except wandb_gradema.RunPruned:
        pass
    finally:
        monitor.remove()
        run.finish()


def _texts(fig) -> list[str]:
    """Every text a reader sees: titles, axis labels, annotations, legend entries."""
    found = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        found += [ax.get_title(loc="left"), ax.get_title(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
        legend = ax.get_legend()
        if legend is not None:
            found += [t.get_text() for t in legend.get_texts()]
    for legend in fig.legends:
        found += [t.get_text() for t in legend.get_texts()]
    return [t for t in found if t]


def test_one_run_shows_lr_loss_norm_score_health_and_labelled_escalations(wandb_offline, tmp_path: Path) -> None:
    with pytest.warns(wandb_gradema.GrademaWarning, match="escalated at step 20"):
        _offline_run(wandb_offline, nan_at=20, prune=False, lr=0.01, log_every=1)
    run = read_run(find_runs(tmp_path / "wandb")[0])
    fig = run_figure(run)
    texts = _texts(fig)
    assert [ax.get_ylabel() for ax in fig.axes] == ["LR", "loss", "grad norm", "score", "health"]
    assert "20 nonfinite (prune-grade)" in texts  # the escalation, its rule, and that it could prune
    for key in ("prune-grade escalation", "per-layer telemetry window", "escalation (alert, telemetry)"):
        assert key in texts
    assert any("score 1: anomalous step" in t for t in texts)
    files = render(tmp_path / "wandb", tmp_path / "out")
    page = files[-1].read_text()
    assert "Non-finite gradient norm" in page and "prune-grade" in page and files[0].name in page


def test_sparse_rows_are_points_never_joined_across_a_gap(wandb_offline, tmp_path: Path) -> None:
    """Rows every 4 steps: no drawn line may join two rows more than one step apart."""
    _offline_run(wandb_offline, nan_at=None, prune=False, lr=0.01, log_every=4)
    fig = run_figure(read_run(find_runs(tmp_path / "wandb")[0]))
    points = 0
    for ax in fig.axes:
        for line in ax.get_lines():
            xs = list(line.get_xdata())
            if len(xs) < 2 or line.get_linestyle() in ("None", "none", ""):
                points += len(xs) if line.get_marker() not in (None, "None", "") else 0
                continue
            if xs[0] == xs[-1] and len(set(xs)) == 1:  # a vertical marker line
                continue
            gaps = [b - a for a, b in zip(xs, xs[1:])]
            assert max(gaps) <= 1, (ax.get_ylabel(), line.get_label(), gaps[:5])
    assert points >= 10


def test_bad_paths_get_one_line_and_exit_2(tmp_path: Path) -> None:
    for path in (tmp_path / "missing", tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "wandb_gradema", "report", str(path)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wandb-gradema report: "), done.stderr
        assert "Traceback" not in done.stderr


PROGRAM = textwrap.dedent(
    """
    import torch, wandb, wandb_gradema
    run = wandb.init()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=run.config.lr)
    monitor = wandb_gradema.watch(opt, model=model)  # inside a sweep: prunes
    for i in range(run.config.steps):
        x = torch.randn(16, 4)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        monitor.observe_loss(loss)
        loss.backward(); opt.step(); opt.zero_grad()
        if i % 5 == 4:
            run.log({"val_loss": loss.item()})
    run.finish()
    """
)


@pytest.mark.slow
def test_a_sweep_folder_shows_metric_parameters_pruned_runs_and_the_best(tmp_path: Path) -> None:
    """The folder the sweep runner prints (``wandb/sweep-<id>``) is drawn with what the sweep knows."""
    from wandb_gradema.sweep.runner import SweepOptions, SweepRunner

    program = tmp_path / "train.py"
    program.write_text(PROGRAM)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "program": str(program), "method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
        "parameters": {"lr": {"values": [0.02, 50.0]}, "steps": {"value": 40}},
    }))
    out = io.StringIO()
    old = {k: os.environ.pop(k, None) for k in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_ID")}
    try:
        runner = SweepRunner(config, SweepOptions(count=2, parallel=2, wandb_dir=tmp_path, seed=0), out=out)
        assert runner.run() == 0, out.getvalue()
    finally:
        os.environ.update({k: v for k, v in old.items() if v is not None})
    assert f"wandb-gradema report {runner.sweep_dir}" in out.getvalue()  # the runner names the folder

    runs, info = load(runner.sweep_dir)
    assert info is not None and info.metric == "val_loss" and info.params == ["lr"]
    by_lr = {r.config["lr"]: r for r in runs}
    best = info.best_run()
    assert best == by_lr[0.02].run_id
    texts = _texts(sweep_figure(runs, info))
    head = texts[0]
    assert "metric val_loss (minimize)" in head and "searched lr" in head and f"best run {best}" in head
    assert any(t.startswith(f"{by_lr[50.0].run_id} lr=50: PRUNED at") for t in texts)
    assert any(t.startswith(f"{best} lr=0.02: BEST") for t in texts)
    files = render(runner.sweep_dir, tmp_path / "out")
    assert files[0].name == "gradema-sweep.png" and len(files) == 4  # the grid, one per run, the page


def test_a_finished_run_says_what_would_have_been_pruned(wandb_offline, tmp_path: Path) -> None:
    """With pruning off (``sweep --no-prune``), the table's "why" names the prune-grade escalation."""
    with pytest.warns(wandb_gradema.GrademaWarning):
        _offline_run(wandb_offline, nan_at=12, prune=False, lr=0.01)
    escalated = read_run(find_runs(tmp_path / "wandb")[0], history=False)
    assert would_prune(escalated.summary).startswith("would prune at step 12: Non-finite")
    trial = Trial(1, escalated.run_id, {"steps": {"value": 40}}, outcome="finished", run=escalated,
                  note=would_prune(escalated.summary))
    table = summary_table([trial], ["steps"], None, "minimize", "steps")
    assert "would prune at step 12" in table  # the "why" column of a finished run
    assert "1 finished run(s) would have stopped at a prune-grade escalation (see 'why'): 27 steps saved" in table
    _offline_run(wandb_offline, nan_at=None, prune=False, lr=0.01)
    # Both runs may start within one second: their folders then sort by run id, not by start.
    (healthy,) = [d for d in find_runs(tmp_path / "wandb") if read_run(d, history=False).run_id != escalated.run_id]
    assert would_prune(read_run(healthy, history=False).summary) == ""
