"""No host-device synchronisation on steps that neither log nor decide (issue 6); needs CUDA.

With ``sync_every=16`` and logging pushed out of reach, 15 steps of every 16 only queue device
tensors. ``torch.cuda.set_sync_debug_mode("error")`` is switched on exactly around the
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
    ("options", "mixed", "clip_in_loop"),
    [({}, False, False), ({"max_norm": 1.0}, False, False), ({}, True, False), ({}, False, True)],
    ids=["defaults", "max_norm", "fp32+bf16", "monitor.clip_grad_norm_"],
)
def test_quiet_steps_do_not_sync(options: dict[str, Any], mixed: bool, clip_in_loop: bool) -> None:
    model = _model(mixed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    probe = _Armed(opt)
    monitor = wandb_gradema.watch(opt, model=model, sync_every=SYNC_EVERY, log_every=NEVER, **options)
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
        for i in range(3):  # CUDA context, cuBLAS, AdamW state, step 0 (a logging step)
            step(i, armed=False)
    monitor.flush()  # a decision point: the queue is empty now
    i = 3
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


def test_sync_debug_mode_catches_a_sync() -> None:
    """The check above is not vacuous: a read-back under the same switch raises."""
    t = torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="synchroniz"), _sync_errors():
        t.sum().item()
