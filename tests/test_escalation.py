"""EscalationPolicy: patience, critical anomalies, cooldown and the telemetry window."""

from __future__ import annotations

import pytest

from wandb_gradema import AnomalyReport, EscalationPolicy


def _reports(pattern: str) -> list[AnomalyReport]:
    """'.' normal, 'a' anomalous, 'P' anomalous and prune-grade (confirmed), 'I' anomalous and
    immediate (an LR jump), 'C' critical; one report per character."""
    return [
        AnomalyReport(
            step=i,
            has_anomaly=c != ".",
            anomaly_types=() if c == "." else ("x",),
            details={} if c == "." else {"x": f"seen at {i}"},
            critical=c == "C",
            confirmed=c == "P",
            immediate=c == "I",
        )
        for i, c in enumerate(pattern)
    ]


@pytest.mark.parametrize(
    ("pattern", "patience", "cooldown", "fired"),
    [
        ("..a.aa.aaa..", 3, 100, [9]),  # needs 3 in a row
        ("aaaaaaaaaa", 3, 2, [2, 5, 8]),  # cooldown of 2 quiet steps between events
        ("..C......", 3, 100, [2]),  # critical: at once
        ("aaC", 5, 100, [2]),
        ("a.a.a.a.a.", 2, 0, []),  # never two in a row
        ("aaaa", 1, 0, [0, 1, 2, 3]),
        ("aaa.aaa", 3, 0, [2, 6]),
    ],
)
def test_fired_steps_table(pattern: str, patience: int, cooldown: int, fired: list[int]) -> None:
    policy = EscalationPolicy(patience=patience, cooldown_steps=cooldown)
    events = [e for r in _reports(pattern) if (e := policy.update(r)) is not None]
    assert [e.step for e in events] == fired


@pytest.mark.parametrize(
    ("pattern", "patience", "cooldown", "fired"),
    [
        ("aaaaaaPPP", 3, 100, [(2, False), (6, True)]),  # the prune-grade report fires inside the cooldown
        ("aaaPPPPPP", 3, 100, [(2, False), (3, True)]),  # once: not again until its own cooldown ends
        ("..C......", 3, 100, [(2, True)]),  # critical: at once, and prune-grade
        ("..PPP....", 3, 100, [(2, True)]),  # confirmed from the start: one confirmed event
        ("..I..aaa.", 3, 100, [(2, False)]),  # immediate: at once, not prune-grade, then the cooldown
        ("..I..aaPP", 3, 100, [(2, False), (7, True)]),  # ... unless confirmed evidence follows
        ("aaP...aaP", 3, 2, [(2, True), (8, True)]),  # a new confirmed event after the cooldown
    ],
)
def test_confirmed_events_table(pattern: str, patience: int, cooldown: int, fired: list[tuple[int, bool]]) -> None:
    policy = EscalationPolicy(patience=patience, cooldown_steps=cooldown)
    events = [e for r in _reports(pattern) if (e := policy.update(r)) is not None]
    assert [(e.step, e.confirmed) for e in events] == fired


def test_adopting_a_confirmed_escalation_blocks_confirmed_ones_too() -> None:
    policy = EscalationPolicy(patience=1, cooldown_steps=5)
    policy.adopt(0)
    assert policy.update(_reports("P")[0]) is not None  # another rank's unconfirmed one: prune still allowed
    policy = EscalationPolicy(patience=1, cooldown_steps=5)
    policy.adopt(0, confirmed=True)
    assert [policy.update(r) for r in _reports("PPP")] == [None, None, None]


def test_event_carries_reasons_and_where_the_streak_began() -> None:
    policy = EscalationPolicy(patience=3)
    events = [e for r in _reports("..aaa") if (e := policy.update(r)) is not None]
    (event,) = events
    assert event.first_anomaly_step == 2
    assert event.reasons == ("seen at 4",)  # latest wording per rule
    assert event.anomaly_types == ("x",)


def test_telemetry_window_follows_an_escalation() -> None:
    policy = EscalationPolicy(patience=1, telemetry_steps=3)
    assert not policy.telemetry_active(0)
    policy.update(_reports("C")[0])
    assert [policy.telemetry_active(s) for s in range(5)] == [True, True, True, True, False]


def test_state_dict_round_trip() -> None:
    reports = _reports("..aa.aaaa..aaaP.aaPPa")
    full = EscalationPolicy(patience=3, cooldown_steps=2)
    expected = [full.update(r) for r in reports]
    half = EscalationPolicy(patience=3, cooldown_steps=2)
    for r in reports[:6]:
        half.update(r)
    resumed = EscalationPolicy(patience=3, cooldown_steps=2)
    resumed.load_state_dict(half.state_dict())
    assert [resumed.update(r) for r in reports[6:]] == expected[6:]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": 0}, r"`patience` must be an int >= 1, got 0"),
        ({"cooldown_steps": -1}, r"`cooldown_steps` must be an int >= 0"),
        ({"telemetry_steps": 2.5}, r"`telemetry_steps` must be an int"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        EscalationPolicy(**kwargs)
