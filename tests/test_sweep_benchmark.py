"""The sweep benchmark's replays: W&B's hyperband at the controller's cadence, and the sweeps."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sweeps")

from benchmarks.detection.trace import ARRAYS, Trace  # noqa: E402
from benchmarks.sweep.replay import hyperband  # noqa: E402
from benchmarks.sweep.space import SPLITS, draw, sweep_name  # noqa: E402


def _trace(name: str, loss: np.ndarray) -> Trace:
    arrays = {key: np.ones(len(loss)) for key in ARRAYS}
    arrays["loss"] = loss
    return Trace(name=name, split="t", spec={}, init_loss=2.3, chance_loss=2.3, n_params=1, arrays=arrays)


def _sweep() -> list[Trace]:
    steps = np.arange(400)
    fast = _trace("fast", 2.3 * np.exp(-steps / 50) + 0.05)
    slow = _trace("slow", 2.3 * np.exp(-steps / 80) + 0.05)
    stuck = _trace("stuck", np.full(400, 2.3))
    return [fast, slow, stuck]


def test_hyperband_at_every_value_stops_at_the_first_band_and_a_polling_controller_later() -> None:
    # val every 10 steps; the threshold is the median of the runs' values at the band: band 3 (min_iter 3) is the 3rd value, logged at step 29
    assert hyperband(_sweep()) == [None, None, 29]
    assert hyperband(_sweep(), check=100) == [None, None, 99]  # the first check after step 29
    assert hyperband(_sweep(), check=400) == [None, None, None]  # the run ended before any check


def test_the_sweeps_are_task_and_seed_and_keep_digits_draws() -> None:
    assert ("digits", 0) in SPLITS["dev"] and ("regress", 100) in SPLITS["regress-holdout"]
    assert all(task == "digits" for task, _ in SPLITS["holdout3"])
    digits, regress = draw(0), draw(0, task="regress")
    assert [s["lr"] for s in digits] == [s["lr"] for s in regress] and regress[0]["task"] == "regress"
    assert sweep_name("digits", 0) == "s0" and sweep_name("regress", 1) == "regress-s1"
    with pytest.raises(ValueError, match="`task` must be one of"):
        draw(0, task="nope")
