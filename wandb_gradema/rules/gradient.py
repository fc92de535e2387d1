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

__all__ = ["Ema", "GradientStats", "judge_gradients", "judge_norm_spike"]

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
    """Bias-corrected exponential mean and variance of a scalar stream (plain floats)."""

    __slots__ = ("decay", "m", "v", "w")

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.m = 0.0  # uncorrected EMA of x
        self.v = 0.0  # uncorrected EMA of squared deviation
        self.w = 0.0  # 1 - decay**n: the bias correction

    def update(self, x: float) -> None:
        d = self.decay
        if self.w == 0.0:
            self.m, self.v = (1 - d) * x, 0.0
        else:
            delta = x - self.mean
            self.m = d * self.m + (1 - d) * x
            self.v = d * self.v + (1 - d) * delta * delta
        self.w = d * self.w + (1 - d)

    @property
    def mean(self) -> float:
        return self.m / self.w if self.w else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.v / self.w) if self.w else math.nan

    def state(self) -> list[float]:
        return [self.m, self.v, self.w]

    def load(self, s: Any) -> None:
        self.m, self.v, self.w = (float(x) for x in s)


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

    __slots__ = ("slow", "n", "first", "peak", "base", "sd", "norms", "active", "warmup_steps", "med", "full")

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

    @property
    def warm(self) -> bool:
        """Past the warm-up: the slow EMA is the baseline."""
        return self.n > self.warmup_steps

    def observe(self, grad_norm: float, active_share: float) -> None:
        """Fold in one finite observation."""
        x = math.log(max(grad_norm, TINY))
        if self.n == 0:
            self.first = x
        warm = self.n >= self.warmup_steps
        slow = self.slow
        self.base = slow.mean if warm else self.first
        self.sd = max(slow.std, 0.1) if warm else 1.0
        slow.update(min(x, self.base + 3.0 * self.sd) if warm else x)
        self.n += 1
        self.norms.push(x)
        self.active.push(active_share)
        self.med = self.norms.median()
        self.full = self.norms.full
        if self.full and self.n > self.warmup_steps:
            self.peak = max(self.peak, self.med)

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


def silent(st: GradientStats, *, dead_share: float) -> bool:
    """The gradients look dead: most tensors get no gradient at all (the median active share of
    the window is at most ``dead_share``). One tensor holding nearly all the norm is *not* a
    sign of death: the body of a deep tanh net with a small init gets 0.1% of the squared norm
    for 200 steps and more on the plateau before it learns."""
    return st.full and st.active.median() <= dead_share


def judge_gradients(
    st: GradientStats,
    found: Findings,
    *,
    z_threshold: float,
    log_explode: float,
    log_vanish: float,
    dead_share: float,
    learned: bool,
    trend_z: float,
) -> None:
    """Score the gradient rules on the latest statistics into ``found``.

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

    ``learned``: the loss has made, and still holds, most of its progress. Then shrinking or
    silent gradients are convergence, not death: ``grad_vanish`` and ``dead_units`` stay off.
    """
    if not st.full:
        return
    med = st.med
    if st.warm:  # an early jump (Adam's first steps) is confirmed by what follows, not by itself
        base, sd = st.base, st.sd
        ratio = med - base
        z = ratio / sd
        score = min(z / z_threshold, ratio / log_explode)
        # One that began during the warm-up has dragged the baseline along: against the first
        # norm (squared ratio), as long as the norm is still growing.
        since_first = med - st.first
        growth = since_first / (2 * log_explode)
        if growth > score and st.norms.trend_z() >= trend_z:  # the trend only where it matters
            score = growth
        found["grad_explosion"] = (
            score,
            lambda: f"Gradient norm {math.exp(med):.4g} (median of the last {len(st.norms)} steps) is "
            f"{math.exp(ratio):.3g}x its baseline, {math.exp(since_first):.3g}x the first ({z:.1f} sigma).",
        )
    if learned:
        return
    if st.warm and st.peak > -math.inf:
        drop = st.peak - med
        found["grad_vanish"] = (
            drop / log_vanish,
            lambda: f"Gradient norm has fallen {math.exp(drop):.3g}x below its peak while the loss has not "
            "improved.",
        )
    if dead_share > 0:
        active = st.active.median()
        found["dead_units"] = (
            (1.0 - active) / (1.0 - dead_share),
            lambda: f"Only {active:.0%} of gradient tensors are non-zero (median of the last {len(st.active)} steps).",
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
    found["norm_spike"] = (
        rise / bar,
        lambda: f"Gradient norm blew up: {k} steps in a row at least {math.exp(rise):.3g}x the median before "
        f"({math.exp(base):.4g}), up to {top:.4g}.",
    )
