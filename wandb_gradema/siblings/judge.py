"""SiblingJudge: is this run hopelessly behind its healthy siblings at the same step?

At each point of the run's thinned trajectory (step ``s``, its loss level ``L``, its own level
noise ``n``, its first level ``L0`` with that level's noise ``n0``) against the healthy siblings
that reached ``s``:

- **enough siblings answer**: the siblings that say whether a run this far behind at ``s`` can
  still end well number at least ``min_siblings``: each one *learning clearly* by ``s`` (start
  minus level beyond 4 of their level noises and 5% of their start) says this sweep's runs can
  learn by then; each one that *sat at its untrained level at s and stayed there* (no clear
  progress by its end, which came at ``2 s`` or later) says runs stuck here stay stuck. At
  least one must be learning. So the first runs of a sweep, with one or two learners, are
  judged once runs that sat where this one sits have shown where that leads;
- **the run did not learn**: its progress ``L0 - L`` is within ``3 n`` or under a tenth of the
  learners' median progress, and ``L`` is above every learner that ended well by ``3 n``;
- **the stall is resolved**: its progress plus ``3 sqrt(n^2 + n0^2)`` is under half the
  learners' median progress. A loss as noisy as the gap (tiny batches on a regression) cannot
  tell a stuck run from a late learner that has begun to move: only the gradients may then
  corroborate;
- **nobody recovered from here**: no healthy sibling that ended well (nor a running one that
  has learned since) was as far behind at ``s`` (a deep net's plateau, Adam's early jump: what siblings showed and left is not
  prune-grade);
- **it is not leaving its plateau now**: its level did not fall by more than ``3 n`` over the
  last ``window`` steps (a late learner is spared from the moment it starts to move).

A streak of such points (from the end of the run's first ``MIN_WINDOW`` steps: its start is no
stall) prunes once it spans ``window`` steps (``max(MIN_WINDOW, 10% of s)``)
when the gradients corroborate (silent tensors: an active share below every clearly learning
sibling's; or a norm outside every one's band, a factor 3 either way; a band only K learners
define) or the stall is sharp (progress plus its noise under a tenth of the learners'), else
twice that. With fewer than K learners (the cold start) only a sharp stall is judged. A
*plateau* (live units, a finite loss not far above its start) prunes only once the run has
spent ``patience`` of the sweep's budget (the longest finished healthy sibling's steps; none
finished: no plateau prune): until it moves, a late learner looks exactly like one. Siblings
still running count as far as they got (see ``Reference``). The cause picks the
run's end: non-finite values or a loss far above its start: ``diverged``; silent gradients:
``dead``; otherwise ``behind``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .record import LEVEL_OF, SiblingPoint
from .reference import Reference, level_noise

__all__ = ["MIN_SIBLINGS", "MIN_WINDOW", "PATIENCE", "SiblingJudge", "SiblingVerdict"]

#: Healthy siblings that must answer (learning clearly at the step, or stuck there and stayed
#: stuck) before a run is judged against them, at least one of them learning. Fewer and one
#: lucky config sets the bar (on the dev sweeps 2 learners stopped good runs, 3 none).
MIN_SIBLINGS = 3
#: Shortest streak (in optimizer steps) that prunes, with gradient corroboration.
MIN_WINDOW = 20
#: The run's progress plus three of its level noises must stay under this share of the
#: learners' median progress: the judgement needs a loss whose noise resolves the gap.
RESOLVED = 0.5
#: ... under this share, the run's stall is sharp: one window suffices, as with gradient
#: corroboration (a loss resolved to a tenth of the gap does not dip into "stuck" by chance).
SHARP = 0.1
#: Share of the sweep's budget (its longest finished healthy sibling's steps) a run must have
#: spent before a *plateau* prunes it: a stall with live units and a loss that neither went
#: non-finite nor rose far above its start. Late learners sit at the untrained level exactly as
#: never-learners do until they move, and on our sweeps they moved as late as 40-55% of the
#: budget (digits: 0.42; regression: 0.45-0.55; one run of a fresh draw 0.7); pruning plateaus
#: as soon as the streak was long stopped 15 good runs in 63 replays of 21 sweep splits,
#: from 40% of the budget 1 (the sweep benchmark README, fifth pass).
#: Dead units and divergence are judged at once.
PATIENCE = 0.4
#: Norm band around the siblings' norm levels (a factor either way).
NORM_BAND = 3.0
#: Active share below the least of the learning siblings' by this much: silent tensors.
ACTIVE_GAP = 0.1
#: Per-run signals the reverse check may excuse when healthy siblings showed them too.
_EXCUSABLE = frozenset({"grad_explosion", "norm_rise", "grad_vanish", "dead_units", "stalled"})


@dataclass(frozen=True)
class SiblingVerdict:
    """The sibling judgement at one point of the run.

    Attributes:
        step: the point's optimizer step.
        compared: healthy siblings that reached the step.
        rank: the share of those siblings whose loss level was below the run's (0: best).
        z: the run's level minus the siblings' median, in units of their spread (or its noise).
        behind: the point counts towards a prune streak.
        prune: the streak is long enough: prune-grade.
        cause: ``"behind"``, ``"dead"`` or ``"diverged"`` (meaningful when ``behind``).
        reason: one sentence naming the step and the siblings.
    """

    step: int
    compared: tuple[str, ...]
    rank: float
    z: float
    behind: bool = False
    prune: bool = False
    cause: str = ""
    reason: str = ""
    corroborated: bool = False


class SiblingJudge:
    """Keeps the run's own start and its streak; judges each point against a ``Reference``.

    Args:
        min_siblings: ``MIN_SIBLINGS`` by default (>= 2, so a 2-run sweep is never judged).
        min_window: ``MIN_WINDOW`` by default.
        patience: ``PATIENCE`` by default: the share of the sweep's budget before a plateau
            (not dead, not diverged) may prune; 0 judges plateaus as soon as the streak is long.
    """

    def __init__(self, min_siblings: int = MIN_SIBLINGS, min_window: int = MIN_WINDOW, patience: float = PATIENCE) -> None:
        if not isinstance(min_siblings, int) or min_siblings < 2:
            raise ValueError(f"`min_siblings` must be an int >= 2, got {min_siblings!r}.")
        if isinstance(patience, bool) or not isinstance(patience, (int, float)) or not 0 <= patience <= 1:
            raise ValueError(f"`patience` must be a share of the sweep's budget in [0, 1], got {patience!r}.")
        self.patience = float(patience)
        self.min_siblings = min_siblings
        self.min_window = min_window
        self.start: float | None = None
        self.start_noise = 0.0
        self.streak_from: int | None = None
        self._levels: deque[tuple[int, float]] = deque(maxlen=64)  # the run's recent (step, level)

    def check(self, point: SiblingPoint, reference: Reference | None) -> SiblingVerdict | None:
        """Judge one point; None when there is nothing to compare with."""
        if self.start is None and math.isfinite(point.loss) and not point.nonfinite:
            self.start = point.loss
            # The first level is a median of fewer losses than ``LEVEL_OF``: its own noise.
            self.start_noise = level_noise(point.noise) * math.sqrt(LEVEL_OF / min(point.step + 1, LEVEL_OF))
        self._levels.append((point.step, point.loss if math.isfinite(point.loss) and not point.nonfinite else math.inf))
        if reference is None or len(reference) < self.min_siblings or self.start is None:
            self.streak_from = None
            return None
        at = reference.at(point.step)
        if len(at.run_ids) < self.min_siblings:
            self.streak_from = None
            return None
        loss = point.loss if math.isfinite(point.loss) and not point.nonfinite else math.inf
        noise = level_noise(point.noise)
        rank = float(np.mean(at.loss < loss))
        middle = _med(at.loss)
        spread = 1.4826 * float(_med(np.abs(at.loss - middle)))
        z = (loss - middle) / max(spread, noise, 1e-12) if math.isfinite(loss) else math.inf
        verdict = SiblingVerdict(point.step, at.run_ids, rank, z)
        clear = at.clear()
        # From the run's own start, or from where untrained siblings start when the run's first
        # steps already blew up (a loss still above that is no progress at all).
        progress = min(self.start, float(_med(at.start))) - loss
        # The siblings that answer "does a run this far behind at this step end well?": each one
        # learning clearly here says a run of this sweep can; each one that sat at the untrained
        # level here and stayed there as long again says such runs stay. (One that was as far
        # behind and ended well says the opposite, and vetoes below.)
        held = at.stayed()
        evidence = int(clear.sum()) + int(held.sum())
        if not clear.any() or evidence < self.min_siblings:
            self.streak_from = None
            return verdict
        learners = at.progress[clear]
        top = clear & at.good  # learning clearly now, and ended well
        gain = float(_med(learners))
        # The progress's noise: the level's and the run's first level's (a median of fewer
        # losses). A run whose first level is beyond doubt above its siblings' usual start (it
        # blew up at once) is measured from their start, whose median over runs is sharp.
        above = self.start - 3 * self.start_noise > float(_med(at.start))
        spread_p = noise if above or not math.isfinite(self.start_noise) else math.hypot(noise, self.start_noise)
        stuck = progress < max(3 * noise, 0.1 * gain)
        # Resolved: even its progress plus three noises is a small share of what the learners
        # made. A loss as noisy as the gap cannot tell a stuck run from a late learner that has
        # begun to move: then only the gradients may corroborate (below).
        resolved = progress + 3 * spread_p < RESOLVED * gain
        behind = bool(top.any()) and loss > float(at.loss[top].max()) + 3 * noise
        recovered = [
            rid for rid, p, ok in zip(at.run_ids, at.progress, at.recovered(), strict=True) if ok and p <= progress + 3 * noise
        ]
        window = max(self.min_window, int(0.1 * point.step))
        moving = self._dropped(point.step - window) > 3 * noise  # leaving its plateau now
        # The run's first window is its start, not a stall: a streak begins after it (a deep
        # net that leaves the untrained level at step 60 was stopped at step 27 otherwise).
        if not (stuck and behind) or recovered or moving or point.step < self.min_window:
            self.streak_from = None
            return verdict
        if self.streak_from is None:
            self.streak_from = point.step
        # The gradients corroborate against a band that K learners define (one or two learners'
        # norms are their configs' scale, not the sweep's).
        banded = int(clear.sum()) >= self.min_siblings
        silent = banded and math.isfinite(point.active) and point.active < float(at.active[clear].min()) - ACTIVE_GAP
        lo, hi = float(at.norm[clear].min()) / NORM_BAND, float(at.norm[clear].max()) * NORM_BAND
        off_band = banded and not (math.isfinite(point.norm) and lo <= point.norm <= hi)
        corroborated = silent or off_band
        sharp = progress + 3 * spread_p < SHARP * gain
        # With fewer than K learners (the cold start) only a sharp stall is judged.
        if not (sharp if not banded else corroborated or resolved):
            self.streak_from = None
            return verdict
        needed = window if corroborated or sharp else 2 * window
        cause = self._cause(point, loss, silent)
        clear = top
        names = [rid for rid, c in zip(at.run_ids, clear, strict=True) if c]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        grads = (
            "gradients silent" if silent else "norm outside every learning sibling's band" if off_band else "gradients look alive"
        )
        stuck_ids = [rid for rid, h in zip(at.run_ids, held.tolist(), strict=True) if h]
        stayers = (
            f"; {len(stuck_ids)} that had not learned by this step stayed that way ({', '.join(stuck_ids[:3])}"
            f"{f' and {len(stuck_ids) - 3} more' if len(stuck_ids) > 3 else ''})"
            if stuck_ids
            else ""
        )
        reason = (
            f"loss {_fmt(loss)} at step {point.step} (started at {_fmt(self.start)}); {len(names)} healthy "
            f"{'sibling was' if len(names) == 1 else 'siblings were'} at {_span(at.loss[clear])} ({shown}){stayers}; "
            f"behind since step {self.streak_from}, {grads}."
        )
        # A plateau with live units and a finite loss is judged only past ``patience`` of the
        # sweep's budget (a late learner looks like it until it moves); unknown budget, no prune.
        budget = reference.budget
        waited = cause != "behind" or self.patience == 0 or point.step >= self.patience * budget
        if waited and cause == "behind" and self.patience > 0:
            reason = reason[:-1] + f"; {point.step / budget:.0%} of the siblings' {budget:.0f} steps run (a plateau waits for {self.patience:.0%})."
        prune = point.step - self.streak_from >= needed and waited
        return SiblingVerdict(point.step, at.run_ids, rank, z, True, prune, cause, reason, corroborated)

    def seen_and_recovered(self, event: Any, points: Sequence[SiblingPoint], reference: Reference) -> list[str]:
        """Healthy siblings that ended well and showed, at the event's step, every signal the
        event reports (empty: the event stands).

        - ``grad_explosion``, ``norm_rise`` (Adam's first-step jump): their norm had risen from
          its first level at least a ``NORM_BAND``-th as much as the run's;
        - ``grad_vanish``: their norm had fallen from its first level at least as far, within
          ``NORM_BAND``;
        - ``dead_units``: their active share was as low (within ``ACTIVE_GAP``);
        - ``stalled`` (a deep net before it learns): they were as far from progress.

        Any other signal (non-finite values above all) is never excused, and fewer than
        ``min_siblings`` siblings at the step excuse nothing.
        """
        types = set(event.anomaly_types)
        if not types or not types <= _EXCUSABLE or not points or len(reference) < self.min_siblings:
            return []
        at = reference.at(event.step)
        if len(at.run_ids) < self.min_siblings or not at.good.any():
            return []
        now = min(points, key=lambda p: abs(p.step - event.step))
        first = points[0]
        rise = now.norm / first.norm if first.norm > 0 and math.isfinite(now.norm) else math.nan
        firsts = np.array(reference.first_norms(at.run_ids))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = at.norm / firsts
        showed = at.good.copy()
        for kind in types:
            if kind in ("grad_explosion", "norm_rise"):
                showed &= ratio * NORM_BAND >= rise
            elif kind == "grad_vanish":
                showed &= ratio <= rise * NORM_BAND
            elif kind == "dead_units":
                showed &= at.active <= now.active + ACTIVE_GAP
            elif kind == "stalled" and self.start is not None:
                showed &= at.progress <= self.start - now.loss + 3 * level_noise(now.noise)
        return [rid for rid, s in zip(at.run_ids, showed.tolist(), strict=True) if s]

    def _dropped(self, since: int) -> float:
        """How far the run's level fell since step ``since`` (0 when unknown or risen)."""
        past = [level for step, level in self._levels if step <= since]
        if not past or not math.isfinite(past[-1]) or not math.isfinite(self._levels[-1][1]):
            return 0.0
        return past[-1] - self._levels[-1][1]

    def _cause(self, point: SiblingPoint, loss: float, silent: bool) -> str:
        assert self.start is not None
        if point.nonfinite or not math.isfinite(loss) or loss > self.start + 0.5 * abs(self.start) + 1e-12:
            return "diverged"
        if silent:
            return "dead"
        return "behind"


def _med(values: np.ndarray) -> float:
    """The median of a short array (cheaper than ``np.median`` on a few dozen values)."""
    ordered = np.sort(values, axis=None)
    n = len(ordered)
    return float(ordered[n // 2]) if n % 2 else 0.5 * float(ordered[n // 2 - 1] + ordered[n // 2])


def _span(values: np.ndarray) -> str:
    """``lo-hi`` of the values, or the one value."""
    lo, hi = _fmt(float(values.min())), _fmt(float(values.max()))
    return lo if lo == hi else f"{lo}-{hi}"


def _fmt(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else str(value)
