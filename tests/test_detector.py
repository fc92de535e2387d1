"""AnomalyDetector: sequences of observations in, the steps (and rules) that escalate out."""

from __future__ import annotations

import copy
import dataclasses
import math
import pickle
import random

import pytest

from wandb_gradema import AnomalyDetector, EscalationPolicy, Observation
from wandb_gradema.rules import loss as loss_rules
from wandb_gradema.rules._window import RollingWindow
from wandb_gradema.rules.loss import theil_sen_start


def _events(observations, **options) -> list[tuple[int, tuple[str, ...], bool]]:
    """Replay observations as the monitor does (detector, then policy): (step, rules, confirmed)."""
    detector, policy = AnomalyDetector(**options), EscalationPolicy(cooldown_steps=10_000)
    events = [policy.update(detector.check(o)) for o in observations]
    return [(e.step, e.anomaly_types, e.confirmed) for e in events if e is not None]


def _escalations(observations, **options) -> list[tuple[int, tuple[str, ...]]]:
    return [(step, rules) for step, rules, _ in _events(observations, **options)]


def _run(n=300, *, norm=None, loss=None, lr=None, active=None, health=None, seed=0, loss_noise=0.1, groups=None):
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
                health=0.6 if health is None else health(t),
                param_groups=1 if groups is None else groups(t),
            )
        )
    return out


def learning(t: float) -> float:
    """A healthy loss curve: 2.3 at init, 0.3 after a couple of hundred steps."""
    return 0.3 + 2.0 * math.exp(-t / 40)


# ---------------------------------------------------------------------------- healthy runs
def test_healthy_noisy_training_never_escalates() -> None:
    assert _escalations(_run(loss=learning, lr=lambda t: 0.1)) == []
    assert _escalations(_run(loss=learning, lr=lambda t: 0.1, loss_noise=0.6)) == []  # batches of 2
    assert _escalations(_run()) == []  # gradients only


def test_healthy_warmup_and_cosine_decay_never_escalate() -> None:
    def lr(t):
        return 0.1 * min(1.0, (t + 1) / 50) * (0.5 + 0.5 * math.cos(math.pi * t / 300))

    def norm(t):  # norms grow during warm-up, as they do
        return 1.0 + 3.0 * min(1.0, t / 50)

    assert _escalations(_run(loss=learning, lr=lr, norm=norm)) == []


def test_warm_restarts_never_escalate() -> None:
    def sgdr(t):  # cosine with warm restarts: back to the earlier peak
        return 0.1 * (0.5 + 0.5 * math.cos(math.pi * (t % 100) / 100))

    def loss(t):  # each restart kicks the loss up a little, then it improves further
        return learning(t) * (1 + 0.5 * math.exp(-(t % 100) / 10))

    assert _escalations(_run(600, loss=loss, lr=sgdr)) == []


def test_a_slow_but_steady_learner_and_a_late_learner_are_not_stalled() -> None:
    def slow(t):  # 1% of the initial loss per 100 steps
        return 2.3 - 0.0002 * t

    def late(t):  # 250 steps on a plateau, then learning
        return 0.7 if t < 250 else 0.1 + 0.6 * math.exp(-(t - 250) / 30)

    # gradients alive (health 0.6): never a stall, however long the plateau
    assert _escalations(_run(600, loss=slow, lr=lambda t: 0.01, loss_noise=0.03)) == []
    assert _escalations(_run(600, loss=late, lr=lambda t: 0.01, loss_noise=0.03)) == []


def test_converged_runs_whose_gradients_vanish_are_not_dead() -> None:
    def loss(t):
        return 2.3 * math.exp(-t / 20) + 1e-6

    def norm(t):  # vanishes with the loss: 1e-6 by the end
        return max(math.exp(-t / 20), 1e-6)

    def active(t):  # tensors with no gradient left
        return 1.0 if t < 200 else 0.3

    assert _escalations(_run(500, loss=loss, norm=norm, active=active, lr=lambda t: 0.1)) == []


# ---------------------------------------------------------------------------- non-finite
def test_nonfinite_gradient_escalates_at_once_confirmed_and_never_enters_the_statistics() -> None:
    obs = _run(60)
    obs[30] = Observation(step=30, grad_norm=math.nan)
    assert _events(obs) == [(30, ("nonfinite",), True)]
    d = AnomalyDetector()
    for o in obs[:30]:
        d.check(o)
    before = d.state_dict()["gradient"]
    d.check(obs[30])
    assert d.state_dict()["gradient"] == before


def test_nonfinite_loss_escalates_at_once() -> None:
    obs = _run(40, loss=learning)
    obs[25] = Observation(step=25, grad_norm=1.0, loss=math.inf)
    assert _events(obs) == [(25, ("nonfinite",), True)]


# ---------------------------------------------------------------------------- gradient rules
@pytest.mark.parametrize(
    ("name", "norm", "active", "window", "rule"),
    [
        ("explosion", lambda t: 1.0 if t < 100 else 3.0 ** min(t - 99, 8), None, (105, 115), "grad_explosion"),
        ("vanishing", lambda t: 1.0 if t < 50 else 10 ** (-(t - 50) / 15), None, (115, 135), "grad_vanish"),
        ("dead units", None, lambda t: 1.0 if t < 40 else 0.3, (45, 50), "dead_units"),
    ],
)
def test_gradient_failures_table(name, norm, active, window, rule) -> None:
    (event, *_) = _events(_run(norm=norm, active=active))
    assert window[0] <= event[0] <= window[1] and rule in event[1], (name, event)


@pytest.mark.parametrize(
    ("name", "norm", "active"),
    [
        ("a burst of 6 corrupted batches", lambda t: 100.0 if 150 <= t < 156 else 1.0, None),
        ("6 steps of zero gradients", None, lambda t: 0.0 if 150 <= t < 156 else 1.0),
    ],
)
def test_gradient_transients_table(name, norm, active) -> None:
    assert _escalations(_run(norm=norm, active=active)) == [], name


@pytest.mark.parametrize("loss", [None, lambda t: 2.3 - 0.002 * t], ids=["gradients only", "loss observed"])
def test_a_norm_excursion_in_the_warm_up_escalates_at_once_and_is_never_prune_grade(loss) -> None:
    """x200 for 5 steps, back after: escalated at the excursion's third step (``norm_spike``,
    telemetry shows its cause), with the loss calm or unobserved; nothing is prune-grade."""
    events = _events(_run(norm=lambda t: 200.0 if 1 <= t <= 5 else 1.0, loss=loss))
    assert events == [(3, ("norm_spike",), False)]


def test_a_norm_growing_10x_over_a_warm_up_of_20_steps_stays_quiet() -> None:
    assert _escalations(_run(norm=lambda t: 10 ** min(t / 20, 1.0), lr=lambda t: 1e-3 * min(t / 20, 1.0))) == []


def test_an_explosion_that_persists_through_the_warm_up_is_judged_by_what_follows() -> None:
    # From step 1 the norm is 1000x and stays; the loss, too: the run is wrecked.
    obs = _run(
        200, norm=lambda t: 1.0 if t == 0 else 1000.0, loss=lambda t: 2.3 if t == 0 else 50.0, lr=lambda t: 0.1
    )
    events = _events(obs)
    # the blow-up escalates at once (loss_spike, not prune-grade); what follows confirms it
    assert events[0] == (3, ("loss_spike", "norm_spike"), False)
    confirmed = next(e for e in events if e[2])
    assert confirmed[0] < 60 and {"above_start", "loss_explosion"} & set(confirmed[1])


# ---------------------------------------------------------------------------- loss rules
def test_loss_back_at_its_initial_level_escalates_and_is_confirmed() -> None:
    def relapse(t):
        return learning(t) if t < 100 else 2.3

    events = _events(_run(loss=relapse, lr=lambda t: 0.1))
    assert 100 <= events[0][0] <= 125 and "progress_lost" in events[0][1]
    assert any(confirmed for *_, confirmed in events)


@pytest.mark.parametrize(
    ("name", "spike"),
    [
        ("two corrupted batches", lambda t: 20.0 if t in (150, 151) else None),
        ("six corrupted batches 3x the start", lambda t: 7.0 if 150 <= t < 156 else None),
        ("ten batches twice as noisy", lambda t: 2.0 * learning(t) if 150 <= t < 160 and t % 2 else None),
    ],
)
def test_loss_spikes_that_recover_table(name, spike) -> None:
    def loss(t):
        s = spike(t)
        return learning(t) if s is None else s

    assert _escalations(_run(loss=loss, lr=lambda t: 0.1)) == [], name


@pytest.mark.parametrize("length", [3, 6, 20])
def test_a_burst_far_above_the_start_after_the_warm_up_escalates_at_once_and_never_prunes(length) -> None:
    """3 losses in a row 5x where the run started (20 against 2.3), after the warm-up: the user is
    told within 2 steps (``loss_spike``), however long the burst; a burst that training absorbs
    is never prune-grade, one that stays is pruned on what the level rules see."""

    def loss(t):
        return 20.0 if 150 <= t < 150 + length else learning(t)

    events = _events(_run(loss=loss, lr=lambda t: 0.1))
    assert events[0] == (152, ("loss_spike",), False)
    if length < 20:
        assert events == [(152, ("loss_spike",), False)]  # nothing else: the level rules wait it out

    def stays(t):
        return learning(t) if t < 150 else 20.0

    events = _events(_run(loss=stays, lr=lambda t: 0.1))
    assert events[0] == (152, ("loss_spike",), False)
    assert any(confirmed for *_, confirmed in events)  # what follows confirms it


def test_a_burst_under_5x_the_start_after_the_warm_up_stays_quiet() -> None:
    """Against the start, not the recent level: 4.5x the start is 14x a converged loss of 0.3, and
    the level rules alone judge it (a burst of up to 6 batches is noise to them)."""

    def loss(t):
        return 10.0 if 150 <= t < 156 else learning(t)

    assert _escalations(_run(loss=loss, lr=lambda t: 0.1)) == []


def test_loss_turning_up_while_the_learning_rate_still_rises_escalates() -> None:
    def loss(t):  # learns, then climbs and oscillates ever wider as the LR ramp passes the stable range
        return learning(t) if t < 120 else learning(t) * (1 + 0.02 * (t - 120)) * (1 + 0.05 * (t - 120) * (t % 2))

    (event, *_) = _escalations(_run(loss=loss, lr=lambda t: 0.001 * (t + 1)))
    assert 120 < event[0] < 150 and "unstable_rise" in event[1]


def test_a_plateau_is_never_a_stall_while_the_gradients_are_alive() -> None:
    alive = _run(400, loss=lambda t: 2.3, lr=lambda t: 0.1)  # health 0.6: a plateau, not a stall
    assert _escalations(alive) == []
    # One tensor (a deep net's head) holding all of the norm: the body of a deep tanh net with a
    # small init sits like this for 200 steps and more before it learns.
    one_sided = _run(400, loss=lambda t: 2.3, lr=lambda t: 0.1, health=lambda t: 0.0)
    assert _escalations(one_sided) == []


def test_a_fine_tune_that_forgets_escalates_and_one_kicked_by_a_fresh_optimizer_does_not() -> None:
    def norm(t):
        return 0.3 if t == 0 else 5.0

    def forgets(t):  # pretrained at 0.03: wrecked at the first step, stays 10x worse
        return 0.03 if t == 0 else 0.3

    def kicked(t):  # jumps 10x, then recovers to below its start within 100 steps
        return 0.03 if t == 0 else 0.02 + 0.3 * math.exp(-t / 25)

    # Both blow up 10x at once (loss_spike: an escalation, telemetry, never a prune by itself);
    # only the one that stays there is prune-grade.
    spike, *rest = _events(_run(300, loss=forgets, norm=norm, lr=lambda t: 1e-2))
    assert spike == (3, ("loss_spike",), False)
    # the loss stays 10x its start: still a blow-up (``loss_spike``) beside the forgetting
    assert set(rest[0][1]) == {"loss_spike", "above_start"} and rest[0][0] < 80 and rest[0][2]
    assert _events(_run(300, loss=kicked, norm=norm, lr=lambda t: 1e-2)) == [(3, ("loss_spike",), False)]


def test_a_fine_tune_that_forgets_without_doubling_escalates_and_is_confirmed() -> None:
    def norm(t):
        return 0.3 if t == 0 else 2.0

    def forgets(t):  # wrecked at the first step (3x), recovers part of the way, settles at 1.6x
        return 2.0 if t == 0 else 3.2 + 2.8 * math.exp(-t / 10)

    events = _events(_run(300, loss=forgets, norm=norm, lr=lambda t: 1e-2, loss_noise=0.03))
    assert events[0][1] == ("above_start",) and events[0][0] < 80
    assert any(confirmed for *_, confirmed in events)
    # Settling at 1.25x is below the floor: a fine-tune kicked by a fresh optimizer can sit 30-40%
    # above its start for tens of steps while it recovers, and per run the two look alike.
    mild = _run(300, loss=lambda t: 2.0 if t == 0 else 2.5 + 2.3 * math.exp(-t / 10), norm=norm, loss_noise=0.03)
    assert _escalations(mild) == []


def test_a_fine_tune_that_settles_back_near_its_start_does_not_escalate() -> None:
    def kicked(t):  # wrecked at the first step, back to 1.05x its start within 40 steps, then learning
        return 2.0 if t == 0 else 2.0 * (1.05 + 1.3 * math.exp(-t / 8)) * (1 - 0.0003 * t)

    obs = _run(300, loss=kicked, norm=lambda t: 0.3 if t == 0 else 2.0, lr=lambda t: 1e-2, loss_noise=0.03)
    assert _escalations(obs) == []


@pytest.mark.parametrize(
    ("level", "start", "earlier", "elapsed", "expected"),
    [
        (1.3, 1.0, 2.0, 80, True),  # fell 35% in a window: back within a window, well inside 2 x 80 steps
        (1.3, 1.0, 1.32, 80, False),  # fell 1.5%: 17 windows to go
        (1.3, 1.0, 1.32, 400, True),  # ... which is within twice the age of a long run
        (1.3, 1.0, 1.2, 80, False),  # rising
        (0.9, 1.0, 2.0, 80, True),  # already back below the start
    ],
)
def test_recovering_table(level, start, earlier, elapsed, expected) -> None:
    assert loss_rules.recovering(level, start, earlier, 32, elapsed) is expected


def test_a_departure_shows_its_norm_rise_in_noise_units_too() -> None:
    # The loss 3x and the norm 3.5x up at the first step (under the 4x of the fixed rule), both
    # far beyond the noise of what follows: the first loss is the start.
    obs = _run(40, loss=lambda t: 1.0 if t == 0 else 3.0, norm=lambda t: 1.0 if t == 0 else 3.5, loss_noise=0.02)
    obs = [dataclasses.replace(o, grad_norm=3.5 * (1 + 0.02 * (o.step % 3)) if o.step else 1.0) for o in obs]
    detector = AnomalyDetector()
    for o in obs:
        detector.check(o)
    assert detector.state_dict()["loss"]["departed"] and detector.state_dict()["loss"]["start"] == obs[0].loss
    noisy = _run(40, loss=lambda t: 1.0 if t == 0 else 3.0, norm=lambda t: 1.0 if t == 0 else 3.5, loss_noise=0.02)
    detector = AnomalyDetector()  # a norm as noisy as its rise is no second sign
    for o in noisy:
        detector.check(o)
    assert not detector.state_dict()["loss"]["departed"]


def test_an_easy_first_batch_of_a_trained_model_is_no_departure() -> None:
    # A well-trained model's batch losses spread by factors; an easy first batch has a low loss
    # *and* a low norm (5x below the rest), but no lower than the spread of the batches after it.
    def loss(t):
        return 0.008 if t == 0 else 0.025

    def norm(t):
        return 0.02 if t == 0 else 0.1

    obs = _run(300, loss=loss, norm=norm, lr=lambda t: 1e-4, loss_noise=0.5, seed=3)
    obs[0] = dataclasses.replace(obs[0], loss=0.008, grad_norm=0.02)  # every later batch is harder
    obs = [dataclasses.replace(o, loss=max(o.loss, 0.0081)) if o.step else o for o in obs]
    detector = AnomalyDetector()
    for o in obs[:12]:
        detector.check(o)
    assert not detector.state_dict()["loss"]["departed"]
    assert _escalations(obs) == []


def test_a_lucky_first_batch_does_not_set_the_start() -> None:
    def loss(t):  # the first batch happens to be 5x below the level; the run learns slowly
        return 0.5 if t == 0 else 2.5 - 0.001 * t

    assert _escalations(_run(400, loss=loss, lr=lambda t: 0.01, loss_noise=0.3)) == []


def test_relative_loss_rules_stay_off_for_a_non_positive_loss() -> None:
    assert _escalations(_run(loss=lambda t: -1.0 - t, lr=lambda t: 0.1)) == []


# ---------------------------------------------------------------------------- schedule rules
def test_learning_rate_jump_in_an_existing_group_escalates_at_once_unconfirmed() -> None:
    events = _events(_run(loss=learning, lr=lambda t: 0.01 if t < 150 else 0.1))
    assert events == [(150, ("lr_jump",), False)]


def test_learning_rate_jump_followed_by_lasting_trouble_is_confirmed_by_the_loss_rules() -> None:
    def loss(t):  # the LR bug wrecks the run ten steps later
        return learning(t) if t < 160 else 2.3

    events = _events(_run(loss=loss, lr=lambda t: 0.01 if t < 150 else 0.1))
    assert events[0] == (150, ("lr_jump",), False)
    (step, rules, _), *_ = [e for e in events if e[2]]
    assert "progress_lost" in rules and 160 < step < 190  # the jump is context, not evidence


def test_a_run_that_survives_a_learning_rate_jump_is_never_confirmed() -> None:
    def loss(t):  # eight bad steps after the jump, then training goes on
        return 1.5 if 150 <= t < 158 else learning(t)

    events = _events(_run(loss=loss, lr=lambda t: 0.01 if t < 150 else 0.1))
    assert events and events[0][:2] == (150, ("lr_jump",))
    assert not any(confirmed for *_, confirmed in events)


def test_without_a_loss_a_norm_that_explodes_after_a_jump_is_confirmed() -> None:
    obs = _run(lr=lambda t: 0.01 if t < 150 else 0.1, norm=lambda t: 1.0 if t < 152 else 50.0)
    events = _events(obs)
    assert events[0] == (150, ("lr_jump",), False)
    (step, rules, _), *_ = [e for e in events if e[2]]
    assert "lr_jump" in rules and step < 175


def test_a_new_param_group_with_a_higher_lr_is_not_a_jump_by_itself() -> None:
    obs = _run(loss=learning, lr=lambda t: 1e-4 if t < 150 else 1e-3, groups=lambda t: 1 if t < 150 else 2)
    assert _escalations(obs) == []


def swinging(t: float, *, every: int, length: int, height: float = 2.3, stay_from: int | None = None) -> float:
    """Learns, then swings back up to ``height`` for ``length`` steps every ``every`` steps and
    comes back (SGD with a momentum of 0.99); from ``stay_from`` on it stays up (diverged)."""
    if stay_from is not None and t >= stay_from:
        return height
    if t >= 150 and (t - 150) % every < length:
        return height
    return learning(t)


@pytest.mark.parametrize(
    ("name", "loss", "escalates", "confirmed"),
    [
        ("swings back to its start for 40 steps, twice", lambda t: swinging(t, every=250, length=40), True, False),
        ("swings 80% of the way back for 60 steps", lambda t: swinging(t, every=250, length=60, height=1.9), True, False),
        ("short swings every 100 steps", lambda t: swinging(t, every=100, length=25), True, False),
        ("swings, then relapses to its start for good", lambda t: swinging(t, every=250, length=40, stay_from=450), True, True),
    ],
)  # fmt: skip
def test_a_loss_that_swings_and_comes_back_is_never_prune_grade_table(name, loss, escalates, confirmed) -> None:
    events = _events(_run(700, loss=loss, lr=lambda t: 0.1))
    assert bool(events) == escalates, name
    assert any(c for *_, c in events) == confirmed, name
    if confirmed:  # the relapse that stays: prune-grade once it has held, well before the end
        step = next(step for step, _, c in events if c)
        assert 450 < step < 450 + 3 * 32 + 12, name


# ---------------------------------------------------------------------------- prune bar
def test_only_persistent_or_corroborated_anomalies_are_confirmed() -> None:
    def relapse(t):  # a relapse that lasts: progress_lost, later with dead units
        return learning(t) if t < 100 else 2.3

    def explosion(t):  # a loss that explodes and stays there: loss_explosion
        return learning(t) if t < 100 else 25.0

    observations = _run(loss=explosion, lr=lambda t: 0.1)
    alone = _events(observations)
    first, *_ = alone
    # the blow-up (25 is 11x the start) escalates at once, as an excursion: never prune-grade ...
    assert first == (102, ("loss_spike",), False)
    detector = AnomalyDetector()
    level = next(o.step for o in observations if "loss_explosion" in detector.check(o).anomaly_types)
    confirmed = [step for step, _, c in alone if c]
    assert confirmed and confirmed[0] - level == 11  # ... the prune once the level rule has held 12 steps
    # A relapse to the start, alone, is prune-grade once it has held there for two trend
    # windows (a loss that swings comes back sooner), then for 12 steps.
    relapsed = _events(_run(loss=relapse, lr=lambda t: 0.1))
    first, *_ = relapsed
    confirmed = [step for step, _, c in relapsed if c]
    assert "progress_lost" in first[1] and not first[2]
    assert confirmed and 2 * 32 < confirmed[0] - first[0] < 2 * 32 + 20
    both = _events(_run(loss=relapse, lr=lambda t: 0.1, active=lambda t: 1.0 if t < 110 else 0.2))
    assert both[0][2] and set(both[0][1]) == {"progress_lost", "dead_units"}  # two families agree


# ---------------------------------------------------------------------------- API
def test_sensitivity_scales_every_score() -> None:
    obs = _run(loss=learning, lr=lambda t: 0.1)
    plain, doubled = AnomalyDetector(), AnomalyDetector(sensitivity=2.0)
    base = [plain.check(o).score for o in obs]
    assert [doubled.check(o).score for o in obs] == pytest.approx([2 * s for s in base])


def test_check_gradient_drift_is_check_on_an_observation() -> None:
    a, b = AnomalyDetector(), AnomalyDetector()
    for o in _run(50, loss=learning, lr=lambda t: 0.1):
        expected = a.check(Observation(step=o.step, grad_norm=o.grad_norm, loss=o.loss, lr=o.lr))
        assert expected == b.check_gradient_drift(o.grad_norm, 1.0, loss=o.loss, lr=o.lr, step=o.step)


def test_a_detector_copied_or_pickled_mid_run_continues_exactly() -> None:
    """The detector keeps its per-step scratch (findings, the loss view) between steps: a copy
    taken right after an anomalous step (Lightning deep-copies a user's detector; a pickled one
    crosses processes) decides the rest of the run exactly as the original."""
    obs = _run(260, loss=lambda t: learning(t) if t < 150 else 2.3, lr=lambda t: 0.05)
    original = AnomalyDetector()
    reports = [original.check(o) for o in obs[:200]]
    assert reports[-1].has_anomaly
    copies = [copy.deepcopy(original), pickle.loads(pickle.dumps(original))]
    rest = [original.check(o) for o in obs[200:]]
    for other in copies:
        assert [other.check(o) for o in obs[200:]] == rest


def test_state_dict_round_trip_continues_exactly() -> None:
    def loss(t):
        return learning(t) if t < 150 else 2.3

    obs = _run(300, loss=loss, lr=lambda t: 0.05 * min(1.0, (t + 1) / 30), active=lambda t: 1.0 if t < 200 else 0.3)
    full = AnomalyDetector()
    expected = [full.check(o) for o in obs]
    assert any(r.has_anomaly for r in expected[150:])
    for cut in (5, 90, 160, 215):
        first = AnomalyDetector()
        for o in obs[:cut]:
            first.check(o)
        resumed = AnomalyDetector()
        resumed.load_state_dict(first.state_dict())
        assert [resumed.check(o) for o in obs[cut:]] == expected[cut:], cut
    state = first.state_dict()
    with pytest.raises(KeyError, match=r"missing keys \['episode'\]"):
        AnomalyDetector().load_state_dict({k: v for k, v in state.items() if k != "episode"})
    with pytest.raises(KeyError, match=r"AnomalyDetector\['loss'\].*missing keys \['best'\]"):
        AnomalyDetector().load_state_dict({**state, "loss": {k: v for k, v in state["loss"].items() if k != "best"}})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sensitivity": 0.0}, ValueError, r"`sensitivity` must be in \(0, inf\), got 0"),
        ({"dead_share": 1.0}, ValueError, r"`dead_share` must be in \[0, 1\)"),
        ({"explode_ratio": 1.0}, ValueError, r"`explode_ratio` must be in \(1, inf\)"),
        ({"burst_steps": 0}, ValueError, r"`burst_steps` must be an int >= 1"),
        ({"stall_steps": "60"}, TypeError, r"`stall_steps` must be an int, got str"),
        ({"min_progress": 1.0}, ValueError, r"`min_progress` must be in \(0, 1\)"),
        ({"trend_window": 4}, ValueError, r"`trend_window` must be an int >= 8"),
        ({"confirm_steps": 0}, ValueError, r"`confirm_steps` must be an int >= 1"),
        ({"loss_z_threshold": -1.0}, ValueError, r"`loss_z_threshold` must be in \(0, inf\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        AnomalyDetector(**kwargs)


# ---------------------------------------------------------------------------- statistics
def test_rolling_window_keeps_median_quantiles_and_mann_kendall_exactly() -> None:
    rng = random.Random(3)
    window = RollingWindow(16, trend=True)
    seen: list[float] = []
    for i in range(200):
        x = rng.gauss(0.01 * i, 1.0)
        window.push(x)
        seen = (seen + [x])[-16:]
        ordered = sorted(seen)
        assert window.sorted == ordered
        s = sum((b > a) - (b < a) for j, a in enumerate(seen) for b in seen[j + 1 :])
        assert window.s == s
    assert window.median() == pytest.approx(0.5 * (ordered[7] + ordered[8]))
    up = RollingWindow(32, trend=True)
    for i in range(32):
        up.push(i + rng.gauss(0, 0.1))
    assert up.trend_z() > 5 and up.quantile(0.0) == min(up.values)


@pytest.mark.parametrize(
    ("values", "start"),
    [
        ([16.0, 8.0, 4.0, 2.0, 1.0], 16.0),  # a fall by factors is traced back to where it began
        ([2.0, 20.0, 200.0, 2e3, 2e4], 2.0),  # so is an explosion
        ([2.0, 2.0, 50.0, 2.0, 2.0], 2.0),  # one corrupted batch cannot set it
        ([1.0, 4.0, 1.0, 4.0, 1.0, 4.0], 2.0),  # noise around a level: the (geometric) level
        ([3.0, 2.5, 2.0, 1.5, 1.0], 3.0),  # a straight fall: the line in log space, kept in range
        ([5.0, 2.0, 13.0, 40.0, 12.0, 9.0, 17.0, 4.0, 12.0], 12.0),  # noise, no trend: the median
        ([-1.0, -2.0, -3.0, -4.0, -5.0], -1.0),  # not positive: linear
    ],
)
def test_theil_sen_start_table(values, start) -> None:
    assert theil_sen_start(values) == pytest.approx(start)


def test_without_a_loss_silent_tensors_for_the_stall_window_are_a_stall() -> None:
    silent = _run(400, lr=lambda t: 0.1, active=lambda t: 0.2)  # no loss observed
    events = _events(silent)
    assert events[0][1] == ("dead_units",) and events[0][0] < 20
    detector = AnomalyDetector()
    stalled = [o.step for o in silent if "stalled" in detector.check(o).anomaly_types]
    assert stalled and 195 <= stalled[0] <= 210  # ... and, after the stall window, stalled too
    assert _escalations(_run(400, lr=lambda t: 0.1, health=lambda t: 0.0)) == []  # one-sided, alive: nothing
