"""What every rule family returns: findings, the step's largest score and the rules that fire."""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: A rule that fires: its score and a callable building its sentence (formatted only then).
Finding = tuple[float, Callable[[], str]]


class Findings:
    """One step's verdicts: the largest rule score (``top``) and the rules that fire.

    A rule scores ``score``; it *fires* when ``score x sensitivity >= 1``. Every rule's score
    counts towards ``top`` (the report's score, charted on quiet steps too), but only a firing
    rule is kept in ``fired`` (name -> score and sentence builder, in the order judged): a quiet
    step builds no tuple, no closure and no sentence. The detector keeps one and ``reset``s it
    each step. Rules record with ``note`` off the hot path; on it they inline its two lines.
    """

    __slots__ = ("sensitivity", "top", "fired")

    def __init__(self, sensitivity: float = 1.0) -> None:
        self.sensitivity = sensitivity
        self.top = 0.0
        self.fired: dict[str, Finding] = {}

    def reset(self) -> None:
        """Forget the previous step's verdicts."""
        self.top = 0.0
        if self.fired:
            self.fired = {}

    def note(self, name: str, score: float, why: Callable[[], str]) -> None:
        """Record rule ``name``'s ``score`` (NaN never counts) and, when it fires, its sentence."""
        if score > self.top:
            self.top = score
        if score * self.sensitivity >= 1.0:
            self.fired[name] = (score, why)

    def __contains__(self, name: str) -> bool:
        return name in self.fired


TINY = 1e-30
#: sigma of a Gaussian = MAD x this.
MAD_TO_SD = 1.4826
#: The standard error of a median of n Gaussian values is this x sigma / sqrt(n).
MEDIAN_SE = 1.2533


def median_sorted(ordered: Sequence[float]) -> float:
    """The median of values already sorted (at least one)."""
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else 0.5 * (ordered[half - 1] + ordered[half])
