"""Trace: what the monitor observed on every step of one run, enough to replay detection offline.

Per step it keeps every ``Observation`` field, so ``observations()`` feeds a fresh detector
exactly what the live monitor's detector saw. ``cache.py`` stores the arrays as ``.npz`` and the
rest in a JSON index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wandb_gradema import Observation

from .labels import Verdict
from .spec import Spec

#: Per-step arrays: every ``Observation`` field but ``step`` (implicit), so a field added to
#: ``Observation`` is recorded (and changes the cache key) without touching this package.
OBSERVATION_FIELDS = tuple(f for f in dataclasses.fields(Observation) if f.name != "step")
ARRAYS = tuple(f.name for f in OBSERVATION_FIELDS)
_INTS = frozenset(f.name for f in OBSERVATION_FIELDS if f.type in ("int", int))


@dataclass
class Trace:
    """One run: its spec, chance levels, per-step observations, live fire step and label.

    Attributes:
        name: scenario name (unique within its split).
        split: ``dev``, ``test``, ``quick`` or ``shared-dev``.
        spec: the run's spec (see ``spec.py``).
        init_loss: L0, mean loss over 8 batches at initialisation.
        chance_loss: C, the loss of the best input-independent predictor.
        n_params: number of model parameters.
        median_ratio: median / mean of the batch losses at initialisation, at the run's batch
            size (1.0 for traces recorded before it was measured): MSE over 2-8 examples is so
            skewed that a median sits far below the mean, and the label compares medians.
        arrays: one array per name in ``ARRAYS``, one entry per optimizer step.
        live_fire: the step the live monitor first escalated on, or None (None for replayed-only
            traces such as the shared dev set, whose ``live_fire`` is unknown).
        verdict: the ground-truth label, set once the whole suite is known.
        live_nonfinite: the reason of the live monitor's first non-finite escalation (where the
            NaN began), or None.
    """

    name: str
    split: str
    spec: Spec
    init_loss: float
    chance_loss: float
    n_params: int
    arrays: dict[str, np.ndarray]
    live_fire: int | None = None
    median_ratio: float = 1.0
    verdict: Verdict | None = None
    live_nonfinite: str | None = None

    @property
    def steps(self) -> int:
        return len(self.arrays["loss"])

    @property
    def label(self) -> str:
        assert self.verdict is not None, f"{self.name} is not labelled yet"
        return self.verdict.label

    @property
    def t_div(self) -> int | None:
        return None if self.verdict is None else self.verdict.t_div

    @property
    def family(self) -> str:
        """The scenario family (the name without its variant index)."""
        return self.name.rsplit("-", 1)[0]

    @property
    def is_finetune(self) -> bool:
        """A run that starts from a pretrained state (its own start is its reference)."""
        return bool(self.spec.get("pretrain_steps", 0))

    def observations(self) -> Iterator[Observation]:
        """The per-step ``Observation``s, as the live monitor built them."""
        cols = {k: self.arrays[k].tolist() for k in ARRAYS}  # exact Python ints and floats
        for t in range(self.steps):
            yield Observation(step=t, **{k: v[t] for k, v in cols.items()})

    def meta(self) -> dict[str, Any]:
        """Everything but the arrays and the label, as JSON-ready values."""
        return {
            "spec": self.spec,
            "init_loss": self.init_loss,
            "chance_loss": self.chance_loss,
            "n_params": self.n_params,
            "live_fire": self.live_fire,
            "median_ratio": self.median_ratio,
            "live_nonfinite": self.live_nonfinite,
        }

    def save_arrays(self, path: Path) -> None:
        np.savez(path, **self.arrays)


def to_arrays(rows: list[Observation]) -> dict[str, np.ndarray]:
    """Per-step arrays from the ``Observation``s of a run (int64 or float64 per field)."""
    return {
        k: np.array([getattr(o, k) for o in rows], dtype=np.int64 if k in _INTS else np.float64)
        for k in ARRAYS
    }


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The per-step arrays of a saved trace."""
    with np.load(path) as z:
        return {k: z[k] for k in ARRAYS}
