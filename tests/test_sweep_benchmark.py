"""The sweep benchmark's replays: W&B's hyperband at the controller's cadence, and the sweeps."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sweeps")

from benchmarks.detection.trace import ARRAYS, Trace  # noqa: E402
from benchmarks.sweep.replay import hyperband, sweep_aware, sweep_aware_parallel  # noqa: E402
from benchmarks.sweep.space import SPLITS, draw, sweep_name  # noqa: E402


def _trace(name: str, loss: np.ndarray) -> Trace:
    arrays = {key: np.ones(len(loss)) for key in ARRAYS}
    arrays["loss"] = loss
    return Trace(name=name, split="t", spec={"batch_size": 16}, init_loss=2.3, chance_loss=2.3, n_params=1, arrays=arrays)


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
    # a holdout never shares a sweep with another split (the fresh ones included)
    sweeps = [sweep for split in SPLITS.values() for sweep in split]
    assert len(sweeps) == len(set(sweeps)) and ("digits", 400) in SPLITS["holdout4"] and ("regress", 401) in SPLITS["regress-holdout3"]


def test_one_agent_replays_the_sweep_in_order_and_concurrent_agents_share_running_records() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(400)
    learners = [_trace(f"l{i}", 2.3 * np.exp(-steps / (30 + 10 * i)) + 0.1 + 0.02 * rng.standard_normal(400)) for i in range(3)]
    stuck = [_trace(f"s{i}", 2.3 + 0.01 * rng.standard_normal(400)) for i in range(2)]
    sweep = [*learners, *stuck]
    sequential = sweep_aware(sweep)
    assert sequential[:3] == [None, None, None] and all(s is not None and s < 200 for s in sequential[3:])
    assert sweep_aware_parallel(sweep, agents=1) == sequential
    # five agents at once: nothing has finished when the stuck runs are judged; the learners'
    # running records are all there is, and they never set the bar alone
    assert sweep_aware_parallel(sweep, agents=5) == [None] * 5


def test_plateaus_sets_late_learners_against_never_learners_with_what_the_record_shows() -> None:
    from benchmarks.sweep.plateaus import sweep_rows

    rng = np.random.default_rng(1)
    steps = np.arange(400)

    def run(name: str, loss: np.ndarray, lr: float) -> Trace:
        trace = _trace(name, loss + 0.01 * rng.standard_normal(400))
        trace.arrays["lr"] = np.full(400, lr)
        return trace

    learners = [run(f"l{i}", 2.3 * np.exp(-steps / (20 + 5 * i)) + 0.1, 0.01) for i in range(3)]
    late = run("late", np.where(steps < 150, 2.3, 2.3 * np.exp(-(steps - 150) / 20) + 0.1), 0.01)
    never = run("never", np.full(400, 2.3), 1e-5)
    rows = {name: (cls, feats) for name, cls, feats in sweep_rows([*learners, late, never], 43)}
    # the learners had left the untrained level by step 43: only the two plateaus are compared
    assert set(rows) == {"late", "never"}
    assert rows["late"][0] == "late" and rows["never"][0] == "never"
    # the LR against the learners' median, in decades; neither loss moved by 5 of its noises
    assert abs(rows["late"][1]["lr"]) < 1e-9 and abs(rows["never"][1]["lr"] + 3) < 1e-9
    assert abs(rows["late"][1]["moved"]) < 5 and abs(rows["never"][1]["moved"]) < 5


def test_the_per_family_table_sums_the_splits_replays() -> None:
    from benchmarks.sweep.__main__ import Score, table

    sweep = _sweep()
    one, two, both = Score(), Score(), Score()
    one.add(sweep, [None, None, 29])
    two.add(sweep, [None, 99, None])
    both.add(sweep, [None, None, 29])
    both.add(sweep, [None, 99, None])
    merged = Score()
    merged.merge(one)
    merged.merge(two)
    assert merged == both and merged.replays == 2 and merged.good_stopped == 1 and merged.chance_by_half == 1
    assert "| sweep-aware | 1 / 4 | 2 / 2 | 1 / 2 (50%) |" in table("all digits splits together", {"sweep-aware": merged})
