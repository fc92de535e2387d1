"""Gradient rules: explosion, vanishing and dead units, from the norm and health of each step.

Statistics live in log space, where norms are closer to Gaussian. Every rule reads the
*median* of the last ``window`` steps, never one step: a burst of up to ``window // 2``
corrupted batches in a row (a spike, a run of zero gradients) cannot move it, while a real
change moves it within ``window // 2 + 1`` steps.
"""

from __future__ import annotations

import math
from typing import Any

from ._common import TINY, Findings, median_sorted
from ._window import RollingWindow

__all__ = ["Ema", "GradientRules", "GradientStats", "judge_norm_spike", "silent"]

#: A norm excursion in the warm-up (``norm_spike``): the last ``NORM_SPIKE_STEPS`` norms each
#: ``NORM_SPIKE_FACTOR`` x the median of the norms before them in the window, and
#: ``NORM_SPIKE_Z`` times those norms' log noise above it (measured on ``NORM_SPIKE_CALM`` or
#: more). Healthy warm-ups of the detection benchmark's original and extended suites reach 5x at
#: most (3 norms in a row against the median before); an LR far too high, 30-10^6x.
NORM_SPIKE_STEPS = 3
NORM_SPIKE_FACTOR = 10.0
NORM_SPIKE_Z = 3.0
NORM_SPIKE_CALM = 4
_DIFF_TO_SD = 1.0 / (0.6745 * math.sqrt(2.0))  # median |x_t - x_{t-1}| -> sigma, Gaussian


class Ema:
    """Bias-corrected exponential mean and variance of a scalar stream (plain floats).

    ``mean`` and ``std`` are kept as attributes (read several times per step, written once).
    """

    __slots__ = ("decay", "m", "v", "w", "mean", "std")

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.m = 0.0  # uncorrected EMA of x
        self.v = 0.0  # uncorrected EMA of squared deviation
        self.w = 0.0  # 1 - decay**n: the bias correction
        self.mean = self.std = math.nan  # m / w and sqrt(v / w) (NaN before any value)

    def update(self, x: float) -> None:
        d = self.decay
        if self.w == 0.0:
            self.m, self.v = (1 - d) * x, 0.0
        else:
            delta = x - self.mean
            self.m = d * self.m + (1 - d) * x
            self.v = d * self.v + (1 - d) * delta * delta
        w = self.w = d * self.w + (1 - d)  # > 0 from the first value on
        self.mean = self.m / w
        self.std = math.sqrt(self.v / w)

    def state(self) -> list[float]:
        return [self.m, self.v, self.w]

    def load(self, s: Any) -> None:
        self.m, self.v, self.w = (float(x) for x in s)
        w = self.w
        self.mean = self.m / w if w else math.nan
        self.std = math.sqrt(self.v / w) if w else math.nan


class GradientStats:
    """Running statistics of the finite gradient observations.

    - ``slow``: EMA of the log norm, the baseline. Once warm it takes values winsorised to 3
      standard deviations above it, so a spike cannot drag it up.
    - ``norms``, ``active``: the last ``window`` log norms and active-tensor shares (medians read
      by the rules).
    - ``first``: the first log norm (the baseline while warming up); ``peak``: the highest
      median log norm once warm; ``base``/``sd``: the baseline and its spread *before* the
      latest step was folded in (what that step is judged against).
    """

    __slots__ = ("slow", "n", "first", "peak", "base", "sd", "norms", "active", "warmup_steps", "med", "full", "warm")

    def __init__(self, *, slow_decay: float, window: int, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps
        self.slow = Ema(slow_decay)
        self.n = 0
        self.first = math.nan
        self.peak = -math.inf
        self.base = math.nan
        self.sd = 1.0
        self.norms = RollingWindow(window, trend=True)
        self.active = RollingWindow(window)
        self.med = math.nan  # median log norm of the window, after the latest step
        self.full = False  # the window is full: the rules may judge
        self.warm = False  # past the warm-up (n > warmup_steps): the slow EMA is the baseline

    def observe(self, grad_norm: float, active_share: float) -> None:
        """Fold in one finite observation (``max``/``min`` inlined, with their NaN behaviour)."""
        x = math.log(grad_norm if grad_norm > TINY else TINY)
        n = self.n
        if n == 0:
            self.first = x
        slow = self.slow
        if n >= self.warmup_steps:
            base = slow.mean
            std = slow.std
            sd = 0.1 if 0.1 > std else std
            cap = base + 3.0 * sd
            x_slow = cap if cap < x else x  # min(x, cap): winsorised
        else:
            base, sd = self.first, 1.0
            x_slow = x
        self.base, self.sd = base, sd
        slow.update(x_slow)
        self.n = n = n + 1
        self.warm = warm = n > self.warmup_steps
        norms = self.norms
        self.med = med = norms.push(x)
        active = self.active
        shares = active.sorted
        # A full window whose every value is this share already (lowest = highest = it) stays
        # the same window after pushing it (one copy in, one out): most runs' share is a
        # constant 1.0, so most steps skip the push. (A zero is pushed: 0.0 == -0.0.)
        if len(shares) != active.size or shares[0] != active_share or shares[-1] != active_share or not active_share:
            active.push(active_share)
        self.full = full = len(norms.values) == norms.size
        if full and warm and med > self.peak:
            self.peak = med

    def state(self) -> dict[str, Any]:
        return {
            "slow": self.slow.state(),
            "n": self.n,
            "first": self.first,
            "peak": self.peak,
            "base": self.base,
            "sd": self.sd,
            "norms": self.norms.state(),
            "active": self.active.state(),
        }

    def load(self, s: dict[str, Any]) -> None:
        self.slow.load(s["slow"])
        self.n = int(s["n"])
        self.first, self.peak = float(s["first"]), float(s["peak"])
        self.base, self.sd = float(s["base"]), float(s["sd"])
        self.norms.load(s["norms"])
        self.active.load(s["active"])
        self.med = self.norms.median()
        self.full = self.norms.full
        self.warm = self.n > self.warmup_steps


def silent(st: GradientStats, *, dead_share: float) -> bool:
    """The gradients look dead: most tensors get no gradient at all (the median active share of
    the window is at most ``dead_share``). One tensor holding nearly all the norm is *not* a
    sign of death: the body of a deep tanh net with a small init gets 0.1% of the squared norm
    for 200 steps and more on the plateau before it learns."""
    return st.full and st.active.median() <= dead_share


class GradientRules:
    """The gradient rules' settings, fixed at construction (the hook judges every step: no
    keyword arguments to pass each time); ``judge`` scores them into a ``Findings``.

    * ``grad_explosion``: once warm, the median log norm is ``log_explode`` above the baseline
      *and* ``z_threshold`` standard deviations above it, or, while still growing (a
      significant Mann-Kendall trend over the window), twice ``log_explode`` above the first
      norm (an explosion that began in the warm-up has dragged the baseline along). A median
      over the window: a burst of corrupted batches is not an explosion; one that persists is.
      During the warm-up nothing is: the jump of Adam's first steps is judged by what follows
      (non-finite values, dead units, a loss that stays above its start); an excursion there
      escalates as ``norm_spike`` (``judge_norm_spike``), never prune-grade.
    * ``grad_vanish``: the median log norm has fallen ``log_vanish`` below its peak.
    * ``dead_units``: the median share of non-vanishing gradient tensors is at most
      ``dead_share``.
    """

    __slots__ = ("z_threshold", "log_explode", "log_vanish", "dead_share", "trend_z")

    def __init__(
        self, *, z_threshold: float, log_explode: float, log_vanish: float, dead_share: float, trend_z: float
    ) -> None:
        self.z_threshold = z_threshold
        self.log_explode = log_explode
        self.log_vanish = log_vanish
        self.dead_share = dead_share
        self.trend_z = trend_z

    def judge(self, st: GradientStats, found: Findings, learned: bool) -> None:
        """Score the rules on the latest statistics into ``found`` (``Findings.note`` inlined).

        ``learned``: the loss has made, and still holds, most of its progress. Then shrinking
        or silent gradients are convergence, not death: ``grad_vanish`` and ``dead_units`` stay
        off.
        """
        if not st.full:
            return
        med = st.med
        s = found.sensitivity
        warm = st.warm
        if warm:  # an early jump (Adam's first steps) is confirmed by what follows, not by itself
            log_explode = self.log_explode
            ratio = med - st.base
            z = ratio / st.sd
            by_z, by_ratio = z / self.z_threshold, ratio / log_explode
            score = by_ratio if by_ratio < by_z else by_z  # min(by_z, by_ratio)
            # One that began during the warm-up has dragged the baseline along: against the
            # first norm (squared ratio), as long as the norm is still growing.
            since_first = med - st.first
            growth = since_first / (2 * log_explode)
            if growth > score and st.norms.trend_z() >= self.trend_z:  # the trend only where it matters
                score = growth
            if score > found.top:
                found.top = score
            if score * s >= 1.0:
                found.fired["grad_explosion"] = (
                    score,
                    lambda: f"Gradient norm {math.exp(med):.4g} (median of the last {len(st.norms)} steps) is "
                    f"{math.exp(ratio):.3g}x its baseline, {math.exp(since_first):.3g}x the first ({z:.1f} sigma).",
                )
        if learned:
            return
        if warm and st.peak > -math.inf:
            drop = st.peak - med
            score = drop / self.log_vanish
            if score > found.top:
                found.top = score
            if score * s >= 1.0:
                found.fired["grad_vanish"] = (
                    score,
                    lambda: f"Gradient norm has fallen {math.exp(drop):.3g}x below its peak while the loss has not "
                    "improved.",
                )
        dead_share = self.dead_share
        if dead_share > 0:
            active = st.active.median()
            score = (1.0 - active) / (1.0 - dead_share)
            if score > found.top:
                found.top = score
            if score * s >= 1.0:
                found.fired["dead_units"] = (
                    score,
                    lambda: f"Only {active:.0%} of gradient tensors are non-zero (median of the last "
                    f"{len(st.active)} steps).",
                )


def judge_norm_spike(st: GradientStats, found: Findings) -> None:
    """``norm_spike``: during the warm-up (where ``grad_explosion`` waits for a baseline), the last
    ``NORM_SPIKE_STEPS`` gradient norms have each been ``NORM_SPIKE_FACTOR`` x the median of the
    norms before them in the window, beyond those norms' own noise (see the constants). It
    escalates at once (telemetry shows what caused a transient, with or without an observed
    loss) and is never evidence for a prune: what follows decides that."""
    if st.warm:
        return
    values = st.norms.values
    n = len(values)
    k = NORM_SPIKE_STEPS
    if n <= k:
        return
    run = [values[i] for i in range(n - k, n)]
    calm = [values[i] for i in range(n - k)]
    base = median_sorted(sorted(calm))
    rise = min(run) - base
    noise = 0.0
    if len(calm) >= NORM_SPIKE_CALM:
        noise = _DIFF_TO_SD * median_sorted(sorted(abs(b - a) for a, b in zip(calm, calm[1:])))
    bar = max(math.log(NORM_SPIKE_FACTOR), NORM_SPIKE_Z * noise)
    if rise < bar:
        return
    top = math.exp(max(run))
    found.note(
        "norm_spike",
        rise / bar,
        lambda: f"Gradient norm blew up: {k} steps in a row at least {math.exp(rise):.3g}x the median before "
        f"({math.exp(base):.4g}), up to {top:.4g}.",
    )
