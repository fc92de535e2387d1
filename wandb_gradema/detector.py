"""AnomalyDetector: judges each optimizer step's gradient (and loss) statistics.

The detector is a pure function of the observations it has been fed and its frozen settings,
so it can be replayed over a recorded trace (the detection benchmark does exactly that) and
checkpointed as a handful of floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ._validate import check_float, check_int, check_state_keys

__all__ = ["AnomalyDetector", "AnomalyReport", "Observation"]

_TINY = 1e-30


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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

    Rules, each giving a score where >= 1 means anomalous (scores are multiplied by
    ``sensitivity``; the report's ``score`` is the largest):

    1. ``nonfinite``: a NaN/Inf gradient norm or loss. Critical: escalates at once.
    2. ``grad_explosion``: log gradient norm above its slow EMA by ``z_threshold`` standard
       deviations *and* by a factor ``explode_ratio``. Statistics are kept in log space, where
       norms are closer to Gaussian, and updated with the value winsorised to 3 sigma so a
       spike cannot drag the baseline up.
    3. ``grad_vanish``: the fast EMA of the norm has fallen ``vanish_ratio`` times below its
       peak.
    4. ``dead_units``: fewer than ``dead_share`` of gradient tensors are non-vanishing.
    5. ``loss_explosion``: fast loss EMA above ``loss_explode_factor`` x the initial loss.
    6. ``loss_relapse``: the run had learned (loss well below its initial level) and its loss
       is back at ``relapse_level`` x the initial level: dead units, training lost.
    7. ``no_progress``: after ``stall_steps`` steps at a non-rising learning rate the loss has
       not dropped ``min_progress`` below its initial level.

    Rules 5-7 need the loss (``GradientMonitor.observe_loss``) and a positive initial loss.
    Nothing but ``nonfinite`` fires in the first ``warmup_steps`` observations.

    Non-finite gradients: reported (critical), never folded into any statistic.

    Args:
        sensitivity: multiplies every rule's score, > 0. 2.0 fires at half the evidence.
        warmup_steps: observations before the statistical rules may fire, >= 0.
        slow_decay: decay of the slow (baseline) EMAs, in (0, 1).
        fast_decay: decay of the fast EMAs, in [0, 1).
        z_threshold: standard deviations above baseline for ``grad_explosion``, > 0.
        explode_ratio: norm / baseline ratio for ``grad_explosion``, > 1.
        vanish_ratio: peak / current norm ratio for ``grad_vanish``, > 1.
        dead_share: active-tensor share below which ``dead_units`` fires, in [0, 1].
        loss_explode_factor: loss / initial loss ratio for ``loss_explosion``, > 1.
        relapse_level: loss / initial loss ratio for ``loss_relapse``, in (0, inf).
        learned_progress: drop below the initial loss that counts as having learned, in (0, 1).
        stall_steps: steps at a non-rising LR before ``no_progress`` may fire, >= 1.
        min_progress: drop below the initial loss required by then, in (0, 1).
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
        loss_explode_factor: float = 4.0,
        relapse_level: float = 0.95,
        learned_progress: float = 0.2,
        stall_steps: int = 100,
        min_progress: float = 0.1,
    ) -> None:
        self.sensitivity = check_float("sensitivity", sensitivity, low=0.0, low_open=True)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.slow_decay = check_float("slow_decay", slow_decay, low=0.0, high=1.0, low_open=True, high_open=True)
        self.fast_decay = check_float("fast_decay", fast_decay, low=0.0, high=1.0, high_open=True)
        self.z_threshold = check_float("z_threshold", z_threshold, low=0.0, low_open=True)
        self.explode_ratio = check_float("explode_ratio", explode_ratio, low=1.0, low_open=True)
        self.vanish_ratio = check_float("vanish_ratio", vanish_ratio, low=1.0, low_open=True)
        self.dead_share = check_float("dead_share", dead_share, low=0.0, high=1.0)
        self.loss_explode_factor = check_float("loss_explode_factor", loss_explode_factor, low=1.0, low_open=True)
        self.relapse_level = check_float("relapse_level", relapse_level, low=0.0, low_open=True)
        self.learned_progress = check_float("learned_progress", learned_progress, low=0.0, high=1.0, low_open=True, high_open=True)
        self.stall_steps = check_int("stall_steps", stall_steps, minimum=1)
        self.min_progress = check_float("min_progress", min_progress, low=0.0, high=1.0, low_open=True, high_open=True)
        self.reset()

    # ------------------------------------------------------------------ state
    _INIT_LOSSES = 8  # losses averaged into the initial level

    def reset(self) -> None:
        """Forget every observation."""
        self._g_slow = _Ema(self.slow_decay)
        self._g_fast = _Ema(self.fast_decay)
        self._l_fast = _Ema(self.fast_decay)
        self._n = 0  # finite gradient observations
        self._peak = -math.inf  # highest slow log-norm seen after warm-up
        self._n_loss = 0
        self._init_sum = 0.0
        self._l_best = math.inf
        self._lr_prev: float | None = None
        self._stall_clock = 0  # loss observations at a non-rising learning rate

    def state_dict(self) -> dict[str, Any]:
        """Every running statistic, as plain Python values."""
        return {
            "g_slow": self._g_slow.state(),
            "g_fast": self._g_fast.state(),
            "l_fast": self._l_fast.state(),
            "n": self._n,
            "peak": self._peak,
            "n_loss": self._n_loss,
            "init_sum": self._init_sum,
            "l_best": self._l_best,
            "lr_prev": self._lr_prev,
            "stall_clock": self._stall_clock,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        check_state_keys("AnomalyDetector", state, tuple(self.state_dict()))
        self._g_slow.load(state["g_slow"])
        self._g_fast.load(state["g_fast"])
        self._l_fast.load(state["l_fast"])
        self._n = int(state["n"])
        self._peak = float(state["peak"])
        self._n_loss = int(state["n_loss"])
        self._init_sum = float(state["init_sum"])
        self._l_best = float(state["l_best"])
        self._lr_prev = None if state["lr_prev"] is None else float(state["lr_prev"])
        self._stall_clock = int(state["stall_clock"])

    @property
    def initial_loss(self) -> float | None:
        """Mean of the first losses observed (the run's starting level), once known."""
        if self._n_loss < self._INIT_LOSSES:
            return None
        return self._init_sum / self._INIT_LOSSES

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
        found: dict[str, tuple[float, str]] = {}
        critical = False

        g = obs.grad_norm
        if not math.isfinite(g):
            found["nonfinite"] = (math.inf, f"Non-finite gradient norm ({g}) at step {obs.step}.")
            critical = True
        else:
            self._judge_gradients(obs, found)

        loss = obs.loss
        if loss is not None:
            if not math.isfinite(loss):
                found["nonfinite"] = (math.inf, f"Non-finite loss ({loss}) at step {obs.step}.")
                critical = True
            else:
                self._judge_loss(obs, loss, found)

        fired = {k: v for k, v in found.items() if v[0] >= 1.0}
        score = max((v[0] for v in found.values()), default=0.0)
        return AnomalyReport(
            step=obs.step,
            has_anomaly=bool(fired),
            anomaly_types=tuple(fired),
            details={k: v[1] for k, v in fired.items()},
            score=score,
            critical=critical,
        )

    def _judge_gradients(self, obs: Observation, found: dict[str, tuple[float, str]]) -> None:
        x = math.log(max(obs.grad_norm, _TINY))
        slow, fast = self._g_slow, self._g_fast
        warm = self._n >= self.warmup_steps
        s = self.sensitivity
        if warm:
            sd = max(slow.std, 0.1)
            z = (x - slow.mean) / sd
            ratio = x - slow.mean
            score = s * min(z / self.z_threshold, ratio / math.log(self.explode_ratio))
            found["grad_explosion"] = (
                score,
                f"Gradient norm {obs.grad_norm:.4g} is {math.exp(ratio):.3g}x its baseline "
                f"({z:.1f} sigma).",
            )
            x_in = min(x, slow.mean + 3.0 * sd)  # winsorise: spikes don't drag the baseline
        else:
            x_in = x
        slow.update(x_in)
        fast.update(x)
        self._n += 1
        if warm:
            self._peak = max(self._peak, slow.mean)
            drop = self._peak - fast.mean
            found["grad_vanish"] = (
                s * drop / math.log(self.vanish_ratio),
                f"Gradient norm has fallen {math.exp(drop):.3g}x below its peak.",
            )
            if obs.active_share < 1.0 and self.dead_share > 0:
                found["dead_units"] = (
                    s * (1.0 - obs.active_share) / max(1.0 - self.dead_share, 1e-12),
                    f"Only {obs.active_share:.0%} of gradient tensors are non-zero.",
                )

    def _judge_loss(self, obs: Observation, loss: float, found: dict[str, tuple[float, str]]) -> None:
        self._n_loss += 1
        if self._n_loss <= self._INIT_LOSSES:
            self._init_sum += loss
        self._l_fast.update(loss)
        lr = obs.lr
        if lr is not None:
            if self._lr_prev is None or lr <= self._lr_prev * (1 + 1e-9):
                self._stall_clock += 1
            self._lr_prev = lr
        else:
            self._stall_clock += 1
        l0 = self.initial_loss
        if l0 is None or l0 <= 0:
            return
        cur = self._l_fast.mean
        self._l_best = min(self._l_best, cur)
        if self._n_loss < self.warmup_steps:
            return
        s = self.sensitivity
        found["loss_explosion"] = (
            s * math.log(max(cur / l0, _TINY)) / math.log(self.loss_explode_factor),
            f"Loss {cur:.4g} is {cur / l0:.3g}x its initial level {l0:.4g}.",
        )
        learned = self._l_best <= (1 - self.learned_progress) * l0
        if learned:
            level = self.relapse_level * l0
            found["loss_relapse"] = (
                s * (cur - self._l_best) / max(level - self._l_best, _TINY),
                f"Loss is back at {cur:.4g} ({cur / l0:.0%} of its initial level {l0:.4g}) "
                f"after reaching {self._l_best:.4g}.",
            )
        elif self._stall_clock >= self.stall_steps:
            progress = 1 - self._l_best / l0
            found["no_progress"] = (
                s * (1 - progress) / (1 - self.min_progress),
                f"No progress after {self._stall_clock} steps: best loss {self._l_best:.4g} vs "
                f"initial {l0:.4g}.",
            )
