"""The drift report renders real offline runs: one run in detail, several as a sweep grid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import wandb_gradema
from wandb_gradema.report import render

pytest.importorskip("matplotlib")


def _offline_run(wandb_offline, *, nan_at: int | None, prune: bool, lr: float) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    run = wandb_offline.init(config={"lr": lr})
    monitor = wandb_gradema.watch(opt, model=model, log_every=2, on_escalation="prune" if prune else "warn")
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


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_of_one_run_has_four_panels(wandb_offline, tmp_path: Path) -> None:
    with pytest.warns(wandb_gradema.GrademaWarning, match="escalated at step 20"):
        _offline_run(wandb_offline, nan_at=20, prune=False, lr=0.01)
    files = render(tmp_path / "wandb", tmp_path / "out")
    png = [f for f in files if f.suffix == ".png"]
    assert len(png) == 1
    width, height = _png_size(png[0])
    assert height > 3.5 * 2.3 * 110  # four stacked panels: norm, drift, health, loss
    page = files[-1].read_text()
    assert "Non-finite gradient norm" in page and png[0].name in page


def test_report_of_a_sweep_marks_the_pruned_runs(wandb_offline, tmp_path: Path) -> None:
    _offline_run(wandb_offline, nan_at=None, prune=True, lr=0.01)
    _offline_run(wandb_offline, nan_at=10, prune=True, lr=0.5)
    files = render(tmp_path / "wandb", tmp_path / "out")
    assert files[0].name == "gradema-sweep.png"
    _, height = _png_size(files[0])
    assert height >= 2 * 1.9 * 100  # one row per run
    page = files[-1].read_text()
    assert page.count("<tr>") == 3 and "failed" in page and "finished" in page
