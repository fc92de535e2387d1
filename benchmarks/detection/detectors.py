"""Detectors to judge: anything mapping a trace to its first fire step (or None), or to a
``Firing`` (first escalation, first prune).

- ``product(**options)``: the library's ``AnomalyDetector`` + ``EscalationPolicy``, replaying the
  trace's ``Observation``s exactly as the monitor does (``check`` then ``update``); its prune step
  is the first *confirmed* escalation, the only kind the monitor prunes on. Options are any
  ``AnomalyDetector`` setting or ``patience``/``cooldown_steps``; ``product()`` is the default.
- ``REFERENCE_RULES``: the simple rules of the shared README, on the gradient norm or the loss
  (a rule that fires, prunes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from wandb_gradema import AnomalyDetector, AnomalyReport, EscalationPolicy, GradientEMATracker
from wandb_gradema.detector import EXCURSIONS

from .trace import Trace


class Firing(NamedTuple):
    """Where a detector first escalated and first pruned on one trace (None: never), and where it
    first escalated on something other than an excursion (``EXCURSIONS``: a loss or norm blow-up
    seen as such; the first escalation when the detector does not say)."""

    escalated: int | None
    pruned: int | None
    unexplained: int | None = None


Detector = Callable[[Trace], "int | None | Firing"]

POLICY_OPTIONS = ("patience", "cooldown_steps", "telemetry_steps")


def fire(detector: Detector, trace: Trace) -> Firing:
    """``detector`` on ``trace`` as a ``Firing`` (a plain fire step escalates and prunes)."""
    out = detector(trace)
    return out if isinstance(out, Firing) else Firing(out, out, out)


def product(*, use_loss: bool = True, **options: Any) -> Detector:
    """The product's detector with ``options`` (validated now); no options: the defaults.

    ``use_loss=False`` replays the gradients only, as for a user who never calls
    ``observe_loss``. Returns the trace's ``Firing``: first escalation, first confirmed one, and
    the first escalation of a second policy fed the same reports without their excursion rules
    (what the run escalates on beyond its blow-ups; excursions never count towards a prune, so
    the reports' ``confirmed`` is the same for both).
    """
    policy_kw = {k: options.pop(k) for k in POLICY_OPTIONS if k in options}
    AnomalyDetector(**options)  # raise on bad options now, not on the first trace
    EscalationPolicy(**policy_kw)

    def replay(trace: Trace) -> Firing:
        detector, policy = AnomalyDetector(**options), EscalationPolicy(**policy_kw)
        other = EscalationPolicy(**policy_kw)
        escalated = unexplained = None
        for obs in trace.observations():
            if not use_loss:
                obs = dataclasses.replace(obs, loss=None)
            report = detector.check(obs)
            if unexplained is None and other.update(_without_excursions(report)) is not None:
                unexplained = obs.step
            event = policy.update(report)
            if event is None:
                continue
            if escalated is None:
                escalated = obs.step
            if event.confirmed:
                return Firing(escalated, obs.step, obs.step if unexplained is None else unexplained)
        return Firing(escalated, None, unexplained)

    return replay


def _without_excursions(report: AnomalyReport) -> AnomalyReport:
    """``report`` as it would read without its excursion rules (quiet when they were all)."""
    if not report.has_anomaly or not report.details.keys() & EXCURSIONS:
        return report
    details = {k: v for k, v in report.details.items() if k not in EXCURSIONS}
    if not details and not report.critical:
        return AnomalyReport(report.step, False)
    return dataclasses.replace(
        report,
        anomaly_types=tuple(details),
        details=details,
        immediate=report.immediate and "lr_jump" in details,
    )


def _first(hits: Iterable[bool], consecutive: int = 1, within: int | None = None) -> int | None:
    """First step where ``consecutive`` hits in a row (or that many within ``within`` steps) end."""
    recent: list[int] = []
    for t, hit in enumerate(hits):
        if not hit:
            if within is None:
                recent = []
            continue
        recent.append(t)
        if within is not None:
            recent = [s for s in recent if s > t - within]
        if len(recent) >= consecutive:
            return t
    return None


def _drift_hits(trace: Trace, threshold: float = 0.5, momentum: float = 0.99) -> Iterable[bool]:
    """The original tracker's rule: ``|x - ema| / (ema + eps) > threshold`` on the grad norm."""
    tracker = GradientEMATracker(decay=momentum)
    return (tracker.update(g, 1.0).norm_drift > threshold for g in trace.arrays["grad_norm"].tolist())


def _zscore_hits(trace: Trace, z: float = 2.5, alpha: float = 0.97, warmup: int = 25) -> Iterable[bool]:
    """Grad norm above its EMA mean by ``z`` EMA standard deviations, after ``warmup`` steps.

    Non-finite norms are hits and are not folded into the statistics.
    """
    mean, var, n = 0.0, 0.0, 0
    for g in trace.arrays["grad_norm"].tolist():
        if not math.isfinite(g):
            yield True
            continue
        yield n >= warmup and g - mean > z * math.sqrt(var)
        if n == 0:
            mean = g
        else:  # exponentially weighted mean and variance
            diff = g - mean
            mean += (1 - alpha) * diff
            var = alpha * (var + (1 - alpha) * diff * diff)
        n += 1


def _nonfinite_hits(trace: Trace) -> Iterable[bool]:
    a = trace.arrays
    return (
        not (math.isfinite(g) and math.isfinite(loss)) or bad > 0
        for g, loss, bad in zip(a["grad_norm"].tolist(), a["loss"].tolist(), a["n_nonfinite"].tolist())
    )


def _loss_hits(trace: Trace, factor: float = 5.0) -> Iterable[bool]:
    """Loss above ``factor`` x the first step's loss (a non-finite loss is a hit)."""
    losses = trace.arrays["loss"].tolist()
    return (not math.isfinite(x) or x > factor * losses[0] for x in losses)


REFERENCE_RULES: dict[str, Detector] = {
    "drift > 0.5 (EMA 0.99), first hit": lambda t: _first(_drift_hits(t)),
    "drift > 0.5, 3 consecutive hits": lambda t: _first(_drift_hits(t), consecutive=3),
    "NaN/Inf in loss or gradients": lambda t: _first(_nonfinite_hits(t)),
    "EMA z-score > 2.5 (alpha 0.97, 25 warm-up)": lambda t: _first(_zscore_hits(t)),
    "z-score, 3 spikes within 10 steps": lambda t: _first(_zscore_hits(t), consecutive=3, within=10),
    "loss > 5x initial loss": lambda t: _first(_loss_hits(t)),
}


def all_detectors() -> dict[str, Detector]:
    """The product's default detector (with and without the loss), then every reference rule."""
    return {"gradema (default)": product(), "gradema (gradients only)": product(use_loss=False), **REFERENCE_RULES}
