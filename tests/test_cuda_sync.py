"""The accelerator path on a real GPU; every test here needs CUDA.

No host-device synchronisation on steps that are not decision steps: with ``sync_every=16``
(the default on GPU), 15 steps of every 16 only queue device tensors, whatever the logging
cadence (a fixed interval, or the adaptive default with a W&B run) and with clipping. ``torch.cuda.set_sync_debug_mode("error")`` is switched on exactly around the
monitor's work: by a step pre-hook registered before ``watch()`` (so it runs just before the
monitor's hook) and switched off by one registered after it (just after), plus around
``observe_loss`` and the monitor's own clipping. AdamW, forward and backward stay unchecked:
they are torch's business. The 16th step reads the queue back and decides: it may sync.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import wandb_gradema
from wandb_gradema.errors import GrademaWarning

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA device: host-device synchronisation only exists with an accelerator",
)

SYNC_EVERY = 16
NEVER = 10**6  # log_every: only step 0 logs


@contextlib.contextmanager
def _sync_errors() -> Iterator[None]:
    """Any host-device sync raises; monitor warnings (an internal error caught) raise too."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", GrademaWarning)
            yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@pytest.fixture(autouse=True)
def _reset_sync_mode() -> Iterator[None]:
    """A failing check leaves the mode on (the switching-off hook never ran): reset it."""
    yield
    torch.cuda.set_sync_debug_mode("default")


class _Armed:
    """Switches sync errors on around the monitor's step pre-hook while ``armed`` is True."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.armed = False
        self._stack: contextlib.ExitStack | None = None
        opt.register_step_pre_hook(self._on)

    def after(self, opt: torch.optim.Optimizer) -> None:
        """Register the switch-off hook: call right after ``watch()``."""
        opt.register_step_pre_hook(self._off)

    def close(self) -> None:
        """Disarm, and switch errors off even if the monitor's hook raised before ``_off``."""
        self.armed = False
        self._off()

    def _on(self, *_: Any) -> None:
        if self.armed:
            self._stack = contextlib.ExitStack()
            self._stack.enter_context(_sync_errors())

    def _off(self, *_: Any) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def _model(mixed: bool) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)).cuda()
    if mixed:  # two (device, dtype) groups: per-group norms are stacked on one device
        model[2].to(torch.bfloat16)
    return model


def _forward(model: nn.Sequential, step: int) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(step)
    x = torch.randn(64, 32, device="cuda", generator=gen)
    h = model[1](model[0](x))
    h = model[2](h.to(model[2].weight.dtype)).float()
    out = model[4](model[3](h))
    return nn.functional.mse_loss(out, x.sum(dim=1, keepdim=True) * 0.1)


@pytest.mark.parametrize(
    ("options", "mixed", "clip_in_loop", "with_run"),
    [
        ({"log_every": NEVER}, False, False, False),
        ({"log_every": NEVER, "max_norm": 1.0}, False, False, False),
        ({"log_every": NEVER}, True, False, False),
        ({"log_every": NEVER}, False, True, False),
        ({}, False, False, False),
        ({}, False, False, True),
        ({"log_every": 1}, False, False, True),
    ],
    ids=["no-rows", "max_norm", "fp32+bf16", "monitor.clip_grad_norm_", "defaults", "defaults+run", "every-step+run"],
)
def test_quiet_steps_do_not_sync(
    options: dict[str, Any], mixed: bool, clip_in_loop: bool, with_run: bool, tmp_path: Any
) -> None:
    if with_run:
        wandb = pytest.importorskip("wandb")
        run = wandb.init(mode="offline", dir=str(tmp_path), project="cuda-sync")
    model = _model(mixed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    probe = _Armed(opt)
    monitor = wandb_gradema.watch(opt, model=model, **options)  # sync_every: the GPU default
    assert monitor.sync_every == SYNC_EVERY
    probe.after(opt)

    def step(i: int, armed: bool) -> None:
        loss = _forward(model, i)
        loss.backward()
        with _sync_errors() if armed else contextlib.nullcontext():
            monitor.observe_loss(loss)
            if clip_in_loop:
                monitor.clip_grad_norm_(1.0)
        probe.armed = armed
        try:
            opt.step()
        finally:
            probe.close()
        opt.zero_grad()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GrademaWarning)  # "no W&B run", once, on step 0
        for i in range(SYNC_EVERY):  # CUDA context, cuBLAS, AdamW state, the first decision step
            step(i, armed=False)
    i = SYNC_EVERY
    for _ in range(2):
        for _ in range(SYNC_EVERY - 1):  # queued only: no read-back, no decision
            step(i, armed=True)
            i += 1
        step(i, armed=False)  # the queue is full: read back and decide (may sync)
        i += 1
        last = monitor.last
        assert last is not None and last[0].step == monitor.step - 1
    assert monitor.step == i
    monitor.remove()
    if with_run:
        run.finish()


def test_sync_debug_mode_catches_a_sync() -> None:
    """The check above is not vacuous: a read-back under the same switch raises."""
    t = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="synchroniz"), _sync_errors():
        t.sum().item()


def _train(model: nn.Module, opt: torch.optim.Optimizer, monitor: Any, steps: int, start: int = 0,
           nan_at: int | None = None) -> list[float]:
    """A plain loop; returns torch's own total norm before each update. ``nan_at``: a NaN loss
    is observed there (a critical escalation that leaves the weights finite)."""
    truth = []
    for i in range(start, start + steps):
        loss = _forward(model, i)
        monitor.observe_loss(float("nan") if i == nan_at else loss)
        loss.backward()
        truth.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        opt.step()
        opt.zero_grad()
    return truth


@pytest.mark.filterwarnings("ignore:No active W&B run")
def test_decisions_come_every_16_steps_and_norms_match_torch() -> None:
    model = _model(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    acted: list[tuple[int, int]] = []
    monitor = wandb_gradema.watch(opt, model=model, on_escalation=lambda e: acted.append((e.step, monitor.step)))
    truth = _train(model, opt, monitor, 20, nan_at=5)
    assert acted == [(5, 16)]  # found at step 5, acted on at the 16th step: the decision step
    assert monitor.last[0].grad_norm == pytest.approx(truth[-1], rel=1e-4)
    monitor.remove()


@pytest.mark.filterwarnings("ignore:No active W&B run")
def test_capturable_adam_tensor_lr_on_the_gpu_is_read() -> None:
    model = _model(False)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(2e-3, device="cuda"), capturable=True)
    monitor = wandb_gradema.watch(opt)
    _train(model, opt, monitor, 3)
    assert monitor.last[0].lr == pytest.approx(2e-3)
    monitor.remove()


@pytest.mark.filterwarnings("ignore:No active W&B run")
@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_fp16_autocast_gradscaler_true_scale_and_skipped_steps(fused: bool) -> None:
    model = _model(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**12)
    monitor = wandb_gradema.watch(opt, scaler=scaler, sync_every=1)
    for i in range(4):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = _forward(model, i)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        truth = torch.nn.utils.get_total_norm([p.grad / scale for p in model.parameters()]).item()
        if i == 2:
            model[0].weight.grad.fill_(float("inf"))  # an fp16 overflow: the step is skipped
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if i != 2:
            assert monitor.last[0].grad_norm == pytest.approx(truth, rel=1e-3)
    assert monitor.skipped_steps == 1 and not monitor.escalated
    monitor.remove()


@pytest.mark.filterwarnings("ignore:No active W&B run")
def test_parameters_on_the_gpu_and_the_cpu_in_one_optimizer() -> None:
    model = _model(False)
    extra = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))  # CPU, float64
    opt = torch.optim.SGD([*model.parameters(), extra], lr=1e-3)
    monitor = wandb_gradema.watch(opt)
    loss = _forward(model, 0) + extra.pow(2).sum().float().cuda()
    loss.backward()
    truth = torch.linalg.vector_norm(
        torch.stack([torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).cpu().double(),
                     extra.grad.norm()])
    ).item()
    opt.step()
    assert monitor.last[0].grad_norm == pytest.approx(truth, rel=1e-5)
    monitor.remove()
