"""AnomalyDetector: judges each optimizer step's gradient (and loss) statistics.

The detector is a pure function of the observations it has been fed and its frozen settings,
so it can be replayed over a recorded trace (the detection benchmark does exactly that) and
checkpointed as a handful of floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._validate import check_float, check_int, check_state_keys

__all__ = ["AnomalyDetector", "AnomalyReport", "Observation"]

_TINY = 1e-30


@dataclass(frozen=True, slots=True)
class Observation:
    """What the monitor saw on one optimizer step, as host floats.

    Attributes:
        step: optimizer step index (0-based).
        grad_norm: total L2 gradient norm before the update (NaN/Inf when a gradient was).
        health: gradient health score in [0, 1] (see ``wandb_gradema.health_score``).
        loss: mean training loss observed for this step, or None when none was given.
        lr: largest learning rate over the optimizer's param groups, or None.
        active_share: share of gradient tensors with a finite, non-vanishing norm.
        n_nonfinite: number of gradient tensors with a non-finite norm.
    """

    step: int
    grad_norm: float
    health: float = 1.0
    loss: float | None = None
    lr: float | None = None
    active_share: float = 1.0
    n_nonfinite: int = 0


@dataclass(frozen=True, slots=True)
class AnomalyReport:
    """The detector's verdict on one step.

    Attributes:
        step: the optimizer step judged.
        has_anomaly: True when any rule's score reached 1.
        anomaly_types: the rules that fired, e.g. ``("nonfinite",)``, ``("grad_explosion",)``.
        details: one sentence per fired rule saying what was seen.
        score: the largest rule score this step (>= 1 means anomalous); logged as a chart.
        critical: True when the anomaly must escalate at once (non-finite values).
    """

    step: int
    has_anomaly: bool
    anomaly_types: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)
    score: float = 0.0
    critical: bool = False

    @property
    def reason(self) -> str:
        """All fired rules' sentences joined, or an empty string."""
        return " ".join(self.details.values())


class _Ema:
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

    def load(self, s: list[float]) -> None:
        self.m, self.v, self.w = (float(x) for x in s)


class AnomalyDetector:
    """Decides whether a step's gradient statistics (and loss, when given) look like a failure.

    Each rule gives a score where >= 1 means anomalous; scores are multiplied by
    ``sensitivity`` and the report's ``score`` is the largest.

    From the gradients (statistics in log space, where norms are closer to Gaussian):

    * ``nonfinite``: a NaN/Inf gradient norm or loss. Critical: escalates at once.
    * ``grad_explosion``: the norm is ``explode_ratio`` x its slow EMA *and* ``z_threshold``
      standard deviations above it. The EMA takes values winsorised to 3 sigma, so a spike
      cannot drag the baseline up.
    * ``grad_vanish``: the fast EMA of the norm is ``vanish_ratio`` x below its peak.
    * ``dead_units``: at most ``dead_share`` of the gradient tensors are non-vanishing.

    From the loss (``GradientMonitor.observe_loss``; ``L0`` is the first loss, before any
    update; ``m`` the median of the last ``loss_window`` losses; ``best`` the lowest ``m``):

    * ``loss_explosion``: the loss is ``loss_explode_factor`` x ``L0``.
    * ``progress_lost``: once the run has learned (``best <= (1 - learned_progress) L0``), the
      share of its progress given back, ``(m - best) / (L0 - best)``, reaches
      ``relapse_threshold``: the typical LR divergence of ReLU nets ends in dead units at chance.
    * ``unstable_rise``: while the learning rate is still rising (warm-up, ramps), the upper
      quartile of the recent losses has given back ``rise_threshold`` of the progress: the LR
      has left the stable range. Healthy warm-ups keep improving and never trip it.
    * ``no_progress``: after ``stall_steps`` loss observations at a non-rising learning rate,
      ``best`` is still above ``(1 - min_progress) L0`` and improved by less than an eighth of
      that over the last half-window or more: dead or vanishing training, not a slow learner.
    * ``lr_jump``: the learning rate jumped ``lr_jump_ratio`` x above anything it was before
      (after ``warmup_steps``), a schedule bug; restarts back to an earlier peak do not count.

    Nothing but ``nonfinite``, ``loss_explosion``, ``dead_units`` and ``grad_explosion`` (vs the
    first norm) fires in the first ``warmup_steps`` observations.

    Non-finite gradients: reported (critical), never folded into any statistic.

    Args:
        sensitivity: multiplies every rule's score, > 0. 2.0 fires at half the evidence.
        warmup_steps: observations before the statistical rules may fire, >= 0.
        slow_decay: decay of the slow (baseline) EMA of the log norm, in (0, 1).
        fast_decay: decay of the fast EMA of the log norm, in [0, 1).
        z_threshold: standard deviations above baseline for ``grad_explosion``, > 0.
        explode_ratio: norm / baseline ratio for ``grad_explosion``, > 1.
        vanish_ratio: peak / current norm ratio for ``grad_vanish``, > 1.
        dead_share: active-tensor share at or below which ``dead_units`` fires, in [0, 1).
        loss_window: losses in the running median, >= 1.
        loss_explode_factor: loss / ``L0`` ratio for ``loss_explosion``, > 1.
        learned_progress: drop below ``L0`` that counts as having learned, in (0, 1).
        relapse_threshold: share of progress lost for ``progress_lost``, > 0.
        rise_threshold: share of progress lost (upper quartile) for ``unstable_rise``, > 0.
        stall_steps: steps at a non-rising LR before ``no_progress`` may fire, >= 1.
        min_progress: drop below ``L0`` required by then, in (0, 1).
        lr_jump_ratio: LR / previous maximum LR ratio for ``lr_jump``, > 1.
    """

    def __init__(
        self,
        *,
        sensitivity: float = 1.0,
        warmup_steps: int = 20,
        slow_decay: float = 0.98,
        fast_decay: float = 0.8,
        z_threshold: float = 5.0,
        explode_ratio: float = 8.0,
        vanish_ratio: float = 1e4,
        dead_share: float = 0.5,
        loss_window: int = 9,
        loss_explode_factor: float = 4.0,
        learned_progress: float = 0.3,
        relapse_threshold: float = 0.5,
        rise_threshold: float = 0.35,
        stall_steps: int = 60,
        min_progress: float = 0.1,
        lr_jump_ratio: float = 4.0,
    ) -> None:
        self.sensitivity = check_float("sensitivity", sensitivity, low=0.0, low_open=True)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.slow_decay = check_float("slow_decay", slow_decay, low=0.0, high=1.0, low_open=True, high_open=True)
        self.fast_decay = check_float("fast_decay", fast_decay, low=0.0, high=1.0, high_open=True)
        self.z_threshold = check_float("z_threshold", z_threshold, low=0.0, low_open=True)
        self.explode_ratio = check_float("explode_ratio", explode_ratio, low=1.0, low_open=True)
        self.vanish_ratio = check_float("vanish_ratio", vanish_ratio, low=1.0, low_open=True)
        self.dead_share = check_float("dead_share", dead_share, low=0.0, high=1.0, high_open=True)
        self.loss_window = check_int("loss_window", loss_window, minimum=1)
        self.loss_explode_factor = check_float("loss_explode_factor", loss_explode_factor, low=1.0, low_open=True)
        self.learned_progress = check_float("learned_progress", learned_progress, low=0.0, high=1.0, low_open=True, high_open=True)
        self.relapse_threshold = check_float("relapse_threshold", relapse_threshold, low=0.0, low_open=True)
        self.rise_threshold = check_float("rise_threshold", rise_threshold, low=0.0, low_open=True)
        self.stall_steps = check_int("stall_steps", stall_steps, minimum=1)
        self.min_progress = check_float("min_progress", min_progress, low=0.0, high=1.0, low_open=True, high_open=True)
        self.lr_jump_ratio = check_float("lr_jump_ratio", lr_jump_ratio, low=1.0, low_open=True)
        # Log-space thresholds, computed once (the hook judges every step).
        self._log_jump = math.log(self.lr_jump_ratio)
        self._log_explode = math.log(self.explode_ratio)
        self._log_vanish = math.log(self.vanish_ratio)
        self._log_loss_explode = math.log(self.loss_explode_factor)
        self.reset()

    # ------------------------------------------------------------------ state
    _RISE_LOOKBACK = 5  # steps over which a rising learning rate is judged

    def reset(self) -> None:
        """Forget every observation."""
        self._g_slow = _Ema(self.slow_decay)
        self._g_fast = _Ema(self.fast_decay)
        self._n = 0  # finite gradient observations
        self._g_first = math.nan  # log of the first finite norm
        self._peak = -math.inf  # highest slow log-norm seen after warm-up
        self._l0: float | None = None  # the first finite loss
        self._losses: list[float] = []  # the last ``loss_window`` finite losses
        self._n_loss = 0
        self._best = math.inf  # lowest running median
        self._lrs: list[float] = []  # the last few learning rates
        self._lr_max = -math.inf  # highest learning rate before the current step
        self._n_lr = 0
        self._stall_clock = 0  # loss observations at a non-rising learning rate
        self._marks: list[float] = []  # best loss at the last two half-window marks of the clock
        self._mark_at = max(1, self.stall_steps // 2)

    def state_dict(self) -> dict[str, Any]:
        """Every running statistic, as plain Python values."""
        return {
            "g_slow": self._g_slow.state(),
            "g_fast": self._g_fast.state(),
            "n": self._n,
            "g_first": self._g_first,
            "peak": self._peak,
            "l0": self._l0,
            "losses": list(self._losses),
            "n_loss": self._n_loss,
            "best": self._best,
            "lrs": list(self._lrs),
            "lr_max": self._lr_max,
            "n_lr": self._n_lr,
            "stall_clock": self._stall_clock,
            "marks": list(self._marks),
            "mark_at": self._mark_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        check_state_keys("AnomalyDetector", state, tuple(self.state_dict()))
        self._g_slow.load(state["g_slow"])
        self._g_fast.load(state["g_fast"])
        self._n = int(state["n"])
        self._g_first = float(state["g_first"])
        self._peak = float(state["peak"])
        self._l0 = None if state["l0"] is None else float(state["l0"])
        self._losses = [float(x) for x in state["losses"]]
        self._n_loss = int(state["n_loss"])
        self._best = float(state["best"])
        self._lrs = [float(x) for x in state["lrs"]]
        self._lr_max = float(state["lr_max"])
        self._n_lr = int(state["n_lr"])
        self._stall_clock = int(state["stall_clock"])
        self._marks = [float(x) for x in state["marks"]]
        self._mark_at = int(state["mark_at"])

    @property
    def initial_loss(self) -> float | None:
        """The first finite loss observed (the run's starting level), once known."""
        return self._l0

    # ------------------------------------------------------------------ checks
    def check_gradient_drift(
        self,
        grad_norm: float,
        grad_health: float = 1.0,
        *,
        loss: float | None = None,
        lr: float | None = None,
        step: int | None = None,
        active_share: float = 1.0,
    ) -> AnomalyReport:
        """Fold one step in and judge it; the original tracker's entry point, kept by name."""
        obs = Observation(
            step=self._n if step is None else step,
            grad_norm=float(grad_norm),
            health=float(grad_health),
            loss=None if loss is None else float(loss),
            lr=None if lr is None else float(lr),
            active_share=float(active_share),
        )
        return self.check(obs)

    def check(self, obs: Observation) -> AnomalyReport:
        """Fold one observation into the statistics and return the verdict on it."""
        # Each rule: (score, the sentence saying why). Sentences are built only for rules that
        # fire (formatting every rule's on every step would cost more than judging).
        found: dict[str, tuple[float, Callable[[], str]]] = {}
        critical = False
        rising = self._judge_lr(obs, found)

        g = obs.grad_norm
        if not math.isfinite(g):
            found["nonfinite"] = (math.inf, lambda: f"Non-finite gradient norm ({g}) at step {obs.step}.")
            critical = True
        else:
            self._judge_gradients(obs, found)

        loss = obs.loss
        if loss is not None:
            if not math.isfinite(loss):
                found["nonfinite"] = (math.inf, lambda: f"Non-finite loss ({loss}) at step {obs.step}.")
                critical = True
            else:
                self._judge_loss(loss, rising, found)

        s = self.sensitivity
        score = 0.0
        for v, _ in found.values():
            if v > score:
                score = v
        score *= s
        if score < 1.0:
            return AnomalyReport(step=obs.step, has_anomaly=False, score=score)
        details = {k: why() for k, (v, why) in found.items() if v * s >= 1.0}
        return AnomalyReport(
            step=obs.step,
            has_anomaly=True,
            anomaly_types=tuple(details),
            details=details,
            score=score,
            critical=critical or "lr_jump" in details,
        )

    def _judge_lr(self, obs: Observation, found: dict[str, tuple[float, Callable[[], str]]]) -> bool:
        """Track the schedule; report a jump; return whether the LR is still rising."""
        lr = obs.lr
        if lr is None or not math.isfinite(lr):
            self._stall_clock += 1  # no schedule to go by: every step counts
            return False
        if self._n_lr >= self.warmup_steps and self._lr_max > 0:
            ratio, before = lr / self._lr_max, self._lr_max
            found["lr_jump"] = (
                math.log(max(ratio, _TINY)) / self._log_jump,
                lambda: f"Learning rate jumped to {lr:.3g}, {ratio:.3g}x anything before ({before:.3g}).",
            )
        rising = bool(self._lrs) and lr > self._lrs[0] * (1 + 1e-9)
        self._lrs = (self._lrs + [lr])[-self._RISE_LOOKBACK :]
        self._lr_max = max(self._lr_max, lr)
        self._n_lr += 1
        if not (len(self._lrs) > 1 and lr > self._lrs[-2] * (1 + 1e-9)):
            self._stall_clock += 1
        return rising

    def _judge_gradients(self, obs: Observation, found: dict[str, tuple[float, Callable[[], str]]]) -> None:
        x = math.log(max(obs.grad_norm, _TINY))
        slow, fast = self._g_slow, self._g_fast
        warm = self._n >= self.warmup_steps
        if self._n == 0:
            self._g_first = x
        base = slow.mean if warm else self._g_first
        sd = max(slow.std, 0.1) if warm else 1.0
        z = (x - base) / sd
        ratio = x - base
        # In warm-up only the first norm is a baseline: demand the ratio squared.
        need = self._log_explode * (1.0 if warm else 2.0)
        found["grad_explosion"] = (
            min(z / self.z_threshold, ratio / need),
            lambda: f"Gradient norm {obs.grad_norm:.4g} is {math.exp(ratio):.3g}x its baseline ({z:.1f} sigma).",
        )
        slow.update(min(x, slow.mean + 3.0 * sd) if warm else x)  # winsorised: spikes don't drag it
        fast.update(x)
        self._n += 1
        if self._n > 5 and self.dead_share > 0:
            found["dead_units"] = (
                (1.0 - obs.active_share) / (1.0 - self.dead_share),
                lambda: f"Only {obs.active_share:.0%} of gradient tensors are non-zero.",
            )
        if warm:
            self._peak = max(self._peak, slow.mean)
            drop = self._peak - fast.mean
            found["grad_vanish"] = (
                drop / self._log_vanish,
                lambda: f"Gradient norm has fallen {math.exp(drop):.3g}x below its peak.",
            )

    def _judge_loss(self, loss: float, rising: bool, found: dict[str, tuple[float, Callable[[], str]]]) -> None:
        if self._l0 is None:
            self._l0 = loss
        l0 = self._l0
        self._n_loss += 1
        self._losses = (self._losses + [loss])[-self.loss_window :]

        if l0 <= 0:
            return  # relative rules need a positive starting level (cross-entropy, MSE...)
        found["loss_explosion"] = (
            math.log(max(loss / l0, _TINY)) / self._log_loss_explode,
            lambda: f"Loss {loss:.4g} is {loss / l0:.3g}x its initial level {l0:.4g}.",
        )
        if len(self._losses) < self.loss_window:
            return
        ordered = sorted(self._losses)
        median = _quantile(ordered, 0.5)
        self._best = min(self._best, median)
        best = self._best
        if self._stall_clock >= self._mark_at:  # every half-window of the stall clock
            self._marks = (self._marks + [best])[-2:]
            self._mark_at = self._stall_clock + max(1, self.stall_steps // 2)
        if self._n_loss < self.warmup_steps or best > (1 - self.learned_progress) * l0:
            # Slow but steady learners are not dead: the best loss must have stalled too, over
            # the last half-window or more.
            recent = (self._marks[0] - best) / l0 if len(self._marks) == 2 else math.inf
            if self._stall_clock >= self.stall_steps and recent < self.min_progress / 8:
                progress, clock = 1 - best / l0, self._stall_clock
                found["no_progress"] = (
                    (1 - progress) / (1 - self.min_progress),
                    lambda: f"No progress after {clock} steps: best loss {best:.4g} vs initial {l0:.4g}.",
                )
            return
        span = l0 - best
        lost = (median - best) / span
        found["progress_lost"] = (
            lost / self.relapse_threshold,
            lambda: f"Loss is back at {median:.4g}: {lost:.0%} of the progress from {l0:.4g} to {best:.4g} lost.",
        )
        if rising and median > best:  # a new best median means the run is still improving
            upper = (_quantile(ordered, 0.75) - best) / span
            found["unstable_rise"] = (
                upper / self.rise_threshold,
                lambda: f"Loss rising ({upper:.0%} of the progress lost in its upper quartile) while the "
                "learning rate is still increasing.",
            )


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolation quantile of an already sorted list (numpy's default)."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
