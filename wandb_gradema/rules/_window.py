"""RollingWindow: the last ``size`` values of a stream, kept in arrival order and sorted.

Every robust statistic the rules use is read from one of these in O(1) (median, quantiles) or
O(log n) (ranks), and each step costs one ``bisect`` insert and one removal: a window of 64
floats costs well under a microsecond per step in CPython. ``push`` returns the new median. With ``trend=True`` the Mann-Kendall statistic
of the window is kept up to date the same way, so a trend test over the last 32 losses never
needs its O(n^2) pairs.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from typing import Any

__all__ = ["RollingWindow"]


class RollingWindow:
    """The last ``size`` values, in order (``values``) and sorted, with their Mann-Kendall S.

    ``S = sum over pairs i < j of sign(x_j - x_i)``: positive when later values tend to be
    larger. Under no trend (independent noise) it has mean 0 and variance
    ``n (n - 1) (2 n + 5) / 18``; ``trend_z`` is the standardised S (continuity-corrected).
    """

    __slots__ = ("size", "values", "sorted", "s", "trend", "_sd_full")

    def __init__(self, size: int, *, trend: bool = False) -> None:
        self.size = size
        self.trend = trend  # keep the Mann-Kendall S (two more bisections per step)
        self.values: deque[float] = deque()
        self.sorted: list[float] = []
        self.s = 0  # Mann-Kendall S of the values in the window
        self._sd_full = math.sqrt(size * (size - 1) * (2 * size + 5) / 18.0)  # S's sd once full

    def __len__(self) -> int:
        return len(self.values)

    @property
    def full(self) -> bool:
        return len(self.values) == self.size

    def push(self, x: float) -> float:
        """Append ``x``, dropping the oldest value when full (S follows both changes); returns the
        median of the window after it (most windows' medians are read every step: one call)."""
        values, srt = self.values, self.sorted
        values.append(x)
        n = len(srt)
        if self.trend:
            if n == self.size:  # ``old`` preceded every remaining value: remove its pairs
                old = values.popleft()
                i = bisect_left(srt, old)
                del srt[i]
                n -= 1
                self.s -= (n - bisect_right(srt, old, i)) - i
            # ``x`` follows every value in the window: add its pairs
            lo = bisect_left(srt, x)
            self.s += lo - (n - bisect_right(srt, x, lo))
            srt.insert(lo, x)
            n += 1
        elif n == self.size:
            old = values.popleft()
            if old != x:  # the same value in and out: order unchanged
                del srt[bisect_left(srt, old)]
                insort(srt, x)
        else:
            insort(srt, x)
            n += 1
        half = n >> 1  # n >= 1: ``median`` inlined
        return srt[half] if n & 1 else 0.5 * (srt[half - 1] + srt[half])

    def median(self) -> float:
        """The median (``median_sorted``, inlined: read several times per step)."""
        srt = self.sorted
        n = len(srt)
        if not n:
            return math.nan
        half = n >> 1
        return srt[half] if n & 1 else 0.5 * (srt[half - 1] + srt[half])

    def quantile(self, q: float) -> float:
        """Linear-interpolation quantile (numpy's default)."""
        srt = self.sorted
        if not srt:
            return math.nan
        pos = q * (len(srt) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(srt) - 1)
        return srt[lo] + (srt[hi] - srt[lo]) * (pos - lo)

    def trend_z(self) -> float:
        """Mann-Kendall z of the window (``trend=True``): < -2 a significant fall, > 2 a rise."""
        n = len(self.values)
        if n < 4:
            return 0.0
        sd = self._sd_full if n == self.size else math.sqrt(n * (n - 1) * (2 * n + 5) / 18.0)
        s = self.s
        return (s - 1) / sd if s > 0 else (s + 1) / sd if s < 0 else 0.0

    def state(self) -> list[float]:
        return list(self.values)

    def load(self, values: Any) -> None:
        self.values = deque()
        self.sorted = []
        self.s = 0
        for x in values:
            self.push(float(x))
