"""AnomalyDetector: judges each optimizer step's gradient (and loss) statistics.

The detector is a pure function of the observations it has been fed and its frozen settings,
so it can be replayed over a recorded trace (the detection benchmark does exactly that) and
checkpointed as plain values. Its rules live in ``wandb_gradema.rules``, one module per family
of evidence (gradient, loss, schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ._validate import check_float, check_int, check_state_keys
from .rules import gradient, loss, schedule
from .rules._common import Findings, median_sorted

__all__ = ["AnomalyDetector", "AnomalyReport", "Observation"]

#: Which family each rule belongs to (the gradient and loss families agreeing confirm).
FAMILIES = {
    "grad_explosion": "gradient",
    "grad_vanish": "gradient",
    "dead_units": "gradient",
    "loss_explosion": "loss",
    "above_start": "loss",
    "progress_lost": "loss",
    "unstable_rise": "loss",
    "stalled": "gradient",  # its evidence of death is the gradients; the loss only gates it
    "lr_jump": "schedule",
    "loss_spike": "excursion",  # escalates at once, never evidence for a prune by itself
    "norm_spike": "excursion",  # the same, for the gradient norm
}
#: Rules that escalate at once and never count towards a prune.
EXCURSIONS = frozenset({"loss_spike", "norm_spike"})
#: The families of independent evidence: the schedule is context for the other two.
INDEPENDENT = frozenset({"gradient", "loss"})
#: Both independent families on ``confirm_steps // AGREE_DIVISOR`` steps in a row confirm.
AGREE_DIVISOR = 4
#: Rules beside ``progress_lost`` that make a relapse count before it has held.
SWING_CONTEXT = frozenset({"loss_explosion", "above_start", "unstable_rise", "lr_jump"})
#: The fast median (5 losses) has sqrt(window / 5) x the standard error of the level.
FAST_BAND = 1.6


@dataclass(frozen=True, slots=True)
class Observation:
    """What the monitor saw on one optimizer step, as host floats.

    Attributes:
        step: optimizer step index (0-based).
        grad_norm: total L2 gradient norm before the update (NaN/Inf when a gradient was).
        health: gradient health score in [0, 1] (see ``wandb_gradema.health_score``); charted,
            not read by the rules (one tensor holding the norm is no sign of death).
        loss: mean training loss observed for this step, or None when none was given.
        lr: largest learning rate over the optimizer's param groups, or None.
        active_share: share of gradient tensors with a finite, non-vanishing norm.
        n_nonfinite: number of gradient tensors with a non-finite norm.
        param_groups: number of the optimizer's param groups. A learning-rate jump that comes
            with a new group (``add_param_group``, unfreezing layers) is not a schedule bug.
        n_tensors: number of gradient tensors measured (0: unknown). Recorded for the rules
            that read the spread of the norm over tensors; none does at present.
    """

    step: int
    grad_norm: float
    health: float = 1.0
    loss: float | None = None
    lr: float | None = None
    active_share: float = 1.0
    n_nonfinite: int = 0
    param_groups: int = 1
    n_tensors: int = 0


@dataclass(frozen=True, slots=True)
class AnomalyReport:
    """The detector's verdict on one step.

    Attributes:
        step: the optimizer step judged.
        has_anomaly: True when any rule's score reached 1.
        anomaly_types: the rules that fired, e.g. ``("nonfinite",)``, ``("grad_explosion",)``.
        details: one sentence per fired rule saying what was seen.
        score: the largest rule score this step (>= 1 means anomalous); logged as a chart.
        critical: True when the anomaly must escalate at once (non-finite values); critical
            reports are always prune-grade.
        confirmed: True when the evidence is strong enough to prune on (critical, or gradient
            or loss rules have fired ``confirm_steps`` steps in a row, or both families together
            on a quarter of that).
        immediate: escalate without waiting for ``patience`` but, unless also confirmed, do
            not prune (an LR jump in an existing param group: a likely schedule bug; a blow-up of
            the loss, ``loss_spike``, or of the gradient norm in the warm-up, ``norm_spike``).
    """

    step: int
    has_anomaly: bool
    anomaly_types: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)
    score: float = 0.0
    critical: bool = False
    confirmed: bool = False
    immediate: bool = False

    @property
    def reason(self) -> str:
        """All fired rules' sentences joined, or an empty string."""
        return " ".join(self.details.values())


class AnomalyDetector:
    """Decides whether a step's gradient statistics (and loss, when given) look like a failure.

    Each rule gives a score where >= 1 means anomalous; scores are multiplied by
    ``sensitivity`` and the report's ``score`` is the largest. Rules read medians over the last
    ``2 burst_steps + 1`` steps, never one step, so a burst of up to ``burst_steps`` corrupted
    batches in a row is noise; loss changes count in units of the loss's own batch-to-batch
    noise. The rules (``wandb_gradema.rules``):

    * gradients: ``grad_explosion`` (``explode_ratio`` x and ``z_threshold`` sigma above the
      baseline), ``grad_vanish`` (``vanish_ratio`` x below the peak), ``dead_units`` (at most
      ``dead_share`` of the tensors non-zero); the last two stay off while the loss holds its
      progress (vanishing is convergence then);
    * loss: ``loss_explosion`` (``loss_explode_factor`` x the start), ``above_start``
      (significantly above the start, at least ``above_start_factor`` x, for a whole trend
      window and not on its way back: forgetting, for a fine-tune),
      ``progress_lost`` (``relapse_threshold`` of the progress given back), ``unstable_rise``
      (``rise_threshold`` given back while the LR climbs to new heights), ``stalled`` (at the
      start after ``stall_steps`` at a non-rising LR, *with* most tensors silent; without any
      observed loss, the silent tensors alone, for as long);
    * schedule: ``lr_jump``: the LR jumped ``lr_jump_ratio`` x above anything before. In an
      existing param group (a schedule bug) it escalates at once, unconfirmed; with a new param
      group (``add_param_group``: unfreezing) it is nothing by itself. Either way, trouble
      within ``jump_window`` steps (the loss gives back ``rise_threshold`` of the progress it
      held at the jump, or the gradients explode) makes it an anomaly. The jump is context,
      not evidence: it never confirms by itself (see the prune bar).
    * excursions: ``loss_spike``: during the warm-up (where the level rules wait), the loss has
      been ``rules.loss.SPIKE_FACTOR`` (5) x the level before it on ``SPIKE_STEPS`` (3) steps in
      a row, beyond the noise of the losses before it (or with the gradient norm up too); after
      the warm-up, 5x where the run started on 3 steps in a row (a burst the level rules wait
      out is still worth a warning when it is 5x worse than an untrained network);
      ``norm_spike``: the gradient norm has been ``rules.gradient.NORM_SPIKE_FACTOR`` (10) x the
      median of the norms before it on 3 steps in a row, beyond their noise, with or without a
      loss. Both escalate at once and never confirm by themselves; a ``loss_spike`` seen while
      the start is measured makes the level before it the start (an early blow-up never
      becomes the reference: a network that died at chance after it has made no progress).
    * ``nonfinite``: a NaN/Inf gradient norm or loss. Critical and confirmed at once.

    **Prune bar**: a report is ``confirmed`` (prune-grade) when critical, when gradient or loss
    rules have fired ``confirm_steps`` steps in a row, or when rules of both families (two
    independent signs) have fired together on ``confirm_steps // 4`` steps in a row. The
    schedule is context, not evidence: ``lr_jump`` alone never counts (without an observed
    loss, a norm that exploded since the jump counts as gradient evidence). ``progress_lost``
    with no other rule beside it counts only once the relapse has held at the start for two
    trend windows (``rules.loss.relapse_held``): a loss that swings and comes back (SGD with
    high momentum) is escalated, never pruned. ``EscalationPolicy``
    escalates on ``patience`` anomalous steps; the monitor prunes only on confirmed events.

    Non-finite gradients: reported (critical), never folded into any statistic.

    Example:
        >>> detector = AnomalyDetector()
        >>> report = detector.check(Observation(step=0, grad_norm=float("nan")))
        >>> report.anomaly_types, report.critical, report.confirmed
        (('nonfinite',), True, True)

    Args:
        sensitivity: multiplies every rule's score, > 0. 2.0 fires at half the evidence.
        warmup_steps: observations before the slow gradient baseline and LR jumps count, >= 0.
        burst_steps: longest burst of bad batches in a row treated as noise, >= 1.
        confirm_steps: anomalous steps in a row that make a report prune-grade (a quarter of
            them with both the gradient and the loss rules firing), >= 1.
        slow_decay: decay of the slow (baseline) EMA of the log norm, in (0, 1).
        z_threshold: standard deviations above baseline for ``grad_explosion``, > 0.
        explode_ratio: norm / baseline ratio for ``grad_explosion``, > 1.
        vanish_ratio: peak / current norm ratio for ``grad_vanish``, > 1.
        dead_share: active-tensor share at or below which ``dead_units`` fires, in [0, 1).
        reference_steps: first losses that set the starting level, >= 2.
        trend_window: losses in the noise scale and the trend test, >= 8.
        loss_z_threshold: standard errors a change of the loss level must exceed, > 0.
        trend_z_threshold: Mann-Kendall z of a significant trend, > 0.
        loss_explode_factor: level / start ratio for ``loss_explosion``, > 1.
        above_start_factor: least level / start ratio for ``above_start``, > 1 (beyond it,
            significance and persistence decide; a fine-tune kicked by a fresh optimizer can sit
            30-40% above its start for tens of steps while it recovers).
        learned_progress: drop below the start that counts as having learned, in (0, 1).
        relapse_threshold: share of progress lost for ``progress_lost``, > 0.
        rise_threshold: share of progress lost for ``unstable_rise`` and after an LR jump, > 0.
        stall_steps: steps at a non-rising LR before ``stalled`` may fire, >= 1.
        min_progress: drop below the start that is progress for ``stalled``, in (0, 1).
        lr_jump_ratio: LR / previous maximum LR ratio that arms ``lr_jump``, > 1.
        jump_window: steps after an LR jump in which trouble counts as ``lr_jump``, >= 1.
    """

    def __init__(
        self,
        *,
        sensitivity: float = 1.0,
        warmup_steps: int = 20,
        burst_steps: int = 6,
        confirm_steps: int = 12,
        slow_decay: float = 0.98,
        z_threshold: float = 5.0,
        explode_ratio: float = 8.0,
        vanish_ratio: float = 1e4,
        dead_share: float = 0.5,
        reference_steps: int = 12,
        trend_window: int = 32,
        loss_z_threshold: float = 4.0,
        trend_z_threshold: float = 2.5,
        loss_explode_factor: float = 4.0,
        above_start_factor: float = 1.5,
        learned_progress: float = 0.3,
        relapse_threshold: float = 0.5,
        rise_threshold: float = 0.2,
        stall_steps: int = 200,
        min_progress: float = 0.1,
        lr_jump_ratio: float = 4.0,
        jump_window: int = 50,
    ) -> None:
        self.sensitivity = check_float("sensitivity", sensitivity, low=0.0, low_open=True)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
        self.burst_steps = check_int("burst_steps", burst_steps, minimum=1)
        self.confirm_steps = check_int("confirm_steps", confirm_steps, minimum=1)
        self.slow_decay = check_float("slow_decay", slow_decay, low=0.0, high=1.0, low_open=True, high_open=True)
        self.z_threshold = check_float("z_threshold", z_threshold, low=0.0, low_open=True)
        self.explode_ratio = check_float("explode_ratio", explode_ratio, low=1.0, low_open=True)
        self.vanish_ratio = check_float("vanish_ratio", vanish_ratio, low=1.0, low_open=True)
        self.dead_share = check_float("dead_share", dead_share, low=0.0, high=1.0, high_open=True)
        self.reference_steps = check_int("reference_steps", reference_steps, minimum=2)
        self.trend_window = check_int("trend_window", trend_window, minimum=8)
        self.loss_z_threshold = check_float("loss_z_threshold", loss_z_threshold, low=0.0, low_open=True)
        self.trend_z_threshold = check_float("trend_z_threshold", trend_z_threshold, low=0.0, low_open=True)
        self.loss_explode_factor = check_float("loss_explode_factor", loss_explode_factor, low=1.0, low_open=True)
        self.above_start_factor = check_float("above_start_factor", above_start_factor, low=1.0, low_open=True)
        self.learned_progress = check_float(
            "learned_progress", learned_progress, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self.relapse_threshold = check_float("relapse_threshold", relapse_threshold, low=0.0, low_open=True)
        self.rise_threshold = check_float("rise_threshold", rise_threshold, low=0.0, low_open=True)
        self.stall_steps = check_int("stall_steps", stall_steps, minimum=1)
        self.min_progress = check_float("min_progress", min_progress, low=0.0, high=1.0, low_open=True, high_open=True)
        self.lr_jump_ratio = check_float("lr_jump_ratio", lr_jump_ratio, low=1.0, low_open=True)
        self.jump_window = check_int("jump_window", jump_window, minimum=1)
        # Log-space thresholds, computed once (the hook judges every step).
        self._log_explode = math.log(self.explode_ratio)
        self._log_vanish = math.log(self.vanish_ratio)
        self._log_loss_explode = math.log(self.loss_explode_factor)
        self._log_above = math.log(self.above_start_factor)
        self._log_jump = math.log(self.lr_jump_ratio)
        # The rules' settings, held by the rule families (nothing to pass per step).
        self._gradient_rules = gradient.GradientRules(
            z_threshold=self.z_threshold,
            log_explode=self._log_explode,
            log_vanish=self._log_vanish,
            dead_share=self.dead_share,
            trend_z=self.trend_z_threshold,
        )
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every observation."""
        window = 2 * self.burst_steps + 1
        self._grads = gradient.GradientStats(slow_decay=self.slow_decay, window=window, warmup_steps=self.warmup_steps)
        self._losses = loss.LossStats(
            window=window,
            trend_window=self.trend_window,
            reference_steps=self.reference_steps,
            above_factor=self.above_start_factor,
            trend_z=self.trend_z_threshold,
        )
        self._lr = schedule.ScheduleStats()
        # One step's verdicts and the loss rules' view, kept and refreshed in place every step.
        self._found = Findings(self.sensitivity)
        self._view = loss.LossView(
            z=self.loss_z_threshold,
            learned_progress=self.learned_progress,
            trend_z=self.trend_z_threshold,
            log_explode=self._log_loss_explode,
            log_above=self._log_above,
            relapse_threshold=self.relapse_threshold,
            rise_threshold=self.rise_threshold,
        )
        self._episode = 0  # anomalous reports in a row with gradient or loss evidence
        self._agree = 0  # ... of which, the last ones in a row with both families at once
        self._jump_norm = 0.0  # this step's lr_jump score from the gradient norm alone
        self._swing = False  # this step's progress_lost is a relapse that has not held yet
        self.score = 0.0  # the latest step's score (the report's; ``check_fields`` gives no quiet report)

    def state_dict(self) -> dict[str, Any]:
        """Every running statistic, as plain Python values."""
        return {
            "gradient": self._grads.state(),
            "loss": self._losses.state(),
            "schedule": self._lr.state(),
            "episode": self._episode,
            "agree": self._agree,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        expected = self.state_dict()
        check_state_keys("AnomalyDetector", state, tuple(expected))
        for part in ("gradient", "loss", "schedule"):
            check_state_keys(f"AnomalyDetector[{part!r}]", state[part], tuple(expected[part]))
        self._grads.load(state["gradient"])
        self._losses.load(state["loss"])
        self._lr.load(state["schedule"])
        self._episode = int(state["episode"])
        self._agree = int(state["agree"])

    @property
    def initial_loss(self) -> float | None:
        """The run's starting loss level (robust, over ``reference_steps`` losses), once known."""
        return self._losses.ref

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
            step=self._grads.n if step is None else step,
            grad_norm=float(grad_norm),
            health=float(grad_health),
            loss=None if loss is None else float(loss),
            lr=None if lr is None else float(lr),
            active_share=float(active_share),
        )
        return self.check(obs)

    def check(self, obs: Observation) -> AnomalyReport:
        """Fold one observation into the statistics and return the verdict on it.

        Per step this is constant work whatever the run's length: every statistic is kept
        incrementally (``RollingWindow``: O(log n) per step), the rule settings and the loss
        view are kept, each rule reads only what its gate lets through, and a quiet step builds
        no sentence, closure or dict of findings (``Findings``).
        """
        report = self.check_fields(obs.step, obs.grad_norm, obs.active_share, obs.loss, obs.lr, obs.param_groups)
        return report if report is not None else AnomalyReport(obs.step, False, (), {}, self.score)

    def check_fields(
        self, step: int, g: float, active_share: float, x: float | None, lr_value: float | None, param_groups: int
    ) -> AnomalyReport | None:
        """``check`` of one observation given by its fields, without building it, and without a
        report on a quiet step (None; its score is ``score``): the monitor's per-step call,
        which builds a quiet step's objects only when they are asked for. The same verdicts,
        bit for bit: ``check`` is this plus the quiet report."""
        found = self._found
        found.top = 0.0  # ``found.reset()``, inlined
        if found.fired:
            found.fired = {}
        found.sensitivity = s = self.sensitivity
        critical = False
        self._swing = False
        lr = self._lr
        lr.observe(lr_value, param_groups, self.warmup_steps, self.lr_jump_ratio)  # positional: every step
        jumped = lr.jumped
        immediate = jumped and not lr.jump_added

        grads, losses = self._grads, self._losses
        if jumped:  # what the loss and gradients looked like before the jump
            lr.jump_level = losses.level if len(losses.short) else math.nan
            lr.jump_norm = grads.med if len(grads.norms) else math.nan
        grads_ok = math.isfinite(g)
        if not grads_ok:
            found.note("nonfinite", math.inf, lambda: f"Non-finite gradient norm ({g}) at step {step}.")
            critical = True
        else:
            grads.observe(g, active_share)
        view = self._view
        ready = False  # the loss rules can judge (``view`` is this step's)
        if x is not None:
            if not math.isfinite(x):
                found.note("nonfinite", math.inf, lambda: f"Non-finite loss ({x}) at step {step}.")
                critical = True
            else:
                norm_rise = norm_z = 0.0
                if grads.n == loss.DEPART_STEPS + 1:  # the first steps' norms against the first one
                    norm_rise = median_sorted(sorted(list(grads.norms.values)[1:])) - grads.first
                if losses.n == self.reference_steps - 1 and grads.n:  # ... and the reference's
                    later = list(grads.norms.values)[1:] if grads.n <= grads.norms.size else list(grads.norms.values)
                    norm_z = loss.rise_z(grads.first, later, loss.DEPART_STEPS)
                early = not (grads.warm or losses.n > self.warmup_steps)
                log_norm = grads.norms.values[-1] if grads_ok else math.nan
                losses.observe(x, norm_rise, norm_z, early, log_norm)  # positional: every step
                if losses.spike_z >= loss.SPIKE_Z:  # ``losses.spiking``, inlined
                    loss.judge_spike(losses, found)
                ready = view.update(losses)
        if grads_ok:
            gradient.judge_norm_spike(grads, found)
            self._gradient_rules.judge(grads, found, ready and view.holds)
        if ready:
            self._swing = view.judge(losses, found, lr.new_high, grads.warm or losses.n > self.warmup_steps)
            if lr.clock * s >= self.stall_steps:  # ``stalled`` scores the clock: before, it cannot fire
                loss.judge_stall(
                    losses,
                    view,
                    found,
                    clock=lr.clock,
                    stall_steps=self.stall_steps,
                    min_progress=self.min_progress,
                    trend_z=self.trend_z_threshold,
                    dead_gradients=gradient.silent(grads, dead_share=self.dead_share),
                )
        elif grads_ok and losses.n == 0 and lr.clock * s >= self.stall_steps:
            # No loss to show progress: silent tensors for that long are evidence enough.
            if gradient.silent(grads, dead_share=self.dead_share):
                clock = lr.clock
                found.note(
                    "stalled",
                    clock / self.stall_steps,
                    lambda: f"Stalled: for {clock} steps most gradient tensors have had no gradient; no loss "
                    "observed to show progress.",
                )
        self._jump_norm = 0.0
        if immediate:  # a jump in an existing param group: a schedule bug until shown otherwise
            schedule.judge_jump_itself(lr, found, log_jump=self._log_jump)
        elif lr.jump_at >= 0 and lr.armed(self.jump_window):  # no jump yet: nothing to judge
            self._judge_jump(view if ready else None, found, step)
        return self._report(step, found, critical, immediate)

    def nonfinite_loss(self, step: int, value: float) -> AnomalyReport:
        """The verdict on a step with no gradients (the loop skipped backward) whose observed loss
        is non-finite: critical, like any other; no statistic changes."""
        why = f"Non-finite loss ({value}) at step {step}, on a step with no gradients (backward was skipped)."
        return AnomalyReport(
            step=step,
            has_anomaly=True,
            anomaly_types=("nonfinite",),
            details={"nonfinite": why},
            score=math.inf,
            critical=True,
            confirmed=True,
        )

    def _judge_jump(self, v: loss.LossView | None, found: Findings, step: int) -> None:
        lr = self._lr
        lost = 0.0
        if v is not None and math.isfinite(lr.jump_level):
            # After a jump, trouble is likely: judge the median of the last few losses, fast.
            held = v.ref - lr.jump_level  # the progress held at the jump
            rise = self._losses.fast_level() - lr.jump_level
            if rise > v.best_band * FAST_BAND:
                lost = rise / held if held > 0 else math.inf
        grads = self._grads
        norm_rise = 0.0
        if grads.full and math.isfinite(lr.jump_norm):
            norm_rise = max(0.0, grads.med - lr.jump_norm)
        self._jump_norm = norm_rise / self._log_explode  # a gradient sign (a median: burst-proof)
        schedule.judge_jump(
            lr,
            found,
            lost=lost,
            norm_rise=norm_rise,
            rise_threshold=self.rise_threshold,
            log_explode=self._log_explode,
            step=step,
        )

    def _report(self, step: int, found: Findings, critical: bool, immediate: bool) -> AnomalyReport | None:
        s = self.sensitivity
        self.score = score = found.top * s
        if score < 1.0:  # quiet: no report (``check`` builds one)
            if self._episode or self._agree:
                self._episode = self._agree = 0
            return None
        # every rule with score x sensitivity >= 1 (the one scoring ``top`` at least)
        details = {k: why() for k, (_, why) in found.fired.items()}
        found.fired = {}  # no closure outlives the step (the detector stays picklable)
        # The schedule is context, not evidence: only the gradient and loss families count
        # towards the prune bar, and they must agree on the same steps to corroborate.
        families = {FAMILIES.get(rule) for rule in details} & INDEPENDENT
        if self._swing and families == {"loss"} and not details.keys() & SWING_CONTEXT:
            # A relapse that has not held, alone, may be a loss that swings and comes back:
            # it escalates, but counts towards the prune bar only once it has held (or with
            # the gradients, or an LR jump, to corroborate it).
            families = set()
        if "lr_jump" in details and self._jump_norm * s >= 1.0 and not self._losses.n:
            # Without a loss to show whether the run survives the jump, a norm that has
            # exploded since (a median: burst-proof) is the gradient evidence.
            families.add("gradient")
        if families:
            self._episode += 1
            self._agree = self._agree + 1 if families == INDEPENDENT else 0
        else:
            self._episode = self._agree = 0
        confirmed = (
            critical
            or self._episode >= self.confirm_steps
            or self._agree >= max(1, self.confirm_steps // AGREE_DIVISOR)
        )
        return AnomalyReport(
            step=step,
            has_anomaly=True,
            anomaly_types=tuple(details),
            details=details,
            score=score,
            critical=critical,
            confirmed=confirmed,
            immediate=(immediate and "lr_jump" in details) or bool(details.keys() & EXCURSIONS),
        )

