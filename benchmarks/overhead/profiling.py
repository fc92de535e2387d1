"""Where the monitor's time goes: cProfile switched on only around the monitor's own work.

The profiler runs only between the probe hooks that bracket the monitor's step pre-hook and
around ``observe_loss``, so forward, backward and AdamW stay out of the listing. cProfile adds
a fixed cost per Python call, so Python-heavy entries look larger than they are; the
unprofiled in-step time per step is printed next to the listing for scale.
"""

from __future__ import annotations

import copy
import cProfile
import os
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

from wandb_gradema import total_grad_norm

from .memory import PACKAGE_DIR
from .variants import Trainer, foreach_floor

__all__ = ["component_lines", "format_profile"]

TOP = 18


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":  # a builtin: name is already "<built-in method ...>" or "<method ...>"
        return name
    short = (
        os.path.relpath(filename, os.path.dirname(PACKAGE_DIR))
        if filename.startswith(PACKAGE_DIR)
        else ("/".join(filename.split(os.sep)[-2:]))
    )
    return f"{name} ({short}:{line})"


def format_profile(profiler: cProfile.Profile, steps: int, direct_us: float) -> str:
    """Top entries by own time, then the package's functions by cumulative time, per step."""
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in stats.values()) or 1e-12
    head = (
        f"{steps} steps profiled; unprofiled in-step time {direct_us:.1f} µs/step; "
        f"profiled {total / steps * 1e6:.1f} µs/step"
    )
    rows = [head, f"  {'self µs/step':>12} {'self %':>7} {'cum µs/step':>11} {'calls/step':>10}  function"]
    by_self = sorted(stats.items(), key=lambda kv: -kv[1][2])[:TOP]
    rows += [_row(func, v, steps, total) for func, v in by_self]
    ours = [(f, v) for f, v in stats.items() if f[0].startswith(PACKAGE_DIR)]
    rows.append(f"  wandb_gradema functions by cumulative time (top {TOP}):")
    rows += [_row(func, v, steps, total) for func, v in sorted(ours, key=lambda kv: -kv[1][3])[:TOP]]
    return "\n".join(rows)


def _row(func: tuple[str, int, str], v: tuple[int, int, float, float, Any], steps: int, total: float) -> str:
    _, ncalls, tt, ct, _ = v
    return (
        f"  {tt / steps * 1e6:>12.1f} {tt / total:>7.1%} {ct / steps * 1e6:>11.1f} "
        f"{ncalls / steps:>10.1f}  {_where(func)}"
    )


def _median_us(fn: Callable[[], Any], calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def component_lines(t: Trainer, calls: int = 50) -> str:
    """The hook's parts timed one by one, unprofiled, through the public API (median µs).

    On fresh gradients of the trainer's model, and on copies of the monitor's tracker,
    detector and policy fed its latest observation: what each part costs, without cProfile's
    per-call inflation. What the hook costs beyond their sum is the monitor's own glue.
    """
    monitor = t.monitor
    assert monitor is not None and monitor.last is not None
    obs, _, report = monitor.last
    x, y = t.batches[0]
    t.spec.loss(t.model, x, y).backward()
    grads = [p.grad for p in t.params if p.grad is not None]
    tracker = copy.deepcopy(monitor.tracker)
    detector = copy.deepcopy(monitor.detector)
    policy = copy.deepcopy(monitor.policy)
    parts = {
        "floor (_foreach_norm per group)": lambda: foreach_floor(t.params),
        "wandb_gradema.total_grad_norm(grads)": lambda: total_grad_norm(grads),
        "GradientEMATracker.update": lambda: tracker.update(obs.grad_norm, obs.health),
        "AnomalyDetector.check (with loss and lr)": lambda: detector.check(obs),
        "EscalationPolicy.update": lambda: policy.update(report),
    }
    rows = [f"  {_median_us(fn, calls):>10.1f} µs  {name}" for name, fn in parts.items()]
    t.optimizer.zero_grad()
    return "\n".join(
        [
            f"hook parts, unprofiled (median of {calls} calls each, back to back: warm caches; right "
            "after backward() the first gradient read costs more, see the floor's in-step time):",
            *rows,
        ]
    )
