"""Schedule rules: what the learning rate is doing, and LR jumps followed by trouble.

The LR tells the other rules how to read the loss: while it climbs to heights it never had
(warm-up, a ramp), a rising loss means it has left the stable range; while it does not rise,
the clock of ``stalled`` runs. A jump far above anything before is remembered for ``jump_window``
steps; trouble in that window (the loss gives back progress, the gradients explode) is an
anomaly. A jump in an existing param group (a schedule bug) is reported on the spot too; one
that comes with a new param group (``add_param_group``: unfreezing layers) is not.
"""

from __future__ import annotations

import math
from typing import Any

from ._common import Findings

__all__ = ["ScheduleStats", "judge_jump", "judge_jump_itself"]

#: Steps over which a rising learning rate is judged.
RISE_LOOKBACK = 5
_EPS = 1e-9


class ScheduleStats:
    """Running statistics of the learning rate.

    - ``recent``: the last ``RISE_LOOKBACK`` LRs; ``lr_max``: the highest LR before the latest;
    - ``rising``: the latest LR is above the one ``RISE_LOOKBACK`` steps before; ``new_high``:
      it is also above anything before (warm-up, ramp; not a restart to an earlier peak);
    - ``clock``: steps at a non-rising LR (every step counts when there is no LR);
    - ``jump_*``: the last jump: the step (in LR observations), its size, and what the loss and
      gradients looked like just before it (set by the detector).
    """

    __slots__ = (
        "recent", "lr_max", "n", "clock", "rising", "new_high", "groups", "jumped", "jump_added",
        "jump_at", "jump_ratio", "jump_lr", "jump_level", "jump_norm",
    )  # fmt: skip

    def __init__(self) -> None:
        self.recent: list[float] = []
        self.lr_max = -math.inf
        self.n = 0
        self.clock = 0
        self.rising = False
        self.new_high = False
        self.groups = 0  # param groups at the latest step (0: none seen yet)
        self.jumped = False  # the latest LR was a jump
        self.jump_added = False  # ... that came with a new param group
        self.jump_at = -1
        self.jump_ratio = math.nan
        self.jump_lr = math.nan
        self.jump_level = math.nan  # loss level just before the jump
        self.jump_norm = math.nan  # median log norm just before the jump

    def observe(self, lr: float | None, groups: int, warmup_steps: int, jump_ratio: float) -> None:
        """Fold in one step's largest LR (None: none) and its number of param groups."""
        self.jumped = False
        recent = self.recent
        if lr == self.lr_max and groups == self.groups and recent.count(lr) == RISE_LOOKBACK and lr > 0:
            # A constant LR at its highest (most steps of most schedules), proved cheaply: the
            # last ``RISE_LOOKBACK`` LRs are all this one, so it rises nowhere, appending it and
            # dropping the oldest leaves ``recent`` as it is, and only the clock and the count move
            # (unless it is a jump: ``jump_ratio`` so close to 1 that ``lr`` itself counts).
            if not (self.n >= warmup_steps and lr >= jump_ratio * lr):
                self.rising = self.new_high = False
                self.clock += 1
                self.n += 1
                return
        added = 0 < self.groups < groups
        self.groups = groups
        if lr is None or not math.isfinite(lr):
            self.clock += 1  # no schedule to go by: every step counts
            self.rising = self.new_high = False
            return
        self.rising = bool(recent) and lr > recent[0] * (1 + _EPS)
        self.new_high = self.rising and lr > self.lr_max * (1 + _EPS)
        if self.n >= warmup_steps and self.lr_max > 0 and lr >= jump_ratio * self.lr_max:
            self.jumped, self.jump_added = True, added
            self.jump_at, self.jump_ratio, self.jump_lr = self.n, lr / self.lr_max, lr
        recent.append(lr)
        if len(recent) > RISE_LOOKBACK:
            del recent[0]
        if not (len(recent) > 1 and lr > recent[-2] * (1 + _EPS)):
            self.clock += 1
        if lr > self.lr_max:  # max(lr_max, lr): lr is finite here
            self.lr_max = lr
        self.n += 1

    def armed(self, window: int) -> bool:
        """Within ``window`` LR observations after the last jump."""
        return self.jump_at >= 0 and self.n - 1 - self.jump_at < window

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__} | {"recent": list(self.recent)}

    def load(self, s: dict[str, Any]) -> None:
        for name in self.__slots__:
            setattr(self, name, s[name])
        self.recent = [float(x) for x in s["recent"]]


def judge_jump_itself(st: ScheduleStats, found: Findings, *, log_jump: float) -> None:
    """``lr_jump`` on the jump itself (in an existing param group: a likely schedule bug)."""
    ratio, lr = st.jump_ratio, st.jump_lr
    found.note(
        "lr_jump",
        math.log(ratio) / log_jump,
        lambda: f"Learning rate jumped to {lr:.3g}, {ratio:.3g}x anything before (a schedule bug?).",
    )


def judge_jump(
    st: ScheduleStats,
    found: Findings,
    *,
    lost: float,
    norm_rise: float,
    rise_threshold: float,
    log_explode: float,
    step: int,
) -> None:
    """``lr_jump``: trouble within the window after a jump.

    Args:
        lost: share of the progress held at the jump that the loss has given back since
            (significant rises only; 0 without a loss).
        norm_rise: log of the median gradient norm over its value before the jump.
        rise_threshold: share of progress lost that is trouble.
        log_explode: gradient-norm rise (log) that is trouble.
        step: the optimizer step judged (for the sentence).
    """
    score = max(lost / rise_threshold, norm_rise / log_explode)
    ratio, lr = st.jump_ratio, st.jump_lr
    since = st.n - 1 - st.jump_at
    found.note(
        "lr_jump",
        score,
        lambda: f"Learning rate jumped to {lr:.3g} ({ratio:.3g}x anything before) {since} steps ago, and training "
        f"has suffered since ({lost:.0%} of the progress lost, gradient norm x{math.exp(norm_rise):.3g}).",
    )
