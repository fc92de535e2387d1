"""StepIntake: measures each optimizer step on the gradients' device and queues it.

The device side of the monitor: which parameters to measure (``WatchedParams``, refreshed
after ``add_param_group``), how (on the host on CPU, with device tensors elsewhere; sharded
gradients combined across ranks), the loss observed for the step, clipping in the same pass,
and the queue of measured steps waiting for the next read-back. Nothing here reads values back
to the host except on CPU, where that is free.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import torch
from torch import Tensor

from . import _dist, norms
from .params import WatchedParams, largest_lr
from .readback import PendingStep, StepValues

__all__ = ["DEFAULT_SYNC_EVERY", "StepIntake"]

#: ``sync_every`` when not given: on the CPU reading values back is free (every step decided);
#: on an accelerator a read-back is a host-device sync, so 16 steps share one.
DEFAULT_SYNC_EVERY = {"cpu": 1, "accelerator": 16}

#: ``p.grad`` and ``g is None`` as C callables: ``map`` walks the parameters without Python bytecode.
_GRAD = operator.attrgetter("grad")
_IS_NONE = functools.partial(operator.is_, None)


class StepIntake:
    """Measures and queues the steps of one optimizer.

    Args:
        optimizer: the optimizer whose param groups are measured.
        model: names parameters for per-layer telemetry (or None).
        sync_every: steps between read-backs; 1 on CPU measures on the host.
        sharded: gradients are sharded across ranks (None: detect FSDP).
        max_norm: clip to this total norm after measuring (None: no clipping).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: torch.nn.Module | None,
        *,
        sync_every: int | None,
        sharded: bool | None,
        max_norm: float | None,
    ) -> None:
        self.watched = WatchedParams(optimizer, model)
        default = DEFAULT_SYNC_EVERY["cpu" if self.watched.on_cpu else "accelerator"]
        self.sync_every = sync_every if sync_every is not None else default
        self.max_norm = max_norm
        self.queue: list[PendingStep | StepValues] = []  # StepValues: measured on the host
        self._sharded_option = sharded
        self._distributed = _dist.is_distributed()
        self._pending: norms.GradStats | None = None  # measured by measure() for the coming step
        self._loss_sum: float | Tensor | None = None
        self._loss_count = 0
        self.configure()

    def configure(self) -> None:
        """Derive how to measure from the parameters (again after ``add_param_group``)."""
        watched = self.watched
        option = self._sharded_option
        self.sharded = bool(option) if option is not None else self._distributed and watched.any_sharded
        # On CPU every step is a decision step anyway: read values back at once and finish the
        # stats in Python (cheaper than half a dozen tiny tensor ops).
        self.read_at_once = watched.on_cpu and self.sync_every == 1 and not self.sharded
        self.one_group = watched.uniform  # one device and dtype: the foreach kernels need no grouping
        # The common step of either path takes one lean call (``observe_lean``).
        self.lean = (
            not self.sharded
            and self.one_group
            and self.max_norm is None
            and bool(watched.params)
            and watched.params[0].device.type in norms.FOREACH_DEVICES
        )

    # ------------------------------------------------------------------ before step()
    def observe_loss(self, loss: float | Tensor) -> None:
        """Add a loss for the coming step (see ``GradientMonitor.observe_loss``)."""
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(f"`loss` must be a scalar (one element), got shape {tuple(loss.shape)}.")
            # On CPU reading the value now is free; elsewhere keep it on device until read back
            # (a view: no kernel, no sync).
            if self.read_at_once:
                value: float | Tensor = loss.item()
            else:
                value = loss.detach()
                if value.dim():
                    value = value.reshape(())
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            value = float(loss)
        else:
            raise TypeError(f"`loss` must be a float or a scalar tensor, got {type(loss).__name__}.")
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        self._loss_count += 1

    @property
    def has_loss(self) -> bool:
        """A loss was observed for the coming step."""
        return self._loss_sum is not None

    def measure(self, optimizer: torch.optim.Optimizer) -> norms.GradStats:
        """Measure now for the coming step; sharded gradients are combined (one all_gather)."""
        if self.watched.refresh(optimizer):
            self.configure()
        stats = norms.measure(self.watched.params, local=self.sharded, host=self.read_at_once, uniform=self.one_group)
        if self.sharded:
            stats.row = _dist.reduce_sharded_row(stats.device_row())
        self._pending = stats
        return stats

    def clip_(self, stats: norms.GradStats, max_norm: float) -> None:
        """Clip the gradients ``stats`` measured to ``max_norm`` (once per step)."""
        norms.clip_grads_(stats.grads, stats.total, max_norm)
        stats.clipped = True

    # ------------------------------------------------------------------ in step()
    def local_stats(self, optimizer: torch.optim.Optimizer) -> tuple[norms.GradStats, bool]:
        """This step's stats, and whether they are combined across ranks already."""
        if self.watched.refresh(optimizer):  # add_param_group since the last step
            self.configure()
            self._pending = None
        stats, self._pending = self._pending, None
        if stats is not None:  # measured by measure() / clip_grad_norm_(): combined there
            return stats, True
        return norms.measure(self.watched.params, local=self.sharded, host=self.read_at_once, uniform=self.one_group), False

    def observe_lean(self, step: int, optimizer: torch.optim.Optimizer) -> bool:
        """Measure and queue step ``step`` in one call, the common step of both paths (``lean``:
        unsharded, one device and dtype, no clipping; the caller checked there is no loss scale):
        float32 dense gradients, every parameter's, measured with one foreach kernel and one
        stack. On the CPU host path the norms are read at once and the step queued as host
        values; on the deferred path they stay on the device (no sync) until the decision step
        reads the queue back. False, with nothing done, when the general path must take the step
        (``add_param_group``, a measurement taken ahead, a missing or other gradient)."""
        watched = self.watched
        if watched.refresh(optimizer):  # add_param_group since the last step
            self.configure()
            self._pending = None
            return False
        if self._pending is not None:  # measured by measure() / clip_grad_norm_()
            return False
        # No Python loop over the parameters: ``map`` walks them in C.
        grads = list(map(_GRAD, watched.params))
        if not grads or any(map(_IS_NONE, grads)):
            return False
        first = grads[0]
        if first.dtype is not torch.float32 or first.layout is not torch.strided:
            return False
        enabled = torch.is_grad_enabled()
        if enabled:  # gradients built with create_graph=True must not grow graphs here
            torch._C._set_grad_enabled(False)
        try:
            stacked = torch.stack(torch._foreach_norm(grads, 2.0))
        except (RuntimeError, NotImplementedError, TypeError):
            return False  # unsupported here: the general path's fallback
        finally:
            if enabled:
                torch._C._set_grad_enabled(True)
        loss = self.take_loss()
        if self.read_at_once:
            values: list[float] = stacked.tolist()
            self.queue.append(
                StepValues(
                    step, norms.host_row(values), None if loss is None else float(loss),
                    largest_lr(optimizer, host=True), values, range(len(grads)),  # type: ignore[arg-type]
                    len(optimizer.param_groups),
                )
            )  # fmt: skip
        else:
            self.queue.append(
                PendingStep(
                    step, None, loss, largest_lr(optimizer, host=False), stacked, range(len(grads)),
                    param_groups=len(optimizer.param_groups),
                )
            )  # fmt: skip
        return True

    def observe(
        self, step: int, optimizer: torch.optim.Optimizer, found_inf: Any, grad_scale: Any
    ) -> norms.GradStats | bool:
        """Measure and queue step ``step`` (unsharded gradients): True once queued. Gradients
        that turn out sharded (``add_param_group`` since the last step) are returned unqueued:
        the caller combines them across ranks first, outside any guard."""
        stats, combined = self.local_stats(optimizer)
        if self.sharded and not combined:
            return stats
        self.enqueue(step, stats, optimizer, found_inf, grad_scale)
        return True

    def combine(self, stats: norms.GradStats | None) -> None:
        """Combine a sharded step's stats across ranks: every rank calls this, even when its own
        measurement failed (a NaN row then), or the others would wait forever."""
        params = self.watched.params
        device = params[0].device if params else torch.device("cpu")
        row = stats.device_row() if stats is not None else torch.full((4,), math.nan, device=device)
        row = _dist.reduce_sharded_row(row)
        if stats is not None:
            stats.row = row

    def enqueue(
        self, step: int, stats: norms.GradStats, optimizer: torch.optim.Optimizer, found_inf: Any, grad_scale: Any
    ) -> None:
        """Bring ``stats`` to true scale, clip (``max_norm``) and queue the step."""
        if isinstance(grad_scale, Tensor):  # measured at the loss scale: bring back to true scale
            stats = norms.unscale(stats, grad_scale)
        if self.max_norm is not None and not stats.clipped:
            self.clip_(stats, self.max_norm)
        row = stats.row
        if self.read_at_once and isinstance(row, norms.StatsRow) and isinstance(stats.norms, list):  # host values
            skipped = isinstance(found_inf, Tensor) and bool(found_inf.item())
            loss = self.take_loss()
            self.queue.append(
                StepValues(
                    step, None if skipped else row, None if loss is None else float(loss),
                    largest_lr(optimizer, host=True), stats.norms, stats.index,  # type: ignore[arg-type]
                    len(optimizer.param_groups),
                )
            )
            return
        inf: float | Tensor | None = None
        if isinstance(found_inf, Tensor):
            inf = found_inf.item() if self.read_at_once else found_inf.detach().clone()
        lr = largest_lr(optimizer, host=self.read_at_once)
        self.queue.append(
            PendingStep(
                step, row, self.take_loss(), lr, stats.norms, stats.index, inf,
                param_groups=len(optimizer.param_groups),
            )
        )

    def skipped(self, step: int) -> None:
        """Queue a step a GradScaler skipped (its gradients were not finite)."""
        self._pending = None
        self.take_loss()
        self.queue.append(PendingStep(step, skipped=True))

    def take_loss(self) -> float | Tensor | None:
        """The mean loss observed since the last step (None if none), and start afresh."""
        if self._loss_sum is None:
            return None
        loss = self._loss_sum if self._loss_count == 1 else self._loss_sum / self._loss_count
        self._loss_sum, self._loss_count = None, 0
        return loss

    def take_queue(self) -> list[PendingStep | StepValues]:
        """Every queued step, in order; the queue starts afresh."""
        queue, self.queue = self.queue, []
        return queue

    def reset(self) -> None:
        """Forget what is queued and observed (a checkpoint replaces the trajectory)."""
        self.queue, self._pending = [], None
        self._loss_sum, self._loss_count = None, 0
