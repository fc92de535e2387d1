"""Memory of a watched optimizer (issue 6): nothing kept per step, at most a scalar per tensor.

Two views of what the monitor keeps, taken after N and after 10N steps: tracemalloc's live
allocations made in wandb_gradema's files, and a walk of the objects reachable from the monitor
(sizes, container items, tensors that are not parameters, gradients or optimizer state; see
``benchmarks/overhead/memory.py``). Timing lives in the benchmark, not here.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import wandb_gradema
from benchmarks.overhead.memory import Footprint, footprint, package_bytes
from wandb_gradema.norms import STATS_FIELDS

#: Steps before the first snapshot: past the detector's longest window (the trend window of 32
#: losses and the 65 medians, two trend windows', kept after it fills), so what is kept has
#: reached its bound.
N = 120
#: Slack for allocator noise between two snapshots: a float kept per step would be 24 * 9N bytes.
GROWTH_SLACK_BYTES = 1024
#: Container items may differ by a few between two snapshots (e.g. a window being refilled).
ITEM_SLACK = 8


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: on a busy machine two threads make these tiny steps several times
    slower, which is not what is tested here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model() -> nn.Module:
    """Six linear layers: 12 parameter tensors, so per-tensor costs would show."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(6):
        layers += [nn.Linear(16, 16), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def _trainer(model: nn.Module, opt: torch.optim.Optimizer, monitor: Any) -> Callable[[int], None]:
    """Run steps on a learnable task with noise: the loss falls, then plateaus (no escalation)."""
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 16, generator=gen) / 4
    batches = []
    for _ in range(8):
        x = torch.randn(32, 16, generator=gen)
        batches.append((x, torch.tanh(x @ w) + 0.1 * torch.randn(32, 16, generator=gen)))
    count = 0

    def run(steps: int) -> None:
        nonlocal count
        for _ in range(steps):
            x, y = batches[count % len(batches)]
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            monitor.observe_loss(loss)
            opt.step()
            opt.zero_grad()
            count += 1

    return run


def _snapshot(monitor: Any) -> tuple[int, Footprint]:
    gc.collect()
    return package_bytes(tracemalloc.take_snapshot()), footprint(monitor)


@pytest.mark.filterwarnings("ignore:No active W&B run")
@pytest.mark.parametrize(
    ("options", "with_run"),
    [({}, True), ({"sync_every": 16}, False)],
    ids=["defaults-offline-run", "sync_every-16"],
)
def test_watch_memory_does_not_grow_with_steps(
    wandb_offline: Any, options: dict[str, Any], with_run: bool
) -> None:
    if with_run:
        wandb_offline.init()
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tracemalloc.start(1)  # the innermost frame: where in wandb_gradema each object was made
    try:
        monitor = wandb_gradema.watch(opt, model=model, **options)
        run = _trainer(model, opt, monitor)
        run(N)
        bytes_n, fp_n = _snapshot(monitor)
        run(9 * N)
        bytes_10n, fp_10n = _snapshot(monitor)
    finally:
        tracemalloc.stop()
    assert not monitor.events, "the task must stay healthy: an escalation changes what is kept"
    assert bytes_10n - bytes_n <= GROWTH_SLACK_BYTES, (bytes_n, bytes_10n)
    assert fp_10n.python_bytes - fp_n.python_bytes <= GROWTH_SLACK_BYTES, (fp_n, fp_10n)
    assert fp_10n.container_items - fp_n.container_items <= ITEM_SLACK, (fp_n, fp_10n)
    assert fp_10n.tensor_elements <= fp_n.tensor_elements, (fp_n, fp_10n)
    monitor.remove()


@pytest.mark.filterwarnings("ignore:No active W&B run")
def test_watch_keeps_no_per_step_tensors() -> None:
    """With ``sync_every=16`` device values queue up, but never more than 16 steps' worth (a stats
    row, a loss and one norm per parameter tensor, kept so an escalation on any queued step can log
    its per-layer norms), and nothing is kept once the queue is read back.
    """
    sync_every = 16
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    monitor = wandb_gradema.watch(opt, model=model, sync_every=sync_every, log_every=10**6)
    run = _trainer(model, opt, monitor)
    n_tensors = len(list(model.parameters()))
    queue_bound = sync_every * (len(STATS_FIELDS) + 1 + n_tensors)
    held = []
    for _ in range(3 * sync_every + 5):
        run(1)
        held.append(footprint(monitor).tensor_elements)
    assert max(held) <= queue_bound, held
    assert max(held) > 0, "sync_every=16 must queue device rows: the walk found no tensor"
    assert held[-sync_every:] == held[-2 * sync_every : -sync_every], "what is held must cycle with the queue"
    monitor.flush()
    assert footprint(monitor).tensor_elements == 0
    monitor.remove()
