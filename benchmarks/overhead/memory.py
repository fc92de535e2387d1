"""What a monitor keeps in memory: Python objects, tensors, and whether either grows with steps.

Two independent views. ``footprint`` walks the objects reachable from the monitor (not through
the optimizer, the model, W&B or code objects) and sums their sizes, the items in its
containers, and the tensors it holds that are not parameters or gradients. ``tracemalloc``
attributes live Python allocations to the files of ``wandb_gradema`` (innermost frame: the
package's own objects; any frame: also what W&B keeps for our calls). Run N and then 10N steps:
nothing may grow.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
import types
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

import wandb_gradema

__all__ = ["Footprint", "footprint", "package_bytes", "PACKAGE_DIR"]

PACKAGE_DIR = str(Path(wandb_gradema.__file__).resolve().parent)

#: Objects the walk never enters: code, modules, classes, and what the monitor merely refers to.
_OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    weakref.ReferenceType,
    nn.Module,
    torch.optim.Optimizer,
)


@dataclass(frozen=True)
class Footprint:
    """What one monitor holds, from a walk of the objects it reaches.

    Attributes:
        python_bytes: ``sys.getsizeof`` summed over the reachable Python objects.
        container_items: items in the reachable lists, tuples, dicts and sets.
        tensor_elements: elements of the tensors it holds (not parameters, gradients or
            optimizer state: those exist without it).
        tensor_bytes: their storage, counted once per storage.
        n_param_tensors: parameter tensors of the watched optimizer.
    """

    python_bytes: int
    container_items: int
    tensor_elements: int
    tensor_bytes: int
    n_param_tensors: int


def _is_wandb(obj: object) -> bool:
    return type(obj).__module__.split(".", 1)[0] == "wandb"


def _reachable(root: object, skip: set[int]) -> Iterator[object]:
    """Objects reachable from ``root``, not entering ``_OPAQUE`` ones, W&B's, or ``skip`` ids."""
    seen = set(skip)
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, _OPAQUE) or _is_wandb(obj):
            continue
        yield obj
        if not isinstance(obj, Tensor):
            stack.extend(gc.get_referents(obj))


def _storage_ptrs(tensors: Iterable[Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def footprint(monitor: wandb_gradema.GradientMonitor) -> Footprint:
    """Walk what ``monitor`` keeps (call between steps, after ``zero_grad``)."""
    opt = monitor.optimizer
    params = [p for g in opt.param_groups for p in g["params"]]
    owned = [*params, *(p.grad for p in params if p.grad is not None)]
    owned += [v for state in opt.state.values() for v in state.values() if isinstance(v, Tensor)]
    skip = {id(t) for t in owned}
    owned_ptrs = _storage_ptrs(owned)
    py_bytes = items = elements = 0
    storages: dict[int, int] = {}
    for obj in _reachable(monitor, skip):
        if isinstance(obj, Tensor):
            ptr = obj.untyped_storage().data_ptr()
            if ptr not in owned_ptrs and ptr not in storages:
                storages[ptr] = obj.untyped_storage().nbytes()
                elements += obj.numel()
            continue
        py_bytes += sys.getsizeof(obj)
        if isinstance(obj, (list, tuple, dict, set, frozenset)):
            items += len(obj)
    return Footprint(py_bytes, items, elements, sum(storages.values()), len(params))


def package_bytes(snapshot: tracemalloc.Snapshot, *, all_frames: bool = False) -> int:
    """Live bytes allocated from ``wandb_gradema``'s files (innermost frame, or any frame)."""
    flt = tracemalloc.Filter(True, PACKAGE_DIR + "/*", all_frames=all_frames)
    return sum(s.size for s in snapshot.filter_traces([flt]).statistics("filename"))
