"""Hugging Face Accelerate's own loop: ``watch(opt)`` on the prepared optimizer, one line.

Accelerate's CPU path: ``Accelerator(cpu=True)`` with gradient accumulation (one observation per
real update), bf16 mixed precision, and the fp16 path's GradScaler (``AcceleratedOptimizer``
with a scaler, which Accelerate builds on GPUs; a CPU scaler here).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from helpers import decided_at

import wandb_gradema
from wandb_gradema import GrademaWarning

accelerate = pytest.importorskip("accelerate")
from accelerate import Accelerator  # noqa: E402
from accelerate.optimizer import AcceleratedOptimizer  # noqa: E402
from accelerate.state import AcceleratorState, GradientState, PartialState  # noqa: E402

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths


@pytest.fixture(autouse=True)
def _fresh_accelerate() -> Iterator[None]:
    """Accelerate keeps process-wide singletons: each test starts and ends without them."""
    warnings.filterwarnings("ignore", message="No active W&B run", category=GrademaWarning)
    for state in (AcceleratorState, GradientState):
        state._reset_state()
    PartialState._reset_state()
    yield
    for state in (AcceleratorState, GradientState):
        state._reset_state()
    PartialState._reset_state()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(4, 8, generator=g)
    return x, x.sum(1, keepdim=True) * 0.3


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_watch_on_the_prepared_optimizer_observes_each_real_update(wandb_offline, precision: str) -> None:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=4, mixed_precision=precision)
    model = _model()
    model, opt = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    assert isinstance(opt, AcceleratedOptimizer)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, model=model, log_every=1)  # the one line
    losses: list[float] = []
    tracked: list[tuple[float, float]] = []
    for i in range(12):
        with accelerator.accumulate(model):
            x, y = _batch(i)
            loss = torch.nn.functional.mse_loss(model(x), y)
            monitor.observe_loss(loss)
            losses.append(loss.item())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                truth = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
            opt.step()
            opt.zero_grad()
            if accelerator.sync_gradients:
                tracked.append((monitor.last[0].grad_norm, truth))
                assert monitor.last[0].loss == pytest.approx(sum(losses[-4:]) / 4, rel=1e-5)
    monitor.remove()
    run.finish()
    assert monitor.step == 3  # 12 micro-batches, 4 per update
    for mine, truth in tracked:
        assert mine == pytest.approx(truth, rel=1e-5)
    rows = [r for r in wandb_offline.read(run).history if "gradema/step" in r]
    assert [r["gradema/step"] for r in rows] == [0, 1, 2]


def test_the_accelerated_optimizer_s_gradscaler_is_picked_up(tiny) -> None:
    """Accelerate's fp16 path steps through its GradScaler; skipped steps are counted, and
    ``monitor.clip_grad_norm_`` unscales through it before clipping (the pre-clip norm)."""
    model, batch = tiny
    Accelerator(cpu=True)  # the state an AcceleratedOptimizer reads
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = AcceleratedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01), device_placement=False, scaler=scaler)
    monitor = wandb_gradema.watch(opt, max_skipped_steps=3, on_escalation="warn")
    x, y = batch(0)
    for i in range(4):
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        truth = torch.nn.utils.get_total_norm([p.grad / scaler.get_scale() for p in model.parameters()]).item()
        if i == 1:
            next(model.parameters()).grad.fill_(float("inf"))  # an fp16 overflow: the scaler skips
        else:
            assert monitor.clip_grad_norm_(1e-3).item() == pytest.approx(truth, rel=1e-5)
        opt.step()  # AcceleratedOptimizer: scaler.step(optimizer) + scaler.update()
        opt.zero_grad()
        if i != 1:
            assert monitor.last[0].grad_norm == pytest.approx(truth, rel=1e-5)
    assert (monitor.step, monitor.skipped_steps) == (3, 1)
    monitor.remove()
    assert "step" not in vars(scaler)


def test_a_prune_ends_the_accelerate_loop_and_fails_the_run(wandb_offline, sync_every: int) -> None:
    stop = decided_at(2, sync_every)  # found at step 2, pruned by the step() that decides
    accelerator = Accelerator(cpu=True)
    model = _model()
    model, opt = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.01))
    run = wandb_offline.init()
    wandb_gradema.watch(opt, on_escalation="prune")  # not kept: the optimizer keeps it alive
    with pytest.raises(wandb_gradema.RunPruned) as pruned, pytest.warns(GrademaWarning, match=f"Run pruned at step {stop}"):
        for i in range(12):
            x, y = _batch(i)
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            if i == 2:
                next(model.parameters()).grad.fill_(float("nan"))
            opt.step()
            opt.zero_grad()
    assert pruned.value.step == stop
    logged = wandb_offline.read(run)
    assert (logged.state, logged.summary["gradema/pruned_step"]) == ("failed", stop)
