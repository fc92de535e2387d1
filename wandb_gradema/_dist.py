"""torch.distributed helpers: who logs, and agreeing on a decision across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["any_rank", "is_distributed", "is_main_process", "world_size"]


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, or when not distributed: the only process that talks to W&B."""
    return not is_distributed() or dist.get_rank() == 0


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True when ``flag`` is true on any rank: one all_reduce (MAX) of a single int.

    Every rank must call this at the same point, or the group hangs.
    """
    if not is_distributed():
        return flag
    if device is None:
        device = torch.device("cpu") if dist.get_backend() == "gloo" else torch.device(
            "cuda", torch.cuda.current_device()
        )
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())  # host sync: this is a decision step
