"""Loss rules: every change is judged against the loss's own batch-to-batch noise.

Statistics of the finite observed losses:

- the **level** ``m``: the median of the last ``window`` losses (a burst of up to
  ``window // 2`` corrupted batches cannot move it);
- the **noise** ``sigma``: 1.048 x the median absolute difference between consecutive losses
  over the last ``trend_window`` steps (the standard deviation for Gaussian noise; a smooth
  trend barely moves it, heavy tails do not inflate it); the level's standard error is
  ``se = 1.2533 sigma / sqrt(window)`` and a change of the level counts only beyond
  ``band = z x sqrt(2) x se``;
- the **start** ``ref``: the median of the first ``reference_steps`` losses or, when they
  trend significantly, the Theil-Sen line through their logs read at step 0 (the median of
  pairwise slopes: one lucky or corrupted batch cannot set it, a loss already falling or
  exploding fast is traced back to where it began), and, from scratch, never above the highest
  of the first ``DEPART_STEPS + 1`` losses (a loss starts at its highest: a start above them is
  a blow-up that followed, and a network that died at chance after it made no progress). A
  fine-tune's start is its pretrained level;
- the **best** level so far: the lowest level (a median of ``window`` losses; the rules
  compare the longer median of the last ``trend_window`` losses with it, beyond the slow
  noise's band), and the Mann-Kendall trend of the last ``trend_window`` losses
  (``trend_z`` < -threshold: still improving);
- a **departure** from the start at the very first step: a fresh optimizer with a far too
  high LR can wreck a pretrained model in one step, so every loss but the first is already
  the wrecked level (the Theil-Sen start then traces the recovery back to a high start).
  When the median of the next ``DEPART_STEPS`` losses is ``DEPART_LOSS`` x the first *and*
  the median of their gradient norms ``DEPART_NORM`` x the first one (two independent signs;
  a lucky first batch of 2 shows both at once in about 1% of runs, of 8 or more practically
  never), or milder rises (``DEPART_*_MILD``; the norm's may also stand ``DEPART_NORM_Z`` times
  the noise of the later log norms above the first) with every later loss of the reference
  window above the first and their median ``DEPART_Z`` times their own noise above it, the
  first loss is the start the explosion rules compare with;
- an **early explosion**: losses ``SPIKE_FACTOR`` x the level before them (the median of the
  calm losses so far; the start once known) on ``SPIKE_STEPS`` steps in a row, each
  ``SPIKE_Z`` times the log noise of the losses before it above it (one noisy batch, or the
  heavy-tailed batches of MSE over a handful of examples, is no explosion; while that noise is
  unmeasured, ``SPIKE_CLEAR`` x), or with the gradient norm ``SPIKE_NORM`` x up too. One confirmed while the start is being
  measured makes the level *before* it the start (``ref`` and ``start``): the blow-up never
  becomes the reference, so a network that died at chance after it has made no progress.
  After the warm-up, the level before is the start: a quiet step costs one comparison.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from ._common import MEDIAN_SE, Findings, median_sorted
from ._window import RollingWindow
from .gradient import Ema

__all__ = ["LossStats", "LossView", "judge_spike", "judge_stall", "rise_z", "theil_sen_start"]

#: Losses in the fast median, read only in the window after an LR jump.
FAST_WINDOW = 5
#: Decay of the slow EMA of the noise (about 50 steps of memory).
SLOW_NOISE_DECAY = 0.98
#: Standard errors the longer median must be above the start for ``above_start`` (which also
#: needs it to last a whole trend window: persistence, not one extreme median, is the evidence).
ABOVE_Z = 3.0
#: ``unstable_rise`` needs the level this share of ``best_band`` above its best.
RISE_LEVEL = 0.25
#: A departure at the first step: the next losses / the first, their gradient norms / the first.
DEPART_STEPS = 3
DEPART_LOSS = 8.0
DEPART_NORM = 8.0
#: ... or, when every one of the first ``reference_steps - 1`` losses is above the first, these
#: (the norm: ``DEPART_NORM_MILD`` x, or ``DEPART_NORM_Z`` times the noise of the later log norms,
#: 1.048 x their median absolute difference; Adam's normalisation brings a kicked model's norm
#: back within tens of steps, while its loss stays up), with the later losses' median also
#: ``DEPART_Z`` times their own log noise above the first: a lucky easy batch of a well-trained
#: model has a low loss *and* a low norm, so the norm is no second sign for it, and only a rise
#: that stands out from the batch-to-batch spread is a departure.
DEPART_LOSS_MILD = 2.0
DEPART_NORM_MILD = 4.0
DEPART_NORM_Z = 3.0
DEPART_Z = 4.0

#: An early explosion (``loss_spike``; see the module docstring and ``LossStats._spike_z``):
#: losses this many times the level before them, on this many steps in a row, this many times
#: the log noise of the losses before them above it (or with a second sign). Capped: the run
#: of high losses kept.
SPIKE_FACTOR = 5.0
SPIKE_STEPS = 3
SPIKE_Z = 3.0
SPIKE_KEEP = 32
#: The losses before a run that measure their noise (3 differences); with fewer (a blow-up at
#: the first steps), each of the last ``SPIKE_STEPS`` losses this many times the level before
#: is a blow-up with no other sign (MSE 15 -> 7,000 -> 200 -> 900).
SPIKE_CALM = 4
SPIKE_CLEAR = 10.0
#: ... or, whatever the noise, with the median gradient norm over the run this many times the
#: median before it (a second sign).
SPIKE_NORM = 4.0

#: ``progress_lost`` alone counts towards the prune bar only once the relapse has held at the
#: start for this many trend windows (see ``relapse_held``).
RELAPSE_WINDOWS = 2

#: ``above_start``: a level above the start that would be back within this many times the run's
#: age, at its pace over the last trend window, is recovering (see ``recovering``).
RECOVERY_HORIZON = 2.0

_DIFF_TO_SD = 1.0 / (0.6745 * math.sqrt(2.0))  # median |x_t - x_{t-1}| -> sigma, Gaussian


def theil_sen_start(values: list[float], trend_z: float = 2.0) -> float:
    """Where a run's loss started, from its first ``values``.

    With a significant trend (Mann-Kendall z beyond ``trend_z``), the Theil-Sen line through
    ``(i, log values[i])`` read at ``i = 0`` (losses rise and fall by factors): the median of
    ``log values[i] - slope * i``, with ``slope`` the median of the pairwise slopes, kept
    within the values' range. Without one, the median: extrapolating a slope that is noise
    would only add noise. Linear when a value is not positive.
    """
    n = len(values)
    positive = min(values) > 0
    ys = [math.log(v) for v in values] if positive else list(values)
    slopes = sorted((ys[j] - ys[i]) / (j - i) for i in range(n) for j in range(i + 1, n))
    mk = sum((d > 0) - (d < 0) for d in slopes)  # Mann-Kendall S
    significant = n >= 4 and abs(mk) - 1 >= trend_z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
    slope = median_sorted(slopes) if slopes and significant else 0.0
    start = median_sorted(sorted(y - slope * i for i, y in enumerate(ys)))
    if positive:
        start = math.exp(start)
    return min(max(start, min(values)), max(values))


def rise_z(head: float, later: list[float], n_first: int | None = None) -> float:
    """How far the median of ``later`` (logs; of its first ``n_first`` only, when given) is above
    ``head``, in units of the noise of ``later`` (1.048 x the median absolute difference between
    consecutive values); inf without noise."""
    if len(later) < 3:
        return 0.0
    rise = median_sorted(sorted(later[:n_first])) - head
    sigma = _DIFF_TO_SD * median_sorted(sorted(abs(b - a) for a, b in zip(later, later[1:])))
    return rise / sigma if sigma > 0 else (math.inf if rise > 0 else 0.0)


def _noise(logs: list[float]) -> float:
    """The noise of a series of logs: 1.048 x the median absolute difference between consecutive
    ones; 0 until there are two differences (one says nothing about the spread)."""
    diffs = sorted(abs(b - a) for a, b in zip(logs, logs[1:]))
    return _DIFF_TO_SD * median_sorted(diffs) if len(diffs) >= 2 else 0.0


def _departed(first: list[float], norm_rise: float, norm_z: float) -> bool:
    """Did the run leave its start at the first step (see the module docstring)?"""
    head = first[0]
    if head <= 0:
        return False
    early = median_sorted(sorted(first[1 : DEPART_STEPS + 1]))
    if early >= DEPART_LOSS * head and norm_rise >= math.log(DEPART_NORM):
        return True
    # milder, but every later loss is above the first one, beyond the batch-to-batch noise
    norm_up = norm_rise >= math.log(DEPART_NORM_MILD) or norm_z >= DEPART_NORM_Z
    if not (head < min(first[1:]) and early >= DEPART_LOSS_MILD * head and norm_up):
        return False
    return rise_z(math.log(head), [math.log(x) for x in first[1:]]) >= DEPART_Z


def _var_of_median(n: int) -> float:
    """Variance of the median of ``n`` values in units of their variance (one value: itself)."""
    return 1.0 if n == 1 else MEDIAN_SE * MEDIAN_SE / n


class LossStats:
    """Running statistics of the finite losses (see the module docstring)."""

    __slots__ = (
        "reference_steps", "above_factor", "trend_z", "n", "first", "ref", "start", "departed", "prev", "short", "long",
        "diffs", "log_diffs", "best", "best_upper", "best_noise", "slow_sigma", "above_run", "history", "norm_rise",
        "level", "level_long", "sigma", "_log_sigma", "_log_sigma_n", "calm", "calm_norms", "spike_run", "run_norms", "spike_base", "spike_z", "exploded", "exploded_at",
    )  # fmt: skip

    def __init__(
        self, *, window: int, trend_window: int, reference_steps: int, above_factor: float, trend_z: float = 2.5
    ) -> None:
        self.reference_steps = reference_steps
        self.trend_z = trend_z
        self.above_factor = above_factor
        self.above_run = 0  # steps in a row with the longer median above_factor x the start
        self.n = 0
        self.first: list[float] = []
        self.ref: float | None = None  # the robust start (Theil-Sen)
        self.start = math.nan  # what the explosion rules compare with: ref, or a departed first loss
        self.departed = False
        self.norm_rise = 0.0  # log norm rise over the first steps (for the departure test)
        # the longer medians of the last RELAPSE_WINDOWS trend windows
        self.history: deque[float] = deque(maxlen=RELAPSE_WINDOWS * trend_window + 1)
        self.prev = math.nan
        self.short = RollingWindow(window)
        self.long = RollingWindow(trend_window, trend=True)
        self.diffs = RollingWindow(trend_window)
        # |log x_t - log x_{t-1}|, for ratios: kept every step, sorted only when read (``log_band``:
        # for a level at least the start), at most once per step
        self.log_diffs: deque[float] = deque(maxlen=trend_window)
        self._log_sigma, self._log_sigma_n = math.inf, -1  # their noise, as of ``n`` observations
        self.best = math.inf
        self.best_upper = math.inf  # the upper quartile of the window where the best level was
        self.best_noise = math.inf  # the slow noise when the best level was reached
        self.slow_sigma = Ema(SLOW_NOISE_DECAY)  # the noise, slowly: what "no change" looks like
        # After the latest step: the level, the longer level, the noise (a standard deviation).
        self.level = self.level_long = self.sigma = math.nan
        # Early explosions (``loss_spike``): the losses before any excursion while the start is
        # measured, the current run of losses SPIKE_FACTOR x above the level before them, that
        # level, the run's rise in its own noise, and the step an explosion was confirmed at.
        self.calm: list[float] = []
        self.calm_norms: list[float] = []  # the finite log gradient norms of those steps
        self.spike_run: list[float] = []
        self.run_norms: list[float] = []
        self.spike_base = math.nan
        self.spike_z = 0.0
        self.exploded = False  # confirmed while the start was measured: the start is the level before
        self.exploded_at = -1

    def observe(
        self, loss: float, norm_rise: float = 0.0, norm_z: float = 0.0, early: bool = True, log_norm: float = math.nan
    ) -> None:
        """Fold in one finite loss; ``norm_rise``: log of the median gradient norm of steps 1 to
        ``DEPART_STEPS`` over the first one (read once, at that step); ``norm_z``: the rise of
        the later log norms over the first one in their own noise (``rise_z``), read once, with
        the loss that completes the reference; ``early``: still in the warm-up, where early
        explosions are followed (``loss_spike``), with ``log_norm``, this step's log gradient
        norm (the second sign of a milder one)."""
        if early or self.ref is None or self.spike_run or loss >= SPIKE_FACTOR * self.start:
            # after the warm-up only a loss SPIKE_FACTOR x the start (or a run of them) is
            # followed: a quiet step costs one comparison
            self._track_spike(loss, log_norm)
        if self.ref is None:
            self.first.append(loss)
            if len(self.first) == DEPART_STEPS + 1:
                self.norm_rise = norm_rise
            if len(self.first) >= self.reference_steps:
                self.ref = theil_sen_start(self.first, self.trend_z)
                self.departed = _departed(self.first, self.norm_rise, norm_z)
                if not self.departed:  # from scratch, a loss starts at its highest: a start above
                    # every one of the first losses is a blow-up that followed them
                    self.ref = min(self.ref, max(self.first[: DEPART_STEPS + 1]))
                self.start = self.first[0] if self.departed else self.ref
                if self.exploded:  # the level before the blow-up, never the blow-up itself
                    self.ref = self.start = self.spike_base
        prev = self.prev
        if self.n:
            sigma = self.sigma = _DIFF_TO_SD * self.diffs.push(abs(loss - prev))
            if loss > 0 and prev > 0:
                self.log_diffs.append(abs(math.log(loss / prev)))
            self.slow_sigma.update(sigma)
        self.prev = loss
        self.n += 1
        short = self.short
        median = self.level = short.push(loss)
        level = self.level_long = self.long.push(loss)
        self.history.append(level)  # from the first step: a fixed-size window once warm
        if self.ref is not None and len(short.values) == short.size:
            if median < self.best:
                self.best, self.best_upper = median, short.quantile(0.75)
                self.best_noise = self.slow_sigma.mean if self.n > 1 else math.inf
            # in log space (a ratio to the start; an exploding loss's noise explodes with it),
            # against the start's own uncertainty too: a median of ``reference_steps`` batches
            # (a departed start is one batch of a settled pretrained model: trusted as it is)
            above = level >= self.above_factor * self.start and self.log_ratio(level) > self.log_band(
                ABOVE_Z, len(self.long.values), 10**9 if self.departed else self.reference_steps
            )
            if above:
                self.above_run += 1
            elif self.above_run:
                self.above_run = 0

    def _track_spike(self, loss: float, log_norm: float) -> None:
        """Follow runs of losses ``SPIKE_FACTOR`` x the level before them (``loss_spike``)."""
        measuring = self.ref is None
        if measuring and self.exploded:  # the level before the blow-up, whatever follows it
            base = self.spike_base
        else:
            base = (median_sorted(sorted(self.calm)) if self.calm else math.nan) if measuring else self.start
        run, norms = self.spike_run, self.run_norms
        if base > 0 and loss >= SPIKE_FACTOR * base:
            if not run:
                self.spike_base = base
            run.append(loss)
            if not math.isnan(log_norm):
                norms.append(log_norm)
            if len(run) > SPIKE_KEEP:
                del run[0]
            if len(norms) > SPIKE_KEEP:
                del norms[0]
            self.spike_z = self._spike_z() if len(run) >= SPIKE_STEPS else 0.0
            if self.spike_z >= SPIKE_Z and measuring and not self.exploded:
                self.exploded, self.exploded_at = True, self.n - len(run) + 1
            return
        if measuring and run and not self.exploded:
            self.calm.extend(run)  # a few high batches that never stood out from their noise
            self.calm_norms.extend(norms)
        run.clear()
        norms.clear()
        self.spike_z = 0.0
        if measuring:
            self.calm.append(loss)
            if not math.isnan(log_norm):
                self.calm_norms.append(log_norm)

    def _spike_z(self) -> float:
        """The current run's rise over the level before it, in noise units (``SPIKE_Z`` or more:
        an explosion): every one of the last ``SPIKE_STEPS`` losses is ``SPIKE_FACTOR`` x the
        level before, and either each stands ``SPIKE_Z`` times the log noise of the losses
        before above it (once measured on ``SPIKE_CALM`` of them; until then, ``SPIKE_CLEAR`` x),
        or the median gradient norm over the run rose ``SPIKE_NORM`` x with it (two signs: a
        lucky low first batch followed by ordinary ones shows the loss rise alone). The run's
        own spread is no measure of noise: a blow-up decays by orders of magnitude over its
        first steps (5,000 -> 230 -> 22)."""
        run, head = self.spike_run, math.log(self.spike_base)
        rise = math.log(min(run[-SPIKE_STEPS:])) - head
        if rise < math.log(SPIKE_FACTOR):
            return 0.0
        calm = [math.log(x) for x in (self.calm if self.ref is None else self.first) if x > 0]
        if rise >= (SPIKE_Z * _noise(calm) if len(calm) >= SPIKE_CALM else math.log(SPIKE_CLEAR)):
            return SPIKE_Z
        before, after = sorted(self.calm_norms), sorted(self.run_norms)
        if before and after and median_sorted(after) - median_sorted(before) >= math.log(SPIKE_NORM):
            return SPIKE_Z
        return 0.0

    @property
    def spiking(self) -> bool:
        """The latest losses are an explosion: ``SPIKE_STEPS`` or more in a row ``SPIKE_FACTOR`` x
        the level before them, beyond their own noise."""
        return self.spike_z >= SPIKE_Z

    def fast_level(self) -> float:
        """The median of the last ``FAST_WINDOW`` losses (read only after an LR jump)."""
        values = self.short.values
        return median_sorted(sorted(values[i] for i in range(max(0, len(values) - FAST_WINDOW), len(values))))

    def log_ratio(self, level: float) -> float:
        """log(level / start), or -inf where undefined."""
        return math.log(level / self.start) if level > 0 and self.start > 0 else -math.inf

    def log_band(self, z: float, n: int, n_other: int) -> float:
        """``band`` for log levels: the noise of the log losses (1.048 x median |d log x|)."""
        if self._log_sigma_n != self.n:  # their median: the same value a sorted window keeps
            diffs = self.log_diffs
            self._log_sigma = _DIFF_TO_SD * median_sorted(sorted(diffs)) if diffs else math.inf
            self._log_sigma_n = self.n
        sigma = self._log_sigma
        return z * sigma * math.sqrt(_var_of_median(n) + _var_of_median(n_other))

    def band(self, z: float, sigma: float | None = None, n: int | None = None, n_other: int | None = None) -> float:
        """The smallest difference between a median of ``n`` losses (the level's window by
        default) and one of ``n_other`` (as many by default) that is significant at ``z``
        standard errors (of the current noise, or of ``sigma``)."""
        n = len(self.short) if n is None else n
        n_other = n if n_other is None else n_other
        return z * MEDIAN_SE * (self.sigma if sigma is None else sigma) * math.sqrt(1 / n + 1 / n_other)

    def state(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "first": list(self.first),
            "ref": self.ref,
            "start": self.start,
            "departed": self.departed,
            "norm_rise": self.norm_rise,
            "prev": self.prev,
            "short": self.short.state(),
            "long": self.long.state(),
            "diffs": self.diffs.state(),
            "log_diffs": list(self.log_diffs),
            "best": self.best,
            "best_upper": self.best_upper,
            "best_noise": self.best_noise,
            "slow_sigma": self.slow_sigma.state(),
            "above_run": self.above_run,
            "history": list(self.history),
            "calm": list(self.calm),
            "calm_norms": list(self.calm_norms),
            "spike_run": list(self.spike_run),
            "run_norms": list(self.run_norms),
            "spike_base": self.spike_base,
            "spike_z": self.spike_z,
            "exploded": self.exploded,
            "exploded_at": self.exploded_at,
        }

    def load(self, s: dict[str, Any]) -> None:
        self.n = int(s["n"])
        self.first = [float(x) for x in s["first"]]
        self.ref = None if s["ref"] is None else float(s["ref"])
        self.start = float(s["start"])
        self.prev, self.best, self.best_upper = float(s["prev"]), float(s["best"]), float(s["best_upper"])
        self.best_noise = float(s["best_noise"])
        self.slow_sigma.load(s["slow_sigma"])
        self.above_run = int(s["above_run"])
        self.departed = bool(s["departed"])
        self.norm_rise = float(s["norm_rise"])
        self.history = deque((float(x) for x in s["history"]), maxlen=self.history.maxlen)
        self.calm = [float(x) for x in s["calm"]]
        self.spike_run = [float(x) for x in s["spike_run"]]
        self.calm_norms = [float(x) for x in s["calm_norms"]]
        self.run_norms = [float(x) for x in s["run_norms"]]
        self.spike_base, self.spike_z = float(s["spike_base"]), float(s["spike_z"])
        self.exploded, self.exploded_at = bool(s["exploded"]), int(s["exploded_at"])
        self.short.load(s["short"])
        self.long.load(s["long"])
        self.diffs.load(s["diffs"])
        self.log_diffs = deque((float(x) for x in s["log_diffs"]), maxlen=self.log_diffs.maxlen)
        self._log_sigma_n = -1
        self.level, self.level_long = self.short.median(), self.long.median()
        self.sigma = _DIFF_TO_SD * self.diffs.median() if len(self.diffs) else math.nan


class LossView:
    """The loss rules' settings (fixed) and the derived quantities every rule reads, refreshed
    in place once per step by ``update``: the detector keeps one, so judging a step allocates
    nothing, and the constant factor of the bands is computed once."""

    __slots__ = (
        "z", "trend_z", "log_explode", "log_above", "relapse_threshold", "rise_threshold", "keep", "_n_short", "_unit",
        "m", "m_long", "ref", "start", "best", "band", "best_band", "progress", "learned", "holds",
    )  # fmt: skip

    def __init__(
        self,
        *,
        z: float,
        learned_progress: float,
        trend_z: float,
        log_explode: float,
        log_above: float,
        relapse_threshold: float,
        rise_threshold: float,
    ) -> None:
        self.z = z  # standard errors a change of the level must exceed
        self.trend_z = trend_z
        self.log_explode = log_explode
        self.log_above = log_above
        self.relapse_threshold = relapse_threshold
        self.rise_threshold = rise_threshold
        self.keep = 1 - learned_progress  # the best level at most this x the start: learned
        self._n_short = 0  # the level's window size ``_unit`` was computed for
        self._unit = math.nan
        self.m = self.m_long = self.ref = self.start = self.best = math.nan
        self.band = self.best_band = self.progress = math.nan
        self.learned = self.holds = False

    def update(self, st: LossStats) -> bool:
        """Refresh from ``st``; False while the rules cannot judge yet (then nothing is read)."""
        ref, start, short, best = st.ref, st.start, st.short, st.best
        if ref is None or ref <= 0 or start <= 0 or len(short.values) != short.size or not math.isfinite(best):
            return False  # relative rules need a positive starting level (cross-entropy, MSE...)
        self.m = m = st.level
        self.m_long = st.level_long
        self.ref, self.start, self.best = ref, start, best
        n_short = short.size  # the window is full
        if n_short != self._n_short:
            self._n_short, self._unit = n_short, self.z * MEDIAN_SE * math.sqrt(2 / n_short)
        unit = self._unit
        self.band = unit * st.sigma  # against the current noise
        # Against the slow noise: the noise of a diverging loss grows with it within a few
        # steps and must not hide the rise.
        slow = st.slow_sigma.mean
        self.best_band = unit * slow
        self.progress = progress = ref - best  # how far below its start the level has been
        # Learning is judged against the noise when the best level was reached: a loss whose
        # swings grow as it diverges must not make the progress it had made look like noise.
        best_noise = st.best_noise
        learned_band = unit * (best_noise if best_noise < slow else slow)  # min(slow, best_noise)
        self.learned = learned = best <= self.keep * ref and progress > learned_band
        # ... and still holds most of it (shrinking gradients are convergence)
        self.holds = learned and m - best < 0.5 * progress
        return True

    def long_band(self, st: LossStats) -> float:
        """The band of the longer median (against the current noise)."""
        return self.z * MEDIAN_SE * math.sqrt(2 / len(st.long.values)) * st.sigma

    def lost(self, level: float, band: float, best: float | None = None) -> float:
        """Share of the progress given back by ``level`` since ``best`` (the best level by
        default); 0 until the rise beats ``band``."""
        rise = level - (self.best if best is None else best)
        return rise / self.progress if self.progress > 0 and rise > band else 0.0

    def judge(self, st: LossStats, found: Findings, new_high: bool, warm: bool) -> bool:
        """Score the loss rules into ``found``; True when ``progress_lost`` fired on a relapse
        that has not held (see ``relapse_held``): alone, it is a swing until it does.

        * ``loss_explosion`` / ``above_start``: the level is ``exp(log_explode)`` /
          ``exp(log_above)`` x the start, significantly, and not falling (a transient that
          training is already recovering from is not one). Ratios are judged in log space,
          against the noise of the log losses (an exploding loss's noise explodes with it).
          ``loss_explosion`` waits for the warm-up (an early transient is confirmed by what
          follows) and, after a departure at the first step, needs the loss still rising (a
          fresh optimizer's kick to a pretrained model recovers over tens of steps).
          ``above_start`` compares the longer median, needs it significantly above for a whole
          trend window and not on its way back (``recovering``: at its pace over the last
          window, back at the start within ``RECOVERY_HORIZON`` x the run's age);
          ``exp(log_above)`` is only a floor. For a fine-tune this is forgetting, however mild.
        * ``progress_lost``: a run that has learned (``learned_progress`` of its start, beyond
          noise) has given back ``relapse_threshold`` of it, significantly, and its trend is
          not still improving.
        * ``unstable_rise``: while the LR climbs to new heights, the level is significantly
          above its best and the upper quartile of the recent losses has given back
          ``rise_threshold`` of the progress (against the upper quartile where the level was
          best): the LR has left the stable range; growing oscillations show in the upper
          quartile first (healthy warm-ups keep improving).

        Each rule reads only what it needs, in the order cheapest first: a rule whose gate fails
        is not scored at all (the conditions are pure, so their order decides nothing), and the
        Mann-Kendall trend is read only by a rule about to fire.
        """
        m, start = self.m, self.start
        trend_z = self.trend_z
        # loss_explosion: log(m / start) must beat a band that is never negative (z x a median
        # of absolute log differences x a square root), so m <= start (m / start <= 1, a log
        # <= 0) cannot fire: nothing more is read then.
        if warm and m > start:
            ratio = math.log(m / start)  # ``st.log_ratio(m)``: m > start > 0
            if ratio > st.log_band(self.z, len(st.short.values), st.reference_steps):
                trend = st.long.trend_z()
                # after a departure at the first step, only while still rising (a kicked model
                # recovers); otherwise while not significantly improving
                if trend >= trend_z if st.departed else not trend <= -trend_z:
                    found.note(
                        "loss_explosion",
                        ratio / self.log_explode,
                        lambda: f"Loss is at {m:.4g} (median of the last {len(st.short)}), {m / start:.3g}x where it "
                        f"started ({start:.4g}).",
                    )
        m_long = self.m_long
        window = st.long.size
        # ... and the recent level is up there too: the longer median lags a run that is back
        # below its start (a blow-up of tens of steps that training has come out of)
        if (
            st.above_run >= window
            and m >= start
            and len(st.history) > window
            and not recovering(m_long, start, st.history[-window - 1], window, st.n)
        ):
            found.note(
                "above_start",
                math.log(m_long / start) / self.log_above,
                lambda: f"Loss is back above where it started and not recovering: {m_long:.4g} (median of the last "
                f"{len(st.long)}) vs {start:.4g} at the start ({m_long / start:.3g}x; forgetting, for a fine-tune).",
            )
        if not self.learned:
            return False
        swing = False
        best, ref, best_band, progress = self.best, self.ref, self.best_band, self.progress
        rise = m_long - best  # ``lost(m_long, best_band)``, inlined
        lost = rise / progress if progress > 0 and rise > best_band else 0.0
        if lost > 0 and not st.long.trend_z() <= -trend_z:  # not still improving
            found.note(
                "progress_lost",
                lost / self.relapse_threshold,
                lambda: f"Loss is back at {m_long:.4g} (median of the last {len(st.long)}): {lost:.0%} of the "
                f"progress from {ref:.4g} to {best:.4g} lost (beyond its noise, {best_band:.2g}).",
            )
            swing = not relapse_held(st, self, self.relapse_threshold)
        if new_high and m - best > RISE_LEVEL * best_band:  # the level itself has left its best while the LR climbs
            upper = st.short.quantile(0.75)  # against the upper quartile where the level was best
            lost_upper = self.lost(upper, best_band, st.best_upper)
            if lost_upper > 0:
                found.note(
                    "unstable_rise",
                    lost_upper / self.rise_threshold,
                    lambda: f"Loss rising ({lost_upper:.0%} of the progress lost in its upper quartile) while the "
                    "learning rate climbs to new heights.",
                )
        return swing


def recovering(level: float, start: float, earlier: float, window: int, elapsed: int) -> bool:
    """A level above ``start`` is on its way back: at the pace (in log space) it fell from
    ``earlier``, ``window`` steps ago, it would be back at the start within ``RECOVERY_HORIZON``
    x as long as the run has lasted so far (``elapsed`` steps). A fine-tune kicked by a fresh optimizer recovers within
    tens of steps; a forgetting one settles, and its way back grows far longer than its past."""
    if not (level > 0 and start > 0 and earlier > level):
        return False
    return math.log(level / start) / math.log(earlier / level) * window < RECOVERY_HORIZON * elapsed


def judge_spike(st: LossStats, found: Findings) -> None:
    """``loss_spike``: the latest losses are an explosion (``LossStats.spiking``): during the
    warm-up, where the level-based rules wait, a blow-up escalates on its own (telemetry is how
    users find the cause of a transient); after it, 3 losses in a row ``SPIKE_FACTOR`` x where the
    run started do too (the level rules wait out bursts of up to 6 bad batches, but batches 5x
    worse than an untrained network are worth a warning even when training absorbs them); it is
    never evidence for a prune by itself."""
    if not st.spiking:
        return
    run, base = st.spike_run, st.spike_base
    top = max(run)
    n = len(run)
    what = "the level before" if st.ref is None else "where the run started"
    found.note(
        "loss_spike",
        max(1.0, math.log(median_sorted(sorted(run)) / base) / math.log(SPIKE_FACTOR)),
        lambda: f"Loss blew up: {n} steps in a row at least {SPIKE_FACTOR:g}x {what} ({base:.4g}), up to {top:.4g}.",
    )


def relapse_held(st: LossStats, v: LossView, relapse_threshold: float) -> bool:
    """The relapse has held: for ``RELAPSE_WINDOWS`` trend windows even the lowest longer median
    has given back ``relapse_threshold`` of the progress and stood back at the start (less than
    ``ABOVE_Z`` standard errors below it), and the longer median is not significantly below
    where it was a window ago (on its way back). A loss that swings (SGD with high momentum)
    can give back nearly all of its progress for tens of steps, then return; a diverged one
    stays at its start."""
    history = st.history
    if len(history) <= RELAPSE_WINDOWS * st.long.size:
        return False
    earlier = history[-len(st.long) - 1]
    if earlier - v.m_long > v.long_band(st):
        return False  # on its way back
    floor = v.ref - ABOVE_Z * MEDIAN_SE * st.sigma * math.sqrt(1 / len(st.long) + 1 / st.reference_steps)
    if min(history[0], earlier) < floor:  # O(1): a swing fails here, before the scan below
        return False
    low = min(history)  # O(window), only while progress_lost fires on a level back at the start
    return low >= floor and v.lost(low, v.best_band) >= relapse_threshold


def judge_stall(
    st: LossStats,
    v: LossView,
    found: Findings,
    *,
    clock: int,
    stall_steps: int,
    min_progress: float,
    trend_z: float,
    dead_gradients: bool,
) -> None:
    """``stalled``: after ``stall_steps`` steps at a non-rising LR the level is still at its start
    (within noise and ``min_progress``), with no significant downward trend, *and* the
    gradients look dead (most tensors get no gradient at all). A plateau whose gradients are
    alive, even when one tensor (a deep net's head) holds nearly all of the norm, is a slow or
    late learner, never a stall."""
    if not dead_gradients or st.long.trend_z() <= -trend_z:
        return
    m, ref = v.m, v.ref
    if ref - m >= max(v.band, min_progress * ref):
        return
    found.note(
        "stalled",
        clock / stall_steps,
        lambda: f"Stalled: after {clock} steps the loss ({m:.4g}, {ref:.4g} at the start) has made no progress "
        "beyond its noise and most gradient tensors get no gradient.",
    )
