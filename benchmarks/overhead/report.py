"""Printing: the environment header, one table per model, and the issue's targets.

Hot-path targets are judged on the in-step time (the monitor's hook and ``observe_loss``,
timed inside real steps: precise to a microsecond) and shown on the whole-step extra time too
(which includes indirect costs but carries the run-to-run noise of a whole step). The other
targets are judged on whole steps.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import psutil
import torch

from .timing import Estimate
from .variants import VARIANTS

__all__ = ["CpuClock", "Targets", "format_table", "header", "hot_floor_ratio", "watch1000_note"]

#: The issue's targets.
HOT_VS_FLOOR = 1.15
HOT_FIXED_US = 50.0
HOT_VS_CLIP = 0.65
DEFAULTS_LARGE = 1.05
DEFAULTS_SMALL = 1.10
LARGE_MODEL = 5_000_000 * 0.95  # "≥ 5M parameters", allowing the 5M models' rounding
WATCH_FACTOR = 50.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(threads: int, device: str = "cpu") -> str:
    """Date, machine, versions and load: what a reader needs to compare two runs."""
    import wandb

    gpu = f"; device {device}: {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    mem = psutil.virtual_memory().total / 2**30
    return "\n".join(
        [
            f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"machine: {_cpu_model()}, {os.cpu_count()} logical cores, {mem:.0f} GiB; "
            f"{platform.system()} {platform.release()}{gpu}",
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, set to {threads}), "
            f"wandb {wandb.__version__}, python {platform.python_version()}",
            f"load average at start (1, 5, 15 min): {load}",
        ]
    )


class CpuClock:
    """CPU time used by the whole machine, and by this process and its children (W&B's service)."""

    def __init__(self) -> None:
        self._machine0, self._own0 = self._read()

    @staticmethod
    def _read() -> tuple[float, float]:
        t = psutil.cpu_times()
        machine = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
        me = psutil.Process()
        own = sum(me.cpu_times()[:2])
        for child in me.children(recursive=True):
            try:
                own += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return machine, own

    def summary(self, wall_s: float) -> str:
        """How busy the machine was since construction, ours and others'."""
        machine, own = self._read()
        total, mine = machine - self._machine0, own - self._own0
        cores = os.cpu_count() or 1
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        return (
            f"wall time {wall_s:.0f} s; CPU used: this benchmark (with W&B's service) {mine:.0f} core-s, "
            f"other processes {max(0.0, total - mine):.0f} core-s "
            f"({max(0.0, total - mine) / (wall_s * cores):.0%} of the machine); load average now: {load}"
        )


def _ci(lo: float, hi: float, fmt: str) -> str:
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def format_table(title: str, estimates: Mapping[str, Estimate | None], notes: list[str]) -> str:
    """One model's table: ratio to the bare step, extra time per step, in-step time, windows."""
    rows = [
        f"{'variant':<42} {'ratio to bare [95% CI]':<25} {'extra µs/step [95% CI]':<30} "
        f"{'in-step µs':>10} {'bare ms':>8} {'windows':>8}"
    ]
    for key, est in estimates.items():
        label = VARIANTS[key].label
        if est is None:
            rows.append(f"{label:<42} (every window dropped: the machine was busy)")
            continue
        direct = f"{est.direct_us:.1f}" if VARIANTS[key].in_step else "-"
        ratio = f"{est.ratio:.3f} {_ci(*est.ratio_ci, '.3f')}"
        extra = f"{est.extra_us:+.0f} {_ci(*est.extra_ci, '+.0f')}"
        rows.append(
            f"{label:<42} {ratio:<25} {extra:<30} {direct:>10} {est.bare_ms:>8.2f} {est.kept:>4}/{est.total:<3}"
        )
    return "\n".join([title, *rows, *notes])


@dataclass(frozen=True)
class Targets:
    """The issue's targets for one model, from its estimates."""

    estimates: Mapping[str, Estimate | None]
    n_params: int

    def lines(self) -> list[str]:
        """One line per target: [met]/[missed], the figures, and the margin."""
        e = self.estimates
        out: list[str] = []
        hot, floor, clip, gtn = (e.get(k) for k in ("hot", "floor", "clip", "total_norm"))
        if hot and floor:
            out.append(self._hot_vs_floor(hot, floor))
        if hot and gtn:
            out.append(self._hot_vs(hot, gtn, 1.0, "hot path never slower than get_total_norm"))
        if hot and clip:
            out.append(self._hot_vs(hot, clip, HOT_VS_CLIP, f"hot path ≤ {HOT_VS_CLIP}× clip_grad_norm_"))
        defaults = e.get("defaults")
        if defaults:
            out.append(self._defaults(defaults))
        watch1 = e.get("watch1")
        if defaults and watch1:
            out.append(self._vs_watch(defaults, watch1))
        return out

    @staticmethod
    def _mark(ok: bool) -> str:
        return "[met]   " if ok else "[missed]"

    def _hot_vs_floor(self, hot: Estimate, floor: Estimate) -> str:
        limit = HOT_VS_FLOOR * floor.direct_us + HOT_FIXED_US
        whole_limit = HOT_VS_FLOOR * floor.extra_us + HOT_FIXED_US
        ok = hot.direct_us <= limit
        return (
            f"{self._mark(ok)} hot path ≤ {HOT_VS_FLOOR}× floor + {HOT_FIXED_US:.0f} µs: in-step "
            f"{hot.direct_us:.1f} µs vs limit {limit:.1f} µs (floor {floor.direct_us:.1f} µs; "
            f"{_by(hot.direct_us, limit)}); whole step {hot.extra_us:+.0f} µs vs limit {whole_limit:+.0f} µs; "
            f"hot/floor in-step {hot.direct_us / max(floor.direct_us, 1e-9):.2f}×"
        )

    def _hot_vs(self, hot: Estimate, other: Estimate, factor: float, what: str) -> str:
        limit = factor * other.direct_us
        ok = hot.direct_us <= limit
        return (
            f"{self._mark(ok)} {what}: in-step {hot.direct_us:.1f} µs vs limit {limit:.1f} µs "
            f"({_by(hot.direct_us, limit)}); whole step {hot.extra_us:+.0f} µs vs "
            f"{factor:g}× {other.extra_us:+.0f} µs"
        )

    def _defaults(self, d: Estimate) -> str:
        limit = DEFAULTS_LARGE if self.n_params >= LARGE_MODEL else DEFAULTS_SMALL
        ok = d.ratio <= limit
        sure = (
            "CI inside"
            if d.ratio_ci[1] <= limit
            else ("CI outside" if d.ratio_ci[0] > limit else "CI straddles")
        )
        return (
            f"{self._mark(ok)} defaults ≤ {limit:.2f}× bare: {d.ratio:.3f} {_ci(*d.ratio_ci, '.3f')} "
            f"({sure} the limit; in-step {d.direct_us:.1f} µs = {d.direct_us / (d.bare_ms * 1e3):.2%} of a step)"
        )

    def _vs_watch(self, d: Estimate, w: Estimate) -> str:
        cost = max(d.extra_us, d.direct_us)  # noise can make the whole-step extra ≤ 0
        factor = w.extra_us / cost if cost > 0 else float("inf")
        upper = max(d.extra_ci[1], d.direct_us)
        worst = w.extra_ci[0] / upper if upper > 0 else float("inf")
        in_step = w.extra_us / d.direct_us if d.direct_us > 0 else float("inf")
        return (
            f"{self._mark(factor >= WATCH_FACTOR)} ≥ {WATCH_FACTOR:.0f}× cheaper than wandb.watch(log_freq=1): "
            f"{w.extra_us:+.0f} µs vs {cost:.0f} µs per step = {factor:.0f}× "
            f"(defaults' cost = max(whole-step extra, in-step); worst case over the CIs {worst:.0f}×; "
            f"against the defaults' in-step time alone {in_step:.0f}×)"
        )


def _by(value: float, limit: float) -> str:
    if value <= limit:
        return f"{limit - value:.1f} µs to spare"
    return f"over by {value - limit:.1f} µs, {value / limit - 1:.0%}"


def watch1000_note(w1000: Estimate | None, w1: Estimate | None) -> str | None:
    """wandb.watch(log_freq=1000) logs once per 1000 steps: say how many the timing saw."""
    if w1000 is None:
        return None
    logs = w1000.steps // 1000
    note = f"  wandb.watch(log_freq=1000): {w1000.steps} steps timed (about {logs} with histograms)"
    if w1 is not None and logs == 0:
        note += f"; amortised, its histogram step adds ≈ {w1.extra_us / 1000:.0f} µs/step more"
    return note


def hot_floor_ratio(hot: Estimate | None, floor: Estimate | None) -> str | None:
    """Hot path over floor, extra time per step, with a CI from independent bootstraps."""
    if hot is None or floor is None:
        return None
    n = min(len(hot.boot_extra), len(floor.boot_extra))
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = hot.boot_extra[:n] / floor.boot_extra[:n]
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    point = hot.extra_us / floor.extra_us if floor.extra_us else float("nan")
    return (
        f"  hot path / floor: in-step {hot.direct_us / max(floor.direct_us, 1e-9):.2f}×; "
        f"whole-step extra {point:.2f}× [{lo:.2f}, {hi:.2f}] (noisy when the floor is a few µs)"
    )
