"""A per-trainer clock for the monitor, so interleaving does not change what it decides.

The monitor's adaptive logging cadence (``log_every=None``) estimates the step time from the
wall time between two of its hooks. Interleaved timing runs other variants' steps between two
steps of one variant, so that estimate would be several times too long, and the monitor would
log several times more often than in an uninterrupted training loop: the benchmark would
measure a cadence no user gets. ``isolated_step_clock`` gives ``wandb_gradema.cadence`` (the
step-time estimate) and ``wandb_gradema.decisions`` (the cost of a row) a ``time`` whose
``perf_counter`` stops while other trainers run (each trainer reports when it starts and stops a
step); nothing else in the library is touched.
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Iterator
from typing import Any

__all__ = ["TRAINER_CLOCK", "TrainerClock", "isolated_step_clock"]


class TrainerClock:
    """``perf_counter`` minus the time the active trainer spent paused (others running)."""

    def __init__(self) -> None:
        self._paused: dict[int, float] = {}
        self._left: dict[int, float] = {}
        self._active: int | None = None

    def enter(self, owner: object) -> None:
        """``owner`` starts a step: the time since its last step stops counting for it."""
        key = id(owner)
        now = time.perf_counter()
        if key in self._left:
            self._paused[key] = self._paused.get(key, 0.0) + now - self._left[key]
        self._active = key

    def leave(self, owner: object) -> None:
        """``owner`` finished a step."""
        self._left[id(owner)] = time.perf_counter()
        self._active = None

    def perf_counter(self) -> float:
        """The active trainer's own running time (plain ``perf_counter`` outside any step)."""
        paused = self._paused.get(self._active, 0.0) if self._active is not None else 0.0
        return time.perf_counter() - paused


#: The clock every ``Trainer`` reports to.
TRAINER_CLOCK = TrainerClock()


class _TimeModule(types.SimpleNamespace):
    """``time`` with ``perf_counter`` replaced by the trainer clock."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@contextlib.contextmanager
def isolated_step_clock() -> Iterator[bool]:
    """Give the monitor's cadence the trainer clock; yields False if a module has no ``time``."""
    from wandb_gradema import cadence, decisions

    modules = (cadence, decisions)
    originals = [getattr(m, "time", None) for m in modules]
    if not all(isinstance(o, types.ModuleType) for o in originals):
        yield False
        return
    for m in modules:
        m.time = _TimeModule(perf_counter=TRAINER_CLOCK.perf_counter)  # type: ignore[attr-defined]
    try:
        yield True
    finally:
        for m, original in zip(modules, originals):
            m.time = original  # type: ignore[attr-defined]
