"""Reference: the healthy siblings of a sweep, aligned on the optimizer step.

Built once from the stores' records (off the per-step path); ``at(step)`` interpolates every
healthy sibling that reached ``step`` (cadences may differ: their thinned points are
interpolated linearly, the norm in log space) and returns plain arrays. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .record import LEVEL_OF, SiblingRecord

__all__ = ["GOOD_SHARE", "LEVEL_NOISE", "MAX_GRID", "Reference", "SiblingsAt", "level_noise"]

#: A sibling *ended well* when its final level is within ``1 - GOOD_SHARE`` of the range from
#: the siblings' median start to the best final level, from the best.
GOOD_SHARE = 0.75
#: Noise of a median of ``LEVEL_OF`` losses per unit of per-step noise (sqrt(pi/2) / sqrt(n)).
LEVEL_NOISE = math.sqrt(math.pi / 2) / math.sqrt(LEVEL_OF)


def level_noise(noise: float) -> float:
    """The noise of a loss level given the per-step loss noise (0 when unknown)."""
    return noise * LEVEL_NOISE if math.isfinite(noise) else 0.0


@dataclass(frozen=True)
class SiblingsAt:
    """Healthy siblings at one step, aligned (one entry per sibling that reached it)."""

    step: int
    run_ids: tuple[str, ...]
    start: np.ndarray  # each sibling's first loss level
    loss: np.ndarray  # loss level at ``step``
    noise: np.ndarray  # level noise at ``step``
    norm: np.ndarray  # norm level at ``step``
    active: np.ndarray  # active share at ``step``
    end_progress: np.ndarray  # start minus final loss level
    end_noise: np.ndarray  # level noise at the end
    good: np.ndarray  # ended within a quarter of the best sibling's progress (``GOOD_SHARE``)
    last: np.ndarray | None = None  # each sibling's last recorded step
    live: np.ndarray | None = None  # still running (its "end" is its latest point; never ``good``)

    @property
    def progress(self) -> np.ndarray:
        return self.start - self.loss

    def clear(self) -> np.ndarray:
        """Which siblings had made clear progress by this step (beyond 4 level noises and 5%)."""
        return self.progress > np.maximum(4 * self.noise, 0.05 * np.abs(self.start))

    def learned(self) -> np.ndarray:
        """Which siblings made clear progress by their end."""
        return self.end_progress > np.maximum(4 * self.end_noise, 0.05 * np.abs(self.start))

    def recovered(self) -> np.ndarray:
        """Which siblings may show that a run behind here can still end well: those that ended
        well, and running ones that have learned clearly since (their end is not known yet)."""
        live = self.live if self.live is not None else np.zeros(len(self.run_ids), dtype=bool)
        return self.good | (live & self.learned())

    def stayed(self) -> np.ndarray:
        """Which siblings had made no clear progress by this step, nor by their end, and ran on
        for at least as long again (their record reaches twice this step): runs that sat at the
        untrained level here and stayed there."""
        last = self.last if self.last is not None else np.full(len(self.run_ids), np.inf)
        return ~self.clear() & ~self.learned() & (last >= 2 * self.step)


class _Sibling:
    """One healthy record as arrays."""

    def __init__(self, record: SiblingRecord) -> None:
        pts = [p for p in record.points if math.isfinite(p.loss)]
        self.run_id = record.run_id
        self.steps = np.array([p.step for p in pts], dtype=float)
        self.loss = np.array([p.loss for p in pts])
        self.noise = np.array([level_noise(p.noise) for p in pts])
        self.lognorm = np.log(np.array([max(p.norm, 1e-30) if math.isfinite(p.norm) else np.nan for p in pts]))
        self.active = np.array([p.active for p in pts])
        self.start = float(self.loss[0]) if len(pts) else math.nan
        self.end_progress = self.start - float(self.loss[-1]) if len(pts) else math.nan
        self.end_noise = float(self.noise[-1]) if len(pts) else math.nan
        self.end = float(self.loss[-1]) if len(pts) else math.nan
        self.good = False
        self.live = record.state == "running"

    def covers(self, step: int) -> bool:
        return len(self.steps) >= 2 and self.steps[0] <= step <= self.steps[-1]


#: Most grid nodes the reference keeps (the union of the siblings' steps, else an even grid).
MAX_GRID = 4096


class Reference:
    """The healthy siblings of a run (finished, not pruned, finite end), ready to query; with
    ``live``, also its siblings still running (concurrent agents), as far as they got.

    Built off the per-step path: every sibling is interpolated once onto one grid (the union of
    their points' steps, on which each sibling's piecewise-linear curve is exact), so ``at``
    is a bisection and a handful of vector operations, whatever the number of siblings.

    A running sibling is a fact up to its latest point: it counts as learning clearly at a step
    it has passed, as having stayed stuck when it is still stuck at twice the step, and vetoes
    when it was as far behind and has learned since; it never *ended well* (so it never sets the
    bar a run must be behind) and never sets what "ended well" means.

    Args:
        records: the sweep's records (any state; only healthy and, with ``live``, running ones
            with a finite latest point are kept).
        exclude: the run's own id (never its own sibling).
        live: keep running siblings too.
    """

    def __init__(self, records: Iterable[SiblingRecord], exclude: str | None = None, live: bool = True) -> None:
        kept = [r for r in records if r.run_id != exclude and (r.healthy or (live and _alive(r)))]
        self._siblings = [s for s in (_Sibling(r) for r in kept) if len(s.steps) >= 2]
        # Ended well: a final level within a quarter of the range from the siblings' usual start
        # (their median first level: robust to a run whose first steps blew up) to the best end.
        ends = [s.end for s in self._siblings if math.isfinite(s.end) and not s.live]
        if ends:
            best, start = min(ends), float(np.median([s.start for s in self._siblings]))
            for s in self._siblings:
                s.good = not s.live and start > best and s.end <= best + (1 - GOOD_SHARE) * (start - best)
        sibs = self._siblings
        steps = np.unique(np.concatenate([s.steps for s in sibs])) if sibs else np.zeros(1)
        if len(steps) > MAX_GRID:
            steps = np.linspace(steps[0], steps[-1], MAX_GRID)
        self._grid = steps
        self._ids = tuple(s.run_id for s in sibs)
        self._first = np.array([s.steps[0] for s in sibs])
        self._last = np.array([s.steps[-1] for s in sibs])
        self._start = np.array([s.start for s in sibs])
        self._end_progress = np.array([s.end_progress for s in sibs])
        self._end_noise = np.array([s.end_noise for s in sibs])
        self._good = np.array([s.good for s in sibs], dtype=bool)
        self._live = np.array([s.live for s in sibs], dtype=bool)
        self._first_norm = np.array([np.exp(s.lognorm[0]) for s in sibs])
        done = self._last[~self._live]
        self._budget = float(done.max()) if len(done) else math.nan
        # ``at``'s per-sibling fields for each set of siblings that reached a step: the set
        # changes only where a sibling begins or ends (at most twice per sibling).
        self._masked: dict[bytes, tuple[Any, ...]] = {}

        def on_grid(field: str) -> np.ndarray:  # (grid nodes, siblings)
            cols = [np.interp(steps, s.steps, getattr(s, field)) for s in sibs]
            return np.stack(cols, axis=1) if cols else np.zeros((len(steps), 0))

        self._loss, self._noise = on_grid("loss"), on_grid("noise")
        self._lognorm, self._active = on_grid("lognorm"), on_grid("active")

    def __len__(self) -> int:
        return len(self._siblings)

    @property
    def run_ids(self) -> tuple[str, ...]:
        return self._ids

    @property
    def budget(self) -> float:
        """The steps a run of this sweep gets, as far as the siblings show: the longest finished
        sibling's last step (nan while none has finished)."""
        return self._budget

    def first_norms(self, run_ids: tuple[str, ...]) -> list[float]:
        """Each named sibling's first norm level (its norm before training moved it)."""
        by_id = dict(zip(self._ids, self._first_norm.tolist(), strict=True))
        return [by_id.get(r, math.nan) for r in run_ids]

    def at(self, step: int) -> SiblingsAt:
        """The siblings that reached ``step``, interpolated there."""
        grid = self._grid
        i = int(np.searchsorted(grid, step, side="right")) - 1
        i = min(max(i, 0), len(grid) - 2) if len(grid) > 1 else 0
        if len(grid) > 1:
            w = min(max(float((step - grid[i]) / (grid[i + 1] - grid[i])), 0.0), 1.0)  # ``np.clip``, scalar
        else:
            w = 0.0
        j = min(i + 1, len(grid) - 1)
        mask = (self._first <= step) & (step <= self._last)

        def row(values: np.ndarray) -> np.ndarray:
            return ((1 - w) * values[i] + w * values[j])[mask]

        key = mask.tobytes()
        fixed = self._masked.get(key)
        if fixed is None:
            if len(self._masked) >= 64:  # bounded, whatever the steps asked
                self._masked.clear()
            fixed = self._masked[key] = (
                tuple(rid for rid, m in zip(self._ids, mask.tolist(), strict=True) if m),
                self._start[mask],
                self._end_progress[mask],
                self._end_noise[mask],
                self._good[mask],
                self._last[mask],
                self._live[mask],
            )
            for array in fixed[1:]:
                array.setflags(write=False)  # shared by every ``at`` with this set: never edited
        run_ids, start, end_progress, end_noise, good, last, live = fixed
        return SiblingsAt(
            step=step,
            run_ids=run_ids,
            start=start,
            loss=row(self._loss),
            noise=row(self._noise),
            norm=np.exp(row(self._lognorm)),
            active=row(self._active),
            end_progress=end_progress,
            end_noise=end_noise,
            good=good,
            last=last,
            live=live,
        )


def _alive(record: SiblingRecord) -> bool:
    """A running record whose latest points are finite (a sibling still training normally)."""
    return record.state == "running" and bool(record.points) and not any(p.nonfinite for p in record.points[-3:])
