"""AnomalyDetector: sequences of observations in, the steps (and rules) that escalate out."""

from __future__ import annotations

import math
import random

import pytest

from wandb_gradema import AnomalyDetector, EscalationPolicy, Observation


def _escalations(observations, **options) -> list[tuple[int, tuple[str, ...]]]:
    """Replay observations as the monitor does (detector, then policy); the events fired."""
    detector, policy = AnomalyDetector(**options), EscalationPolicy(cooldown_steps=10_000)
    events = [policy.update(detector.check(o)) for o in observations]
    return [(e.step, e.anomaly_types) for e in events if e is not None]


def _run(n=300, *, norm=None, loss=None, lr=None, active=None, seed=0, loss_noise=0.1):
    """Observations with log-normal gradient-norm noise and batch-noisy losses around curves."""
    rng = random.Random(seed)
    out = []
    for t in range(n):
        g = (norm(t) if norm else 1.0) * math.exp(rng.gauss(0, 0.3))
        loss_t = None if loss is None else loss(t) * math.exp(rng.gauss(0, loss_noise))
        out.append(
            Observation(
                step=t,
                grad_norm=g,
                loss=loss_t,
                lr=None if lr is None else lr(t),
                active_share=1.0 if active is None else active(t),
            )
        )
    return out


def learning(t: float) -> float:
    """A healthy loss curve: 2.3 at init, 0.3 after a couple of hundred steps."""
    return 0.3 + 2.0 * math.exp(-t / 40)


def test_healthy_noisy_training_never_escalates() -> None:
    assert _escalations(_run(loss=learning, lr=lambda t: 0.1)) == []
    assert _escalations(_run()) == []  # gradients only


def test_healthy_warmup_and_cosine_decay_never_escalate() -> None:
    def lr(t):
        return 0.1 * min(1.0, (t + 1) / 50) * (0.5 + 0.5 * math.cos(math.pi * t / 300))

    def norm(t):  # norms grow during warm-up, as they do
        return 1.0 + 3.0 * min(1.0, t / 50)

    assert _escalations(_run(loss=learning, lr=lr, norm=norm)) == []


def test_nonfinite_gradient_escalates_at_once_and_never_enters_the_statistics() -> None:
    obs = _run(60)
    obs[30] = Observation(step=30, grad_norm=math.nan)
    assert _escalations(obs) == [(30, ("nonfinite",))]
    d = AnomalyDetector()
    for o in obs[:30]:
        d.check(o)
    gradient_stats = ("g_slow", "g_fast", "n", "g_first", "peak")
    before = {k: d.state_dict()[k] for k in gradient_stats}
    d.check(obs[30])
    assert {k: d.state_dict()[k] for k in gradient_stats} == before


def test_nonfinite_loss_escalates_at_once() -> None:
    obs = _run(40, loss=learning)
    obs[25] = Observation(step=25, grad_norm=1.0, loss=math.inf)
    assert _escalations(obs) == [(25, ("nonfinite",))]


@pytest.mark.parametrize(
    ("name", "norm", "window", "rule"),
    [
        ("explosion", lambda t: 1.0 if t < 100 else 3.0 ** (t - 99), (101, 105), "grad_explosion"),
        ("explosion from the start", lambda t: 5.0**t, (2, 7), "grad_explosion"),
        ("vanishing", lambda t: 1.0 if t < 50 else 10 ** (-(t - 50) / 15), (110, 130), "grad_vanish"),
    ],
)
def test_gradient_norm_failures(name, norm, window, rule) -> None:
    (event,) = _escalations(_run(norm=norm))
    assert window[0] <= event[0] <= window[1] and rule in event[1], name


def test_dead_units_escalate() -> None:
    (event,) = _escalations(_run(active=lambda t: 1.0 if t < 40 else 0.3))
    assert event == (42, ("dead_units",))


def test_loss_back_at_its_initial_level_escalates() -> None:
    def relapse(t):
        return learning(t) if t < 100 else 2.3

    (event,) = _escalations(_run(loss=relapse, lr=lambda t: 0.1))
    assert 100 <= event[0] <= 110 and "progress_lost" in event[1]


def test_a_spike_that_recovers_does_not_escalate() -> None:
    def spike(t):  # two corrupted batches
        return 20.0 if t in (150, 151) else learning(t)

    assert _escalations(_run(loss=spike, lr=lambda t: 0.1)) == []


def test_no_progress_escalates_once_the_learning_rate_stops_rising() -> None:
    (event,) = _escalations(_run(loss=lambda t: 2.3, lr=lambda t: 0.1))
    assert event[1] == ("no_progress",) and 61 <= event[0] <= 91  # 60 steps, the last 30 flat
    # while the LR warms up (100 steps) the clock does not run: warm-up is not a stall
    (event,) = _escalations(_run(loss=lambda t: 2.3, lr=lambda t: 0.1 * min(1.0, (t + 1) / 100)))
    assert event[1] == ("no_progress",) and 160 <= event[0] <= 190


def test_learning_rate_jump_escalates_at_once_but_a_restart_does_not() -> None:
    (event,) = _escalations(_run(loss=learning, lr=lambda t: 0.01 if t < 150 else 0.1))
    assert event == (150, ("lr_jump",))

    def sgdr(t):  # cosine with warm restarts: back to the earlier peak
        return 0.1 * (0.5 + 0.5 * math.cos(math.pi * (t % 100) / 100))

    assert _escalations(_run(loss=learning, lr=sgdr)) == []


def test_loss_turning_up_while_the_learning_rate_still_rises_escalates() -> None:
    def loss(t):  # learns, then oscillates ever wider as the LR ramp passes the stable range
        return learning(t) if t < 120 else learning(t) * (1 + 0.08 * (t - 120) * (t % 2))

    (event,) = _escalations(_run(loss=loss, lr=lambda t: 0.001 * (t + 1)))
    assert 120 < event[0] < 150 and "unstable_rise" in event[1]


def test_sensitivity_scales_every_score() -> None:
    obs = _run(loss=learning, lr=lambda t: 0.1)
    plain, doubled = AnomalyDetector(), AnomalyDetector(sensitivity=2.0)
    base = [plain.check(o).score for o in obs]
    assert [doubled.check(o).score for o in obs] == pytest.approx([2 * s for s in base])


def test_relative_loss_rules_stay_off_for_a_non_positive_loss() -> None:
    assert _escalations(_run(loss=lambda t: -1.0 - t, lr=lambda t: 0.1)) == []


def test_check_gradient_drift_is_check_on_an_observation() -> None:
    a, b = AnomalyDetector(), AnomalyDetector()
    for o in _run(50, loss=learning, lr=lambda t: 0.1):
        assert a.check(o) == b.check_gradient_drift(o.grad_norm, 1.0, loss=o.loss, lr=o.lr, step=o.step)


def test_state_dict_round_trip_continues_exactly() -> None:
    obs = _run(200, loss=learning, lr=lambda t: 0.05 * min(1.0, (t + 1) / 30))
    full = AnomalyDetector()
    expected = [full.check(o) for o in obs]
    first = AnomalyDetector()
    for o in obs[:90]:
        first.check(o)
    resumed = AnomalyDetector()
    resumed.load_state_dict(first.state_dict())
    assert [resumed.check(o) for o in obs[90:]] == expected[90:]
    with pytest.raises(KeyError, match=r"missing keys \['best'\]"):
        AnomalyDetector().load_state_dict({k: v for k, v in first.state_dict().items() if k != "best"})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sensitivity": 0.0}, ValueError, r"`sensitivity` must be in \(0, inf\), got 0"),
        ({"dead_share": 1.0}, ValueError, r"`dead_share` must be in \[0, 1\)"),
        ({"explode_ratio": 1.0}, ValueError, r"`explode_ratio` must be in \(1, inf\)"),
        ({"loss_window": 0}, ValueError, r"`loss_window` must be an int >= 1"),
        ({"stall_steps": "60"}, TypeError, r"`stall_steps` must be an int, got str"),
        ({"min_progress": 1.0}, ValueError, r"`min_progress` must be in \(0, 1\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        AnomalyDetector(**kwargs)


def test_a_slow_but_steady_learner_is_not_called_dead() -> None:
    def slow(t):  # 2.6% of the initial loss per 30 steps: under 10% by step 60, yet learning
        return 2.3 - 0.002 * t

    # batch noise as for a classifier near chance (the first loss is the initial level)
    assert _escalations(_run(loss=slow, lr=lambda t: 0.01, loss_noise=0.03)) == []
    (event,) = _escalations(_run(loss=lambda t: 2.3 - 0.00005 * t, lr=lambda t: 0.01, loss_noise=0.03))
    assert event[1] == ("no_progress",)
