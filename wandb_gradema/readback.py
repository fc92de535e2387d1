"""The queue of measured steps and its one read-back to the host.

On accelerators a step's values (stats row, loss, learning rate, per-layer norms, a fused
optimizer's overflow flag) stay on the device until the monitor needs them; ``read_back``
brings every queued step to the host with a single transfer. Steps measured on the host
(CPU, ``sync_every=1``) pass through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .norms import StatsRow, host_row

__all__ = ["PendingStep", "StepValues", "read_back"]


@dataclass(slots=True)
class PendingStep:
    """One optimizer step waiting to be read back.

    ``row`` is the stats row when it was computed (on the host, or on the device for clipping
    or a sharded reduction), else None: it is then derived from ``layer_norms`` once they are
    on the host. ``skipped``: a GradScaler skipped the step (its pre-hook never ran);
    ``found_inf`` is the overflow flag a fused optimizer stepped by a GradScaler received (a
    no-op step).
    """

    step: int
    row: Tensor | StatsRow | None = None
    loss: float | Tensor | None = None
    lr: float | Tensor | None = None
    layer_norms: Tensor | list[float] | None = None
    layer_index: Sequence[int] = ()
    found_inf: float | Tensor | None = None
    skipped: bool = False
    param_groups: int = 1


@dataclass(slots=True)
class StepValues:
    """The host values of one queued step (``row`` None: skipped by the GradScaler)."""

    step: int
    row: StatsRow | None
    loss: float | None
    lr: float | None
    layer_norms: list[float] | None
    layer_index: Sequence[int]
    param_groups: int = 1

    @property
    def n_tensors(self) -> int:
        """Parameter tensors that had a gradient."""
        return len(self.layer_index)


def read_back(queue: Sequence[PendingStep | StepValues]) -> list[StepValues]:
    """Host values of every queued step, in order.

    Host-device sync: one, for all device tensors of all queued steps together (concatenated
    on the first tensor's device); none when everything was measured on the host. Steps queued
    as ``StepValues`` (measured on the host, CPU with ``sync_every=1``) pass through as they are.
    """
    if len(queue) == 1 and isinstance(queue[0], StepValues):  # the CPU host path, every step
        return [queue[0]]
    values = [p for p in queue if isinstance(p, StepValues)]
    if len(values) == len(queue):
        return values
    pending = [p for p in queue if not isinstance(p, StepValues)]
    if not values:
        return _read_pending(pending)
    # Mixed (the path changed inside one queue, e.g. after add_param_group): one read-back, in order.
    read = iter(_read_pending(pending))
    return [p if isinstance(p, StepValues) else next(read) for p in queue]


def _read_pending(queue: Sequence[PendingStep]) -> list[StepValues]:
    """``read_back`` of steps that are all ``PendingStep``s: the common queue vectorised
    (``_read_stacked``), any other field by field (``_read_fields``)."""
    stacked = _read_stacked(queue)
    return stacked if stacked is not None else _read_fields(queue)


def _read_stacked(queue: Sequence[PendingStep]) -> list[StepValues] | None:
    """The common deferred queue in one go, or None when it is not one: every step's
    per-tensor norms a float32 tensor of one shape on one device (no stats row computed on the
    device, no overflow flag, nothing skipped). The norms of all steps, then their tensor
    losses and learning rates, are concatenated and read back with one transfer (two device
    operations per queue: the scalars stacked, everything concatenated, whatever its length);
    each step's values are slices of that one list. Exactly what ``_read_fields`` gives (the
    same float32 values, the same stats rows), with a fraction of its work per step."""
    first = queue[0].layer_norms
    if not isinstance(first, Tensor) or first.dim() != 1 or not first.numel():
        return None
    shape, f32 = first.shape, torch.float32
    parts: list[Tensor] = []
    scalars: list[Tensor] = []
    for p in queue:  # one pass: what the queue holds, gathered
        t, loss, lr = p.layer_norms, p.loss, p.lr
        if p.row is not None or p.found_inf is not None or p.skipped or not isinstance(t, Tensor):
            return None
        if t.shape != shape or t.dtype != f32:
            return None
        parts.append(t)
        if isinstance(loss, Tensor):
            scalars.append(loss if loss.dtype == f32 and not loss.dim() else loss.reshape(()).float())
        if isinstance(lr, Tensor):
            scalars.append(lr if lr.dtype == f32 and not lr.dim() else lr.reshape(()).float())
    dev = first.device
    if scalars:
        parts.append(torch.stack([v if v.device == dev else v.to(dev) for v in scalars]))
    try:
        flat: list[float] = torch.cat(parts).tolist()  # the one sync
    except RuntimeError:  # norms on another device
        return None
    n = shape[0]
    at = len(queue) * n  # the scalars follow the norms, in queue order (loss, then lr)
    values = []
    i = 0
    for p in queue:
        step_norms = flat[i : i + n]
        i += n
        loss, lr = p.loss, p.lr
        if isinstance(loss, Tensor):
            loss, at = flat[at], at + 1
        elif loss is not None:
            loss = float(loss)
        if isinstance(lr, Tensor):
            lr, at = flat[at], at + 1
        elif lr is not None:
            lr = float(lr)
        values.append(StepValues(p.step, host_row(step_norms), loss, lr, step_norms, p.layer_index, p.param_groups))
    return values


def _read_fields(queue: Sequence[PendingStep]) -> list[StepValues]:
    """``read_back`` of ``PendingStep``s field by field (any mix of fields and devices)."""
    tensors = [t for p in queue for t in (p.row, p.loss, p.lr, p.layer_norms, p.found_inf) if isinstance(t, Tensor)]
    if not tensors and all(isinstance(p.row, StatsRow) for p in queue):
        return [_host_values(p) for p in queue]  # measured on the host: as it is, no copying
    flat: list[float] = []
    if tensors:
        dev = tensors[0].device
        parts = [
            (t if t.dim() == 1 else t.reshape(-1))
            if t.device == dev and t.dtype == torch.float32
            else t.reshape(-1).float().to(dev)
            for t in tensors
        ]  # (the per-tensor norms are 1-d already: no view op for them)
        flat = torch.cat(parts).tolist()  # the one host-device sync
    at = 0

    def take(value: Tensor | float | list[float] | StatsRow | None) -> float | Sequence[float] | None:
        """The host value of one queued field: as it was, or its slice of ``flat``."""
        nonlocal at
        if not isinstance(value, Tensor):
            return value
        n = value.numel()
        at += n
        return flat[at - n : at]

    values = []
    for p in queue:
        row = take(p.row)
        loss, lr = take(p.loss), take(p.lr)
        norms = take(p.layer_norms)
        inf = take(p.found_inf)
        skipped = p.skipped or (inf is not None and bool(_scalar(inf)))
        if isinstance(row, Sequence):
            stats: StatsRow | None = StatsRow(*row)
        else:
            stats = host_row(norms) if isinstance(norms, Sequence) else None
        values.append(
            StepValues(
                step=p.step,
                row=None if skipped else stats,
                loss=_scalar(loss),
                lr=_scalar(lr),
                layer_norms=list(norms) if isinstance(norms, Sequence) else None,
                layer_index=p.layer_index,
                param_groups=p.param_groups,
            )
        )
    return values


def _host_values(p: PendingStep) -> StepValues:
    """The values of a step measured on the host (no field is a tensor)."""
    skipped = p.skipped or bool(p.found_inf)
    norms = p.layer_norms
    return StepValues(
        step=p.step,
        row=None if skipped else p.row,  # type: ignore[arg-type]
        loss=None if p.loss is None else float(p.loss),
        lr=None if p.lr is None else float(p.lr),
        layer_norms=norms if isinstance(norms, list) else None,
        layer_index=p.layer_index,
        param_groups=p.param_groups,
    )


def _scalar(value: float | Sequence[float] | None) -> float | None:
    """A float from a one-element read-back (or a float already)."""
    if value is None:
        return None
    return float(value[0] if isinstance(value, Sequence) else value)
