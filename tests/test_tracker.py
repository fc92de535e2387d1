"""GradientEMATracker: the classic EMA drift indicators, exactly as documented."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wandb_gradema import GradientEMATracker


@pytest.mark.parametrize(
    ("decay", "inputs", "emas", "drifts"),
    [
        # the first update initialises the EMA; drift is measured before the EMA moves
        (0.5, [1.0, 3.0, 2.0], [1.0, 2.0, 2.0], [0.0, 2.0, 0.0]),
        (0.9, [2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [0.0, 0.0, 0.0]),
        (0.0, [1.0, 4.0, 2.0], [1.0, 4.0, 2.0], [0.0, 3.0, 0.5]),
    ],
)
def test_update_table(decay: float, inputs: list[float], emas: list[float], drifts: list[float]) -> None:
    t = GradientEMATracker(decay=decay, eps=1e-12)
    for x, ema, drift in zip(inputs, emas, drifts):
        out = t.update(x, 1.0)
        assert out.norm_ema == pytest.approx(ema)
        assert out.norm_drift == pytest.approx(drift)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_input_never_moves_the_ema(bad: float) -> None:
    t = GradientEMATracker(decay=0.9)
    t.update(1.0, 1.0)
    out = t.update(bad, 0.5)
    assert out.norm_drift == math.inf and not out.updated
    assert (t.norm_ema, t.health_ema, t.count) == (1.0, 1.0, 1)
    assert t.update(1.0, 1.0).norm_drift == 0.0


def test_nonfinite_first_input_leaves_tracker_uninitialised() -> None:
    t = GradientEMATracker()
    assert math.isnan(t.update(math.nan, 1.0).norm_ema)
    assert t.update(2.0, 1.0).norm_ema == 2.0


def test_state_dict_round_trip_continues_exactly() -> None:
    xs = [1.0, 2.5, 0.7, 3.1, 1.9, 2.2]
    full = GradientEMATracker(decay=0.8)
    outs = [full.update(x, 1 / x) for x in xs]
    first = GradientEMATracker(decay=0.8)
    for x in xs[:3]:
        first.update(x, 1 / x)
    resumed = GradientEMATracker(decay=0.8)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.update(x, 1 / x) for x in xs[3:]] == outs[3:]


def test_load_state_dict_names_bad_keys() -> None:
    with pytest.raises(KeyError, match=r"missing keys \['count'\].*unexpected keys \['bogus'\]"):
        GradientEMATracker().load_state_dict({"norm_ema": 1.0, "health_ema": 1.0, "bogus": 2})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 1.0}, r"`decay` must be in \[0, 1\), got 1"),
        ({"decay": -0.1}, r"`decay` must be in \[0, 1\)"),
        ({"eps": 0.0}, r"`eps` must be in \(0, inf\)"),
        ({"decay": "0.9"}, r"`decay` must be a number"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        GradientEMATracker(**kwargs)


finite = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(min_value=0.0, max_value=0.999))
def test_drift_is_never_negative(xs: list[float], decay: float) -> None:
    t = GradientEMATracker(decay=decay)
    assert all(t.update(x, 1.0).norm_drift >= 0.0 for x in xs)


@given(st.floats(min_value=1e-3, max_value=1e3), st.floats(min_value=1e-3, max_value=1e3))
def test_constant_input_drives_drift_to_zero(start: float, level: float) -> None:
    t = GradientEMATracker(decay=0.9)
    t.update(start, 1.0)
    for _ in range(400):
        out = t.update(level, 1.0)
    assert out.norm_drift < 1e-6
