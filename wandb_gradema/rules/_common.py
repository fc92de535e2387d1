"""What every rule family returns: findings, a rule name mapped to a score and a sentence."""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: rule name -> (score, a callable building the sentence). A score >= 1 is anomalous; the
#: sentence is built only for rules that fire (formatting every rule every step costs more
#: than judging).
Findings = dict[str, tuple[float, Callable[[], str]]]

TINY = 1e-30
#: sigma of a Gaussian = MAD x this.
MAD_TO_SD = 1.4826
#: The standard error of a median of n Gaussian values is this x sigma / sqrt(n).
MEDIAN_SE = 1.2533


def median_sorted(ordered: Sequence[float]) -> float:
    """The median of values already sorted (at least one)."""
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else 0.5 * (ordered[half - 1] + ordered[half])
