"""Shared fixtures: a tiny deterministic model and real W&B runs in offline mode."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import wandb_gradema
from wandb_gradema.offline import OfflineRun, find_runs, read_run

#: Steps between decision steps on the deferred path (tests run it on CPU).
DEFERRED = 8


@pytest.fixture(params=[1, DEFERRED], ids=["host", "deferred"])
def sync_every(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Runs the test on both decision paths: the default ``sync_every`` of every monitor it
    builds is 1 (CPU's host path: every step decided at once) or ``DEFERRED`` (the path
    accelerators take: values queued as tensors, read back and decided every 8 steps)."""
    monkeypatch.setitem(wandb_gradema.intake.DEFAULT_SYNC_EVERY, "cpu", request.param)
    return int(request.param)


@pytest.fixture(autouse=True)
def _wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs W&B offline in its own directory, with no sweep around it."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for var in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)


class OfflineRuns:
    """Start real offline runs in the test's directory and read them back with the W&B CLI."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def init(self, **kwargs: Any) -> Any:
        import wandb

        kwargs.setdefault("project", "gradema-tests")
        kwargs.setdefault("dir", str(self.root))
        return wandb.init(mode="offline", **kwargs)

    def read(self, run: Any = None, *, history: bool = True) -> OfflineRun:
        """Read ``run`` (finished by then), or the only run in the directory."""
        if run is not None:
            return read_run(Path(run.dir).parent, history=history)
        paths = find_runs(self.root)
        assert len(paths) == 1, f"expected one offline run, found {paths}"
        return read_run(paths[0], history=history)


@pytest.fixture
def wandb_offline(tmp_path: Path) -> Iterator[OfflineRuns]:
    runs = OfflineRuns(tmp_path)
    yield runs
    import wandb

    if wandb.run is not None:
        wandb.finish()


@pytest.fixture
def tiny() -> tuple[torch.nn.Module, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    """A small MLP and a deterministic batch maker (seeded per batch index)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + i)
        x = torch.randn(16, 8, generator=g)
        return x, x.sum(dim=1, keepdim=True) * 0.3

    return model, batch


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
