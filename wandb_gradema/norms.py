"""Gradient norms: foreach kernels grouped by (device, dtype), no ``.item()`` on device.

Every function here returns tensors and never synchronises with the host unless asked to
(``measure(host=True)``, meant for CPU); the caller decides when to read values back. Private
torch helpers are used in this module only, with a fallback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

try:  # private since torch 2.0, stable in practice; keep its use in this one place.
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype
except ImportError:  # pragma: no cover - exercised only on torch builds without it
    _group_tensors_by_device_and_dtype = None  # type: ignore[assignment]

__all__ = [
    "GradStats",
    "STATS_FIELDS",
    "StatsRow",
    "all_finite",
    "clip_grads_",
    "collect_grads",
    "health_score",
    "host_row",
    "measure",
    "per_tensor_norms",
    "total_grad_norm",
]

class StatsRow(NamedTuple):
    """One step's gradient stats on the host (what the device row holds, by name).

    Attributes:
        grad_norm: total L2 norm (NaN/Inf when a gradient was).
        max_tensor_norm: the largest per-tensor norm.
        n_active: tensors with a finite norm above ``VANISH_EPS``.
        n_finite: tensors with a finite norm.
    """

    grad_norm: float
    max_tensor_norm: float
    n_active: float
    n_finite: float


#: Layout of the stats row written per optimizer step (float32, on device).
STATS_FIELDS = StatsRow._fields
#: The fields of a row that are norms (they scale with the gradients), then the counts.
NORM_FIELDS = slice(0, 2)
COUNT_FIELDS = slice(2, 4)

#: A parameter tensor whose gradient norm is at or below this counts as vanished.
VANISH_EPS = 1e-10
_ABOVE_VANISH = VANISH_EPS.__lt__  # v > VANISH_EPS, as a C callable

#: Device types with foreach kernels.
FOREACH_DEVICES = frozenset({"cpu", "cuda", "xpu", "mps", "hpu", "mtia"})


@dataclass(slots=True)
class GradStats:
    """One measurement of an optimizer's gradients.

    Attributes:
        norms: per-tensor norms, in the order of ``index``: a float32 tensor on the first
            gradient's device, or a list of Python floats when measured with ``host=True``.
        index: position (in the monitor's parameter list) of each gradient measured.
        grads: the gradients measured, kept so clipping can reuse them without a second walk.
        row: the ``STATS_FIELDS`` (total L2 norm, largest per-tensor norm, number of tensors
            with a finite norm above ``VANISH_EPS``, number with a finite norm): a
            ``StatsRow`` of floats with ``host=True``; on a device it is computed only when
            asked for (``device_row()``: clipping, sharded reduction), otherwise the host
            derives it from the read-back ``norms`` (``host_row``), a few kernels fewer per step.
        clipped: set once ``grads`` have been clipped, so a step does not clip twice.
    """

    norms: Tensor | list[float]
    index: Sequence[int]
    grads: list[Tensor]
    row: Tensor | StatsRow | None = None
    clipped: bool = False

    @property
    def n_tensors(self) -> int:
        """Number of parameter tensors that had a gradient."""
        return len(self.index)

    @property
    def total(self) -> Tensor | float:
        """The total L2 norm (0-d tensor on the device, or a float with ``host``)."""
        if isinstance(self.row, StatsRow):
            return self.row.grad_norm
        return self.device_row()[0]

    def device_row(self) -> Tensor:
        """The stats row as a float32 device tensor shaped ``(4,)`` (computed once, no sync)."""
        if not isinstance(self.row, Tensor):
            assert isinstance(self.norms, Tensor), "measured on the host: use .row"
            self.row = _device_row(self.norms)
        return self.row


def collect_grads(params: Sequence[Tensor], *, local: bool = False) -> tuple[list[Tensor], Sequence[int]]:
    """Return the gradients of ``params`` that exist, with their positions in ``params``.

    With ``local=True``, distributed tensors (FSDP2's DTensor) give their local shard.
    """
    raw = [p.grad for p in params]  # list comprehensions: the cheapest walk over parameters
    grads = [g for g in raw if g is not None]
    index: Sequence[int] = (
        range(len(raw)) if len(grads) == len(raw) else [i for i, g in enumerate(raw) if g is not None]
    )
    if local:
        grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
    return grads, index


def _group(grads: list[Tensor]) -> list[tuple[torch.device, list[int]]]:
    """Group gradient positions by (device, dtype): foreach kernels need uniform lists."""
    if _group_tensors_by_device_and_dtype is not None:
        grouped = _group_tensors_by_device_and_dtype([list(grads)], with_indices=True)
        return [(device, idx) for (device, _), (_, idx) in grouped.items()]
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, g in enumerate(grads):
        groups.setdefault((g.device, g.dtype), []).append(i)
    return [(device, idx) for (device, _), idx in groups.items()]


def _norms_of_group(grads: list[Tensor], device: torch.device) -> list[Tensor]:
    """Per-tensor L2 norms of same-device, same-dtype gradients, as float32.

    Half-precision gradients accumulate in float32 (a fp16 norm overflows at 65504); float64
    ones are reduced in float64 and then cast.
    """
    dtype = torch.float32 if grads[0].dtype in (torch.float16, torch.bfloat16) else None
    if device.type in FOREACH_DEVICES and not grads[0].is_sparse:
        try:
            out = list(torch._foreach_norm(grads, 2.0, dtype=dtype))
            return out if out[0].dtype == torch.float32 else [n.float() for n in out]
        except (RuntimeError, NotImplementedError, TypeError):
            pass  # sparse or unsupported layouts: fall through to the per-tensor path
    out = []
    for g in grads:
        if g.is_sparse:
            g = g.coalesce()._values()
        out.append(torch.linalg.vector_norm(g, 2.0, dtype=dtype).float())
    return out


def per_tensor_norms(grads: list[Tensor], *, uniform: bool = False) -> Tensor:
    """Float32 L2 norm of each gradient, stacked on the first gradient's device.

    NaN or Inf inside a gradient gives a NaN or Inf entry; norms above ~1e19 overflow to Inf in
    float32, as they do in ``torch.nn.utils.clip_grad_norm_``. ``uniform`` promises one device
    and dtype for all, which skips the grouping.
    """
    if not grads:
        return torch.zeros(0, dtype=torch.float32)
    first = grads[0].device
    if uniform:
        return torch.stack(_norms_of_group(grads, first))
    groups = _group(grads)
    if len(groups) == 1:
        return torch.stack(_norms_of_group(grads, groups[0][0]))
    slots: list[Tensor | None] = [None] * len(grads)
    for device, idx in groups:
        for i, n in zip(idx, _norms_of_group([grads[i] for i in idx], device)):
            slots[i] = n.to(first, non_blocking=True)
    return torch.stack(slots)  # type: ignore[arg-type]


def measure(params: Sequence[Tensor], *, local: bool = False, host: bool = False, uniform: bool = False) -> GradStats:
    """Measure the gradients of ``params``: per-tensor norms, and from them the stats row.

    Parameters without a gradient are left out. ``local``
    measures each distributed gradient's local shard (see ``collect_grads``). ``host`` reads the
    per-tensor norms back at once and finishes in Python: on CPU, where reading back costs
    nothing, that beats half a dozen tiny tensor ops; on accelerators it would force a sync.
    ``uniform``: every parameter has the same device and dtype (see ``per_tensor_norms``).
    """
    # Gradients built with create_graph=True must not grow graphs here. (The raw switch: the
    # ``no_grad`` context manager costs more than the rest of the host path's bookkeeping.)
    enabled = torch.is_grad_enabled()
    if enabled:
        torch._C._set_grad_enabled(False)
    try:
        grads, index = collect_grads(params, local=local)
        if host:
            values = _host_norms(grads, uniform)
            return GradStats(norms=values, index=index, grads=grads, row=host_row(values))
        return GradStats(norms=per_tensor_norms(grads, uniform=uniform), index=index, grads=grads)
    finally:
        if enabled:
            torch._C._set_grad_enabled(True)


def _host_norms(grads: list[Tensor], uniform: bool) -> list[float]:
    """Per-tensor norms as floats: one foreach kernel and one read-back for float32 gradients
    of one device (the common case on CPU), else ``per_tensor_norms``."""
    if uniform and grads and grads[0].dtype is torch.float32 and grads[0].layout is torch.strided:
        try:
            return torch.stack(torch._foreach_norm(grads, 2.0)).tolist()
        except (RuntimeError, NotImplementedError, TypeError):
            pass  # unsupported on this device: the general path below
    return per_tensor_norms(grads, uniform=uniform).tolist()


@torch.no_grad()
def _device_row(norms: Tensor) -> Tensor:
    """``STATS_FIELDS`` of per-tensor norms, on their device (no sync)."""
    if norms.numel() == 0:
        return torch.zeros(4, dtype=torch.float32, device=norms.device)
    finite = torch.isfinite(norms)
    return torch.stack(
        (
            torch.linalg.vector_norm(norms),
            norms.amax(),
            (finite & (norms > VANISH_EPS)).sum(dtype=torch.float32),
            finite.sum(dtype=torch.float32),
        )
    )


def host_row(values: Sequence[float]) -> StatsRow:
    """``STATS_FIELDS`` from per-tensor norms already on the host (NaN and Inf propagate)."""
    if not values:
        return StatsRow(0.0, 0.0, 0.0, 0.0)
    total = math.hypot(*values)  # Inf if any is Inf, else NaN if any is NaN
    if math.isfinite(total):  # counted in C (``map``): no Python loop over the tensors
        return StatsRow(total, max(values), float(sum(map(_ABOVE_VANISH, values))), float(len(values)))
    finite = [v for v in values if math.isfinite(v)]
    active = len([v for v in finite if v > VANISH_EPS])
    return StatsRow(total, total, float(active), float(len(finite)))


def unscale(stats: GradStats, scale: Tensor) -> GradStats:
    """``stats`` of gradients measured at the loss scale ``scale``, brought to true scale."""
    row, values = stats.row, stats.norms
    if isinstance(row, StatsRow) and isinstance(values, list):  # measured on the host
        inv = 1.0 / float(scale)  # the scale is a CPU tensor here: no sync
        scaled = row._replace(grad_norm=row.grad_norm * inv, max_tensor_norm=row.max_tensor_norm * inv)
        return GradStats([v * inv for v in values], stats.index, stats.grads, scaled, stats.clipped)
    assert isinstance(values, Tensor)
    s = scale.to(values.device).reshape(1).float()
    device_row = torch.cat((row[NORM_FIELDS] / s, row[COUNT_FIELDS])) if isinstance(row, Tensor) else None
    return GradStats(values / s, stats.index, stats.grads, device_row, stats.clipped)


@torch.no_grad()
def total_grad_norm(tensors: Iterable[Tensor]) -> Tensor:
    """Total L2 norm of ``tensors`` (gradients), as a 0-d float32 tensor: no host sync."""
    norms = per_tensor_norms(list(tensors))
    return torch.linalg.vector_norm(norms) if norms.numel() else torch.zeros(())


@torch.no_grad()
def clip_grads_(grads: list[Tensor], total_norm: Tensor | float, max_norm: float) -> None:
    """Scale ``grads`` in place so their total norm is at most ``max_norm``.

    Same rule as ``torch.nn.utils.clip_grads_with_norm_`` for a finite norm. With a tensor
    norm the coefficient is clamped rather than branched on, so there is no host-device sync;
    with a float norm (measured on the host) gradients already within bounds are left untouched.

    Non-finite gradients: when ``total_norm`` is NaN or Inf the gradients are left exactly as
    they are, on every path (torch's own clip would multiply every gradient by NaN, destroying
    the finite ones too); the monitor reports the step as non-finite.
    """
    if not grads:
        return
    if isinstance(total_norm, Tensor):
        clamped = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        coef: Tensor | float = torch.where(torch.isfinite(total_norm), clamped, torch.ones_like(clamped))
    else:
        coef = max_norm / (total_norm + 1e-6)
        if not math.isfinite(total_norm) or not coef < 1.0:  # non-finite, or within bounds
            return
    for device, idx in _group(grads):
        group = [grads[i] for i in idx]
        c = coef.to(device, non_blocking=True) if isinstance(coef, Tensor) else coef
        if device.type in FOREACH_DEVICES and not group[0].is_sparse:
            try:
                torch._foreach_mul_(group, c)
                continue
            except (RuntimeError, NotImplementedError, TypeError):
                pass
        for g in group:
            g.mul_(c.to(g.dtype) if isinstance(c, Tensor) else c)

def health_score(
    n_tensors: int, n_active: float, grad_norm: float, max_tensor_norm: float
) -> tuple[float, float, float]:
    """Gradient health in [0, 1] from one stats row: ``(health, active_share, concentration)``.

    ``active_share`` is the share of gradient tensors with a finite norm above ``VANISH_EPS``
    (dead layers and NaN tensors lower it). ``concentration`` is the share of the squared total
    norm held by the single largest tensor, in [1/P, 1]. ``health = active_share * spread``
    where ``spread = (1 - concentration) / (1 - 1/P)`` is 1 when the norm is spread evenly over
    the P tensors and 0 when one tensor holds all of it (P = 1 counts as evenly spread). A
    non-finite total norm, or no gradient at all, scores 0.
    """
    if n_tensors == 0 or not math.isfinite(grad_norm):
        return 0.0, (n_active / n_tensors if n_tensors else 0.0), math.nan
    active = n_active / n_tensors
    if grad_norm <= 0.0:
        return 0.0, active, math.nan
    conc = (max_tensor_norm / grad_norm) ** 2
    if not conc < 1.0:  # ``min(1.0, conc)`` inlined (every step): NaN gives 1.0 as ``min`` does
        conc = 1.0
    if n_tensors == 1:
        spread = 1.0
    else:
        spread = (1.0 - conc) / (1.0 - 1.0 / n_tensors)
        if not spread > 0.0:  # ``max(0.0, spread)``: -0.0 and NaN give 0.0 as ``max`` does
            spread = 0.0
    return active * spread, active, conc


def all_finite(params: Sequence[Tensor]) -> bool:
    """Every value of every tensor is finite (one host read; only asked after non-finite steps)."""
    if not params:
        return True
    with torch.no_grad():
        flags = [torch.isfinite(p.detach()).all() for p in params if p.numel()]
        return bool(torch.stack([f.to(flags[0].device) for f in flags]).all().item()) if flags else True
