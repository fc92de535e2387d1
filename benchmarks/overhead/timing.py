"""Interleaved timing with busy-window rejection, and paired estimates with bootstrap CIs.

A phase runs the chain ``A v1 A v2 A ... vk A`` over and over (variant order shuffled every
round), where ``A`` is a block of bare steps and ``vi`` a block of one variant's steps. Each
variant block is judged against the bare blocks on both sides of it: the window ``(A, vi, A')``
is dropped when ``A`` and ``A'`` disagree by more than the tolerance (the machine was busy),
otherwise the variant is compared with their mean. Estimates are ratios of summed times, not
means of per-window ratios: logging steps are rare and expensive, and a mean of (log) ratios
would underweight exactly them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .variants import Trainer

__all__ = ["Estimate", "Samples", "estimate", "run_chain", "warm_up"]

#: Bootstrap resamples for every confidence interval.
N_BOOT = 4000


@dataclass
class Samples:
    """The windows of one variant: bare block before, variant block, bare block after.

    Times are nanoseconds per block of ``block`` steps; ``direct`` is the variant's in-step
    time within its block.
    """

    block: int
    before: list[int] = field(default_factory=list)
    variant: list[int] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    direct: list[int] = field(default_factory=list)

    def add(self, before: int, variant: tuple[int, int], after: int) -> None:
        """Record one window."""
        self.before.append(before)
        self.variant.append(variant[0])
        self.direct.append(variant[1])
        self.after.append(after)

    def quiet(self, tolerance: float) -> np.ndarray:
        """Mask of the windows whose two bare blocks agree within ``tolerance`` (relative)."""
        a, b = np.asarray(self.before, float), np.asarray(self.after, float)
        return np.abs(a - b) <= tolerance * np.minimum(a, b)


@dataclass(frozen=True)
class Estimate:
    """A variant against the bare step, over the quiet windows.

    Attributes:
        ratio, ratio_ci: variant time / bare time, with its 95% bootstrap interval.
        extra_us, extra_ci: extra wall time per step (µs), with its 95% interval.
        direct_us: the variant's own in-step time per step (µs).
        bare_ms: the bare step (ms), mean over the quiet windows.
        kept, total: quiet windows used, windows timed.
        steps: variant steps in the quiet windows.
        boot_extra: bootstrap draws of ``extra_us`` (for ratios between variants).
    """

    ratio: float
    ratio_ci: tuple[float, float]
    extra_us: float
    extra_ci: tuple[float, float]
    direct_us: float
    bare_ms: float
    kept: int
    total: int
    steps: int
    boot_extra: np.ndarray


def estimate(samples: Samples, tolerance: float, rng: np.random.Generator) -> Estimate | None:
    """Paired estimate over the quiet windows; None when no window was quiet."""
    mask = samples.quiet(tolerance)
    n = int(mask.sum())
    if n == 0:
        return None
    per_step = 1.0 / samples.block
    bare = (np.asarray(samples.before, float)[mask] + np.asarray(samples.after, float)[mask]) / 2 * per_step
    var = np.asarray(samples.variant, float)[mask] * per_step
    direct = np.asarray(samples.direct, float)[mask] * per_step
    idx = rng.integers(0, n, size=(N_BOOT, n))
    ratios = var[idx].sum(axis=1) / bare[idx].sum(axis=1)
    extras = (var[idx] - bare[idx]).mean(axis=1) / 1e3
    return Estimate(
        ratio=float(var.sum() / bare.sum()),
        ratio_ci=_interval(ratios),
        extra_us=float((var - bare).mean() / 1e3),
        extra_ci=_interval(extras),
        direct_us=float(direct.mean() / 1e3),
        bare_ms=float(bare.mean() / 1e6),
        kept=n,
        total=len(mask),
        steps=n * samples.block,
        boot_extra=extras,
    )


def _interval(draws: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def warm_up(trainers: Mapping[str, Trainer], steps: int) -> None:
    """Run ``steps`` untimed steps on every trainer (allocator, caches, AdamW state, W&B setup)."""
    for t in trainers.values():
        for _ in range(steps):
            t.step()


def run_chain(
    bare: Trainer,
    variants: Mapping[str, Trainer],
    *,
    block: int,
    budget_s: float,
    min_rounds: int,
    max_rounds: int,
    rng: random.Random,
) -> dict[str, Samples]:
    """Time ``A v1 A v2 ... A`` rounds until the budget is spent (at least ``min_rounds``)."""
    samples = {key: Samples(block) for key in variants}
    deadline = time.monotonic() + budget_s
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and time.monotonic() < deadline):
        order = rng.sample(list(variants), len(variants))
        before = bare.timed(block)[0]
        for key in order:
            timed = variants[key].timed(block)
            after = bare.timed(block)[0]
            samples[key].add(before, timed, after)
            before = after
        rounds += 1
    return samples
