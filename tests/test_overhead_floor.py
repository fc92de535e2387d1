"""``python -m benchmarks.overhead.floor`` splits the floor and the monitor's hook into parts."""

from __future__ import annotations

import math

from benchmarks.overhead.floor import measure_floor, table


def test_the_floor_splits_into_parts_timed_in_step_and_warm() -> None:
    rows = measure_floor(steps=3, warmup=4, warm_reps=20)
    names = [name for name, _, _ in rows]
    assert names[-1].startswith("the step without the monitor") and any("judge" in n for n in names)
    parts = {name: (cold, warm) for name, cold, warm in rows}
    floor_cold, floor_warm = parts["the benchmark's floor (group + _foreach_norm)"]
    assert floor_cold > 0 and floor_warm > 0
    hook, _ = parts["monitor hook, whole (watch() at defaults)"]
    assert hook > 0 and rows[-1][1] > hook  # the step itself is far longer than the hook
    assert all(math.isnan(c) or c > 0 for _, c, _ in rows)
    text = table(rows)
    assert "x bare" in text and len(text.splitlines()) == len(rows) + 1
