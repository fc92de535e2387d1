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
    """``read_back`` of steps that are all ``PendingStep``s."""
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
