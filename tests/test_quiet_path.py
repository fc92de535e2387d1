"""The judge's quiet-step path (issue 20): cheaper per step, the same verdicts, rows and state.

A quiet step goes through ``GradientEMATracker.fold``, ``AnomalyDetector.check_fields`` and
``EscalationPolicy.quiet`` and builds its ``Observation``, ``DriftUpdate`` and ``AnomalyReport``
only when ``StepJudge.last`` is read. These tests run the same steps through that path and
through the object path (a detector subclass that overrides ``check``, which the judge honours)
and compare everything a user or the monitor can see, step by step; and the LR statistics' fast
path for a constant LR against the full update.
"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from wandb_gradema.cadence import LogCadence
from wandb_gradema.detector import AnomalyDetector, Observation
from wandb_gradema.escalation import EscalationPolicy
from wandb_gradema.judge import StepJudge
from wandb_gradema.norms import StatsRow
from wandb_gradema.readback import StepValues
from wandb_gradema.rules.schedule import ScheduleStats
from wandb_gradema.tracker import GradientEMATracker

NAMES = ["w0", "b0", "w1", "b1"]


class ObjectPathDetector(AnomalyDetector):
    """The same detector, through ``check`` (a subclass overriding it takes the object path)."""

    def check(self, obs: Observation):  # type: ignore[no-untyped-def]
        return super().check(obs)


def _steps(n: int = 420, seed: int = 0) -> list[StepValues]:
    """A run a user would see: learning, a non-finite step, a loss blow-up, an LR jump, a run of
    steps with no loss, then a dead stretch."""
    rng = random.Random(seed)
    out = []
    for step in range(n):
        loss: float | None = 2.0 * math.exp(-step / 80) + 0.3 + 0.02 * rng.gauss(0, 1)
        lr = 1e-3 if step < 300 else 1e-2  # a jump (a schedule bug)
        norms = [abs(1.0 + 0.1 * rng.gauss(0, 1)) * (0.5 + i) for i in range(len(NAMES))]
        if step == 120:
            norms[1] = math.nan
        if 200 <= step < 206:
            loss = 40.0 + step  # a burst
        if 250 <= step < 260:
            loss = None
        if step >= 360:
            norms = [0.0, 0.0, 0.0, norms[3]]  # most tensors silent
        total = math.hypot(*norms)
        finite = [v for v in norms if math.isfinite(v)]
        row = StatsRow(total, max(norms) if math.isfinite(total) else total, float(sum(v > 1e-10 for v in finite)), float(len(finite)))
        out.append(StepValues(step, row, loss, lr, norms, range(len(NAMES))))
    return out


def _judge(detector: AnomalyDetector, log_every: int | None) -> StepJudge:
    return StepJudge(GradientEMATracker(), detector, EscalationPolicy(), LogCadence(log_every), 8)


@pytest.mark.parametrize("log_every", [1, 7, None])
def test_quiet_path_gives_what_the_object_path_gives(log_every: int | None) -> None:
    lean, full = _judge(AnomalyDetector(), log_every), _judge(ObjectPathDetector(), log_every)
    assert lean._lean and not full._lean
    quiet = events = rows = 0
    for v in _steps():
        a, b = lean.judge(v, NAMES, logging=True), full.judge(v, NAMES, logging=True)
        quiet += full.last is not None and not full.last[2].has_anomaly
        assert a == b, v.step  # the escalation (or None) and the row (or None), every metric
        events += a[0] is not None
        rows += a[1] is not None
        if v.step % 3 == 0:  # read ``last`` on some steps only: built on demand, or kept
            assert lean.last == full.last, v.step
    assert lean.last == full.last
    assert lean.state_dict() == full.state_dict()
    assert lean.last_row() == full.last_row()
    assert quiet > 250 and events >= 2 and (rows > 50 or log_every is None)


def test_a_quiet_step_with_no_run_to_take_its_row_builds_nothing() -> None:
    """No W&B run (``logging`` says no) and the adaptive cadence, whose rows are due every step
    until one is written: a quiet step still builds no object, and decides as the object path."""
    lean, full = _judge(AnomalyDetector(), None), _judge(ObjectPathDetector(), None)
    asked = []

    def no_run() -> bool:
        asked.append(1)
        return False

    built = 0
    for v in _steps():
        a, b = lean.judge(v, NAMES, logging=no_run), full.judge(v, NAMES, logging=no_run)
        assert a == b and a[1] is None, v.step
        built += lean._quiet is None  # its objects were built (an anomalous step)
    assert built < 150 and len(asked) == 2 * len(_steps())  # asked as before: every due step, both paths
    assert lean.last == full.last and lean.state_dict() == full.state_dict()


def test_last_inputs_are_what_last_holds_without_building_it() -> None:
    """The sweep-aware judgement reads each step's inputs through ``last_inputs``: the values
    ``last`` would give, on quiet and anomalous steps, and a quiet step stays unbuilt."""
    lean, full = _judge(AnomalyDetector(), None), _judge(ObjectPathDetector(), None)
    assert lean.last_inputs() is None
    unbuilt = 0
    for v in _steps():
        lean.judge(v, NAMES, logging=False)
        full.judge(v, NAMES, logging=False)
        got = lean.last_inputs()
        unbuilt += lean._quiet is not None  # reading the inputs built nothing
        assert full.last is not None
        obs = full.last[0]
        assert got == (obs.step, obs.loss, obs.grad_norm, obs.active_share, obs.lr), v.step
    assert unbuilt > 250


def test_a_check_set_on_the_detector_itself_is_called() -> None:
    """A fault injected into ``detector.check`` (as tests and users do) is still honoured."""
    judge = _judge(AnomalyDetector(), 1)
    seen = []
    real = judge.detector.check

    def check(obs: Observation):  # type: ignore[no-untyped-def]
        seen.append(obs.step)
        return real(obs)

    judge.detector.check = check  # type: ignore[method-assign]
    for v in _steps(5):
        judge.judge(v, NAMES, logging=False)
    assert seen == [0, 1, 2, 3, 4]


def test_stand_ins_of_another_kind_take_the_object_path() -> None:
    """A tracker with only ``update`` (no ``fold``) and a detector with only ``check`` (no
    ``check_fields``) still judge every step, through the object path."""

    class Tracker:
        def __init__(self) -> None:
            self.inner, self.seen = GradientEMATracker(), 0

        def update(self, grad_norm: float, health: float):  # type: ignore[no-untyped-def]
            self.seen += 1
            return self.inner.update(grad_norm, health)

    class Detector:
        def __init__(self) -> None:
            self.inner, self.seen = AnomalyDetector(), 0

        def check(self, obs: Observation):  # type: ignore[no-untyped-def]
            self.seen += 1
            return self.inner.check(obs)

    tracker, detector = Tracker(), Detector()
    judge = StepJudge(tracker, detector, EscalationPolicy(), LogCadence(None), 8)  # type: ignore[arg-type]
    assert not judge._lean
    for v in _steps(40):
        judge.judge(v, NAMES, logging=False)
    assert tracker.seen == detector.seen == 40 and judge.last is not None and judge.last[0].step == 39


def test_check_fields_is_check_without_the_quiet_report() -> None:
    a, b = AnomalyDetector(), AnomalyDetector()
    for v in _steps():
        obs = Observation(v.step, v.row.grad_norm, 1.0, v.loss, v.lr, v.row.n_active / 4, 0, 1, 4)  # type: ignore[union-attr]
        report = a.check(obs)
        fields = b.check_fields(obs.step, obs.grad_norm, obs.active_share, obs.loss, obs.lr, obs.param_groups)
        if fields is None:
            assert not report.has_anomaly and report.score.hex() == b.score.hex()
        else:
            assert fields == report
    assert a.state_dict() == b.state_dict()


class _NoFastPath(list):  # type: ignore[type-arg]
    """``recent`` that never proves a constant LR: every step takes the full update."""

    def count(self, value: object) -> int:
        return 0


@pytest.mark.parametrize(
    "lrs",
    [
        [1e-3] * 40 + [4e-3] * 5 + [1e-3] * 40,  # flat, a jump, back
        [1e-4 * (i + 1) for i in range(10)] + [1e-3] * 30 + [5e-4, 1e-3, 1e-3] * 5,  # warm-up, dips
        [0.0] * 10 + [None] * 5 + [1e-3] * 10 + [math.nan] + [1e-3] * 10,  # zero, none, NaN
    ],
)
def test_the_constant_lr_fast_path_changes_nothing(lrs: list[float | None]) -> None:
    fast, full = ScheduleStats(), ScheduleStats()
    full.recent = _NoFastPath()
    for i, lr in enumerate(lrs):
        groups = 2 if i == 30 else 1
        fast.observe(lr, groups, warmup_steps=5, jump_ratio=3.0)
        full.observe(lr, groups, warmup_steps=5, jump_ratio=3.0)
        assert dataclasses.asdict(_View(fast)) == dataclasses.asdict(_View(full)), i


@dataclasses.dataclass
class _View:
    """Every slot of a ``ScheduleStats`` (NaN-safe for comparison: as ``repr``)."""

    state: str

    def __init__(self, st: ScheduleStats) -> None:
        self.state = repr(st.state())


def _health_with_min_max(n_tensors: int, n_active: float, grad_norm: float, max_tensor_norm: float) -> tuple:
    """``health_score`` as it was written with ``min``/``max`` (before they were inlined)."""
    if n_tensors == 0 or not math.isfinite(grad_norm):
        return 0.0, (n_active / n_tensors if n_tensors else 0.0), math.nan
    active = n_active / n_tensors
    if grad_norm <= 0.0:
        return 0.0, active, math.nan
    conc = min(1.0, (max_tensor_norm / grad_norm) ** 2)
    spread = 1.0 if n_tensors == 1 else max(0.0, (1.0 - conc) / (1.0 - 1.0 / n_tensors))
    return active * spread, active, conc


def test_health_score_gives_what_its_min_max_form_gives() -> None:
    """Bit for bit (``repr``: NaN, -0.0), on edge values and random ones, errors included."""
    from wandb_gradema.norms import health_score

    def outcome(f, *args):  # type: ignore[no-untyped-def]
        try:
            return repr(f(*args))
        except ArithmeticError as exc:
            return type(exc).__name__

    rng = random.Random(0)
    edges = [0.0, -0.0, 1e-300, 0.5, 1.0, 2.0, 1e300, math.inf, math.nan, -1.0]
    for n_tensors in (0, 1, 2, 7):
        for g in edges + [rng.random() for _ in range(5)]:
            for m in edges + [3 * rng.random() for _ in range(5)]:
                for active in (0.0, 1.0, float(n_tensors)):
                    args = (n_tensors, active, g, m)
                    assert outcome(health_score, *args) == outcome(_health_with_min_max, *args), args
