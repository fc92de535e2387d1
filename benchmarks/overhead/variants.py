"""What each timed training step does, and the phases the variants are timed in.

Every variant is a whole AdamW training step (forward, backward, the variant's work,
``optimizer.step()``, ``zero_grad()``) on its own copy of the model (same initial weights), so
hooks never see another variant's gradients. Variants are grouped in phases, each with an
offline W&B run of its own, finished before the next phase. The core phase holds the torch
references and the monitor, at its defaults and as the hot path (``log_every`` out of reach:
after step 0 it only measures, tracks and judges), so they are compared under the same
conditions; the escalated monitor and ``wandb.watch`` log far more, so each gets a phase of its
own and W&B's background process never works for them while another variant is timed. Every
phase times its variants against the same bare trainer.
"""

from __future__ import annotations

import copy
import cProfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import wandb_gradema

from .clock import TRAINER_CLOCK
from .models import Batch, ModelSpec

try:  # what get_total_norm and clip_grad_norm_ group by; private, so kept in this one place
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype
except ImportError:  # pragma: no cover - torch builds without it
    _group_tensors_by_device_and_dtype = None  # type: ignore[assignment]

__all__ = ["CLOCK", "PHASES", "VARIANTS", "Phase", "Trainer", "Variant", "foreach_floor", "open_run"]

#: The learning rate of every variant's AdamW (torch defaults otherwise).
LR = 1e-3
#: A max_norm no gradient reaches: clip_grad_norm_ does all its work but scales by 1.0.
HUGE_NORM = 1e30
#: log_every that never comes round again after step 0: the hot path without logging.
NEVER = 10**9


class _Clock:
    """The clock every timing reads (ns): wall time by default; ``use_cpu_time()`` switches to
    this thread's CPU time (``--clock cpu``): on a shared machine, time other processes take
    from this one no longer counts (W&B's service process, on another core, does not either)."""

    now_ns = staticmethod(time.perf_counter_ns)

    def use_cpu_time(self) -> None:
        self.now_ns = time.thread_time_ns


CLOCK = _Clock()
#: Warm-up steps a monitor needs to reach its steady logging cadence (the adaptive cadence sets
#: its first interval after 10 steps).
MONITOR_WARMUP = 12


class Trainer:
    """One copy of the model and its AdamW optimizer, running whole training steps.

    ``before_step(loss)`` runs between ``backward()`` and ``optimizer.step()``. ``direct_ns``
    accumulates the variant's own in-step time: ``before_step`` plus whatever step pre-hooks
    were installed through ``bracket`` (the monitor's hook), timed inside real steps, so caches
    and allocator state are those of training.
    """

    def __init__(self, base: nn.Module, spec: ModelSpec, batches: list[Batch]) -> None:
        self.model = copy.deepcopy(base)  # on the base model's device, like the batches
        self.spec = spec
        self.batches = batches
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=LR)
        self.before_step: Callable[[Tensor], Any] = _nothing
        self.monitor: wandb_gradema.GradientMonitor | None = None
        self.direct_ns = 0
        self.steps = 0
        self.rows = 0  # rows the monitor sent to W&B
        self.kept: Any = None  # the variant's result lives until the next step, as in training
        self.profiler: cProfile.Profile | None = None  # on only during the variant's own work
        self._closers: list[Callable[[], Any]] = []
        self._t0 = 0

    def step(self) -> None:
        """One whole training step (on the monitor's clock, see ``clock.py``)."""
        TRAINER_CLOCK.enter(self)
        x, y = self.batches[self.steps % len(self.batches)]
        loss = self.spec.loss(self.model, x, y)
        loss.backward()
        self._start()
        self.kept = self.before_step(loss)
        self._stop()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps += 1
        TRAINER_CLOCK.leave(self)

    def timed(self, n: int) -> tuple[int, int]:
        """Run ``n`` steps; return their wall time and the variant's in-step time (ns).

        On an accelerator the device is synchronised before and after, so the wall time holds
        the queued GPU work and every sync the variant caused.
        """
        cuda = self.params[0].is_cuda
        if cuda:
            torch.cuda.synchronize()
        direct = self.direct_ns
        t0 = CLOCK.now_ns()
        for _ in range(n):
            self.step()
        if cuda:
            torch.cuda.synchronize()
        return CLOCK.now_ns() - t0, self.direct_ns - direct

    def bracket(self, install: Callable[[], Any]) -> Any:
        """Call ``install`` between two probe step pre-hooks, so ``direct_ns`` covers its hooks.

        Pre-hooks run in registration order: start probe, the installed hooks, stop probe.
        """
        start = self.optimizer.register_step_pre_hook(self._start)
        out = install()
        stop = self.optimizer.register_step_pre_hook(self._stop)
        self._closers += [stop.remove, start.remove]
        return out

    def on_close(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` when the trainer is closed (hooks off, runs flushed)."""
        self._closers.append(fn)

    def close(self) -> None:
        """Take every hook off, last installed first."""
        while self._closers:
            self._closers.pop()()

    def _start(self, *_: Any) -> None:
        if self.profiler is not None:
            self.profiler.enable()
        self._t0 = CLOCK.now_ns()

    def _stop(self, *_: Any) -> None:
        self.direct_ns += CLOCK.now_ns() - self._t0
        if self.profiler is not None:
            self.profiler.disable()


def _nothing(loss: Tensor) -> None:
    return None


@torch.no_grad()
def foreach_floor(params: Sequence[Tensor]) -> list[Tensor]:
    """The floor: one ``torch._foreach_norm`` per (device, dtype) group, kept as tensors.

    Reading every gradient once is the least any total-norm measurement can do.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if _group_tensors_by_device_and_dtype is None:
        return list(torch._foreach_norm(grads, 2.0))
    grouped = _group_tensors_by_device_and_dtype([grads])  # type: ignore[list-item]
    norms: list[Tensor] = []
    for [group], _ in grouped.values():
        norms.extend(torch._foreach_norm(group, 2.0))  # type: ignore[arg-type]
    return norms


# ---------------------------------------------------------------------------- installers
def _install_floor(t: Trainer, run: Any) -> None:
    t.before_step = lambda loss: foreach_floor(t.params)


def _install_clip(t: Trainer, run: Any) -> None:
    t.before_step = lambda loss: torch.nn.utils.clip_grad_norm_(t.params, HUGE_NORM)


def _install_total_norm(t: Trainer, run: Any) -> None:
    t.before_step = lambda loss: torch.nn.utils.get_total_norm(
        [p.grad for p in t.params if p.grad is not None]
    )


def _install_monitor(**options: Any) -> Callable[[Trainer, Any], None]:
    """``watch(optimizer, model=model, **options)``, fed the loss before every step."""

    def install(t: Trainer, run: Any) -> None:
        monitor = t.bracket(lambda: wandb_gradema.watch(t.optimizer, model=t.model, **options))
        t.monitor = monitor
        _count_rows(t, monitor)
        t.before_step = monitor.observe_loss
        t.on_close(monitor.remove)

    return install


def _count_rows(t: Trainer, monitor: wandb_gradema.GradientMonitor) -> None:
    """Count the rows the monitor logs (its sink's ``log_rows``, wrapped on this instance only)."""
    log_rows = monitor.sink.log_rows

    def counted(rows: Any) -> bool:
        t.rows += len(rows)
        return log_rows(rows)

    monitor.sink.log_rows = counted  # type: ignore[method-assign]


def _escalate_now(t: Trainer) -> None:
    """Open the telemetry window from the next step on, as an escalation would (no event)."""
    assert t.monitor is not None
    t.monitor.policy.adopt(t.monitor.step)


def _install_wandb_watch(log_freq: int) -> Callable[[Trainer, Any], None]:
    """``run.watch(model, log="gradients", log_freq=...)``: W&B's own gradient histograms."""

    def install(t: Trainer, run: Any) -> None:
        run.watch(t.model, log="gradients", log_freq=log_freq)
        t.on_close(lambda: run.unwatch(t.model))

    return install


@dataclass(frozen=True)
class Variant:
    """One way of running the training step.

    Attributes:
        key: short name used in the code and targets.
        label: the table's row label.
        phase: the phase it is timed in (see ``PHASES``).
        install: sets the variant up on a fresh trainer, given the phase's run (or None).
        after_warmup: called once warm-up is over (e.g. to force the telemetry window).
        in_step: True when the in-step timing covers all of the variant's work in this
            process (False for ``wandb.watch``, whose hooks run inside ``backward()``).
        min_warmup: warm-up steps it needs at least (see ``MONITOR_WARMUP``).
    """

    key: str
    label: str
    phase: str
    install: Callable[[Trainer, Any], None]
    after_warmup: Callable[[Trainer], None] | None = None
    in_step: bool = True
    min_warmup: int = 0


@dataclass(frozen=True)
class Phase:
    """A group of variants timed together against the bare step.

    Attributes:
        key: name, also the offline run's name.
        needs_run: whether a W&B offline run is open while it is timed.
        share: its share of the model's time budget.
        variants: keys of its variants.
    """

    key: str
    needs_run: bool
    share: float
    variants: tuple[str, ...] = field(default_factory=tuple)


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("bare", "bare step", "", lambda t, run: None),
        Variant("floor", "floor: _foreach_norm", "core", _install_floor),
        Variant("clip", "clip_grad_norm_", "core", _install_clip),
        Variant("total_norm", "get_total_norm", "core", _install_total_norm),
        Variant(
            "hot",
            "watch(): hot path, no logging",
            "core",
            _install_monitor(log_every=NEVER, name="hot"),
            min_warmup=MONITOR_WARMUP,
        ),
        Variant(
            "defaults",
            "watch(): defaults + offline run",
            "core",
            _install_monitor(),
            min_warmup=MONITOR_WARMUP,
        ),
        Variant(
            "escalated",
            "watch(): escalated, per-layer each step",
            "escalated",
            _install_monitor(telemetry_steps=NEVER),
            after_warmup=_escalate_now,
            min_warmup=MONITOR_WARMUP,
        ),
        Variant("watch1", "wandb.watch(log_freq=1)", "watch-1", _install_wandb_watch(1), in_step=False),
        Variant(
            "watch1000", "wandb.watch(log_freq=1000)", "watch-1000", _install_wandb_watch(1000), in_step=False
        ),
    )
}

PHASES: tuple[Phase, ...] = (
    Phase("core", True, 0.60, ("floor", "clip", "total_norm", "hot", "defaults")),
    Phase("escalated", True, 0.14, ("escalated",)),
    Phase("watch-1", True, 0.12, ("watch1",)),
    Phase("watch-1000", True, 0.14, ("watch1000",)),
)


def open_run(root: Path, name: str) -> Any:
    """A fresh offline W&B run under ``root`` (console capture off: it would wrap our prints)."""
    import wandb

    settings = wandb.Settings(console="off", silent=True)
    return wandb.init(mode="offline", dir=str(root), project="gradema-overhead", name=name, settings=settings)
