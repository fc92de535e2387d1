"""torch.distributed helpers: who logs, and agreeing on a decision across ranks."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from .errors import GrademaError
from .escalation import EscalationEvent
from .norms import COUNT_FIELDS, NORM_FIELDS

__all__ = [
    "agree",
    "agree_events",
    "broadcast_from_main",
    "is_distributed",
    "is_main_process",
    "reduce_sharded_row",
    "world_size",
]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, or when not distributed: the only process that talks to W&B."""
    return not is_distributed() or dist.get_rank() == 0


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (one collective): options from rank 0's W&B run config.

    Only rank 0 has a W&B run; ranks configured differently would decide at different steps.
    """
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def _device() -> torch.device:
    if dist.get_backend() == "gloo":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def agree(
    first: int | None, first_confirmed: int | None, ticks: int | None = None
) -> tuple[int | None, int | None]:
    """The earliest escalation step and earliest confirmed one over all ranks: one all_reduce.

    Each rank passes the first step it escalated at since the last decision (None: none) and
    the first step of a confirmed escalation. Every rank must call this at the same decision
    step (the monitor's decision steps are a function of the step count), or the group hangs.
    The same all-reduce checks that: ``ticks`` (the optimizer steps this rank has seen) must be
    equal on every rank, else ``GrademaError`` names the spread (a checkpoint loaded on some
    ranks only, uneven inputs under ``Join``). A failing collective raises: a rank that
    swallowed it would leave the others waiting.
    """
    if not is_distributed():
        return first, first_confirmed
    none = 2**62
    # MAX over [fired, -step, confirmed, -confirmed_step, ticks, -ticks]: whether any rank fired
    # (and confirmed), the smallest step that did, and the largest and smallest tick counts.
    t = torch.tensor(
        [
            0 if first is None else 1,
            -(none if first is None else first),
            0 if first_confirmed is None else 1,
            -(none if first_confirmed is None else first_confirmed),
            -1 if ticks is None else ticks,
            1 if ticks is None else -ticks,
        ],
        dtype=torch.int64,
        device=_device(),
    )
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    fired, neg_step, confirmed, neg_confirmed, most, neg_least = t.tolist()  # host sync: a decision step
    if ticks is not None and most != -neg_least:
        raise GrademaError(
            f"wandb_gradema: ranks disagree on the optimizer step count at a decision step (this rank "
            f"{ticks}, others between {-neg_least} and {most}): the monitors' collectives would pair with "
            "other collectives and hang. Load the monitor's state on every rank (it rides in "
            "optimizer.state_dict()), and step every rank's optimizer the same number of times "
            "(uneven inputs under Join cannot be watched)."
        )
    return (-neg_step if fired else None), (-neg_confirmed if confirmed else None)


def agree_events(events: list[EscalationEvent], ticks: int | None = None) -> list[EscalationEvent]:
    """The escalations every rank acts on, from this rank's own (one all_reduce).

    All ranks escalate together at the earliest step any rank escalated, and prune together at
    the earliest confirmed escalation; a rank that saw nothing records why it escalates anyway
    (``other_rank``). The caller then adopts the first event's cooldown and telemetry windows.
    """
    confirmed = [e for e in events if e.confirmed]
    first, first_confirmed = agree(
        events[0].step if events else None, confirmed[0].step if confirmed else None, ticks
    )
    agreed = []
    if first is not None:
        event = next((e for e in events if e.step == first), None) or _other_rank(first)
        agreed.append(replace(event, confirmed=True) if first_confirmed == first else event)
    if first_confirmed is not None and first_confirmed != first:
        event = next((e for e in confirmed if e.step == first_confirmed), None) or _other_rank(first_confirmed)
        agreed.append(replace(event, confirmed=True))
    return agreed


def _other_rank(step: int) -> EscalationEvent:
    return EscalationEvent(
        step=step,
        reasons=(f"Escalation on another rank at step {step}.",),
        anomaly_types=("other_rank",),
        score=math.nan,
        first_anomaly_step=step,
    )


def reduce_sharded_row(row: torch.Tensor) -> torch.Tensor:
    """Global norm stats of sharded gradients from each rank's stats row: one all_gather.

    Row layout as ``norms.STATS_FIELDS``. The total norm is the square root of the summed
    squares of the ranks' norms and the largest tensor norm is the maximum; the health counts
    stay this rank's own (a share of tensors is meaningful per rank).
    """
    if not is_distributed():
        return row
    gathered = torch.empty(world_size() * 2, dtype=row.dtype, device=row.device)
    dist.all_gather_into_tensor(gathered, row[NORM_FIELDS].contiguous())
    gathered = gathered.view(-1, 2)  # per rank: (total norm, largest tensor norm)
    total = gathered[:, 0].square().sum().sqrt().reshape(1)
    return torch.cat((total, gathered[:, 1].amax().reshape(1), row[COUNT_FIELDS]))
