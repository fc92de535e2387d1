"""The ground-truth label of a run, computed from its whole loss trajectory.

Implements the rule of the shared dev set (``shared_dev/README.md``): R = min(L0, C) is the
chance level, m(t) the centred 21-step rolling median of the loss (non-finite losses count as
+inf, the window is truncated at the ends).

- a step is *bad* when its loss or a gradient is non-finite, its loss exceeds 5·L0, or the run
  had learned earlier (m < 0.85·R) and m(t) ≥ 0.98·R (relapse to chance);
- **diverged**: a bad step comes after the last step with m < 0.85·R; ``t_div`` is the first;
- **collapsed**: not diverged, median loss over the last 10% of steps ≥ 0.98·R, and a healthy
  twin on the same task learns (the caller says whether one does);
- **healthy**: final loss (median of the last 10%) < 0.85·R;
- anything else (never learned clearly, never collapsed clearly) is **ambiguous**.

One refinement, for every suite (``stopped_short``, applied by ``suite.label_suite``): a run
labelled healthy above is **collapsed** when it stopped far short of its task: its final loss
closed less than ``SHORT`` (a quarter) of the log distance from R down to the best final loss of
a healthy run on the same task and model in the split (its twin), and it made no progress over
the second half of the run (the final median is at least ``FROZEN`` x the median of as many
steps around the midpoint). Progress is counted in orders of magnitude (the log): a breast-cancer
net frozen at 0.3 with 5 of 6 gradient tensors silent, while its twin reaches 0.02 (R = 0.66),
beat chance and no longer learns; a slow noisy-regression run at 0.3 of a 0.66 chance whose twin
reaches 0.14 is half-way there, and a small-batch run still falling is not frozen.

Two extensions, for the extended suite only (the original suite is labelled exactly as above):

- **batch-loss shape**: MSE over 2-8 examples is so skewed that the median of a dead run's
  batch losses sits well below its mean (ln 2 = 0.69 of it for 2 examples); the levels the
  medians are compared with are scaled by ``median_ratio``, the median / mean of the run's batch
  losses at initialisation, so a dead run is not "learned" by its noise;
- **fine-tunes** (a run from a pretrained state): the run's own start is its reference. With
  S = L0 and F = min(2 L0, (L0 + C) / 2) (the loss doubled, or half-way back to chance), a step
  is bad when non-finite or m(t) >= F (forgetting); **diverged** when a bad step comes after the
  last step with m < S; **healthy** when the final loss is below S (any progress); else
  ambiguous. A fine-tune is never "collapsed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Label = Literal["healthy", "diverged", "collapsed", "ambiguous"]

WINDOW = 21
LEARNED = 0.85
CHANCE = 0.98
EXPLODE = 5.0
TAIL = 0.10
FORGET = 2.0
SHORT = 0.25
FROZEN = 0.9


@dataclass(frozen=True)
class Verdict:
    """A run's label and, for a diverged run, its first bad step (0-based)."""

    label: Label
    t_div: int | None = None


def rolling_median(loss: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """Centred rolling median, truncated at the ends; non-finite values count as +inf."""
    x = np.where(np.isfinite(loss), loss, np.inf)
    half = window // 2
    return np.array([np.median(x[max(0, t - half) : t + half + 1]) for t in range(len(x))])


def label_run(
    loss: np.ndarray,
    grad_nonfinite: np.ndarray,
    init_loss: float,
    chance_loss: float,
    *,
    task_learns: bool = True,
    median_ratio: float = 1.0,
    finetune: bool = False,
) -> Verdict:
    """Label one run from its per-step losses and per-step non-finite-gradient flags/counts.

    Args:
        loss: training loss per optimizer step.
        grad_nonfinite: per step, > 0 where a gradient was non-finite.
        init_loss: L0, the mean loss over 8 batches at initialisation.
        chance_loss: C, the loss of the best input-independent predictor.
        task_learns: whether a healthy run exists on the same task (required for ``collapsed``).
        median_ratio: scales the levels medians are compared with (see the module docstring).
        finetune: label as a fine-tune: the run's own start is its reference.
    """
    loss = np.asarray(loss, dtype=np.float64)
    m = rolling_median(loss)
    if finetune:
        return _label_finetune(loss, m, grad_nonfinite, init_loss, chance_loss, median_ratio)
    r = min(init_loss, chance_loss) * median_ratio
    learned = m < LEARNED * r
    learned_before = np.concatenate([[False], np.cumsum(learned)[:-1] > 0])
    bad = (
        ~np.isfinite(loss)
        | (np.asarray(grad_nonfinite) > 0)
        | (np.where(np.isfinite(loss), loss, 0.0) > EXPLODE * init_loss)
        | (learned_before & (m >= CHANCE * r))
    )
    last_learned = int(np.flatnonzero(learned)[-1]) if learned.any() else -1
    after = np.flatnonzero(bad[last_learned + 1 :])
    if after.size:
        return Verdict("diverged", last_learned + 1 + int(after[0]))
    tail = np.where(np.isfinite(loss), loss, np.inf)[-max(1, round(TAIL * len(loss))) :]
    final = float(np.median(tail))
    if final < LEARNED * r:
        return Verdict("healthy")
    if final >= CHANCE * r and task_learns:
        return Verdict("collapsed")
    return Verdict("ambiguous")


def _label_finetune(
    loss: np.ndarray, m: np.ndarray, grad_nonfinite: np.ndarray, init_loss: float, chance_loss: float, ratio: float
) -> Verdict:
    start = init_loss * ratio
    forget = min(FORGET * init_loss, (init_loss + chance_loss) / 2) * ratio
    bad = ~np.isfinite(loss) | (np.asarray(grad_nonfinite) > 0) | (m >= forget)
    good = m < start
    last_good = int(np.flatnonzero(good)[-1]) if good.any() else -1
    after = np.flatnonzero(bad[last_good + 1 :])
    if after.size:
        return Verdict("diverged", last_good + 1 + int(after[0]))
    tail = np.where(np.isfinite(loss), loss, np.inf)[-max(1, round(TAIL * len(loss))) :]
    return Verdict("healthy") if float(np.median(tail)) < start else Verdict("ambiguous")


def final_loss(loss: np.ndarray) -> float:
    """The median loss over the last ``TAIL`` of the steps (non-finite values count as +inf)."""
    x = np.where(np.isfinite(loss), loss, np.inf)
    return float(np.median(x[-max(1, round(TAIL * len(x))) :]))


def stopped_short(loss: np.ndarray, reference: float, twin: float) -> bool:
    """A run that learned stopped far short of its task (see the module docstring): its final
    loss closed less than ``SHORT`` of the log distance from ``reference`` (R) to ``twin`` (the best
    final loss of a healthy run on the same task and model), and the second half of the run
    made no progress (final median >= ``FROZEN`` x the median around the midpoint)."""
    loss = np.asarray(loss, dtype=np.float64)
    final = final_loss(loss)
    if not (0 < twin < reference and 0 < final < reference):
        return False
    closed = np.log(reference / final) / np.log(reference / twin)
    n, k = len(loss), max(1, round(TAIL * len(loss)))
    x = np.where(np.isfinite(loss), loss, np.inf)
    mid = float(np.median(x[max(0, n // 2 - k // 2) : n // 2 + k // 2 + 1]))
    return bool(closed < SHORT and final >= FROZEN * mid)
