"""Sweep-aware judgement: each run judged against its healthy siblings at the same step.

``record`` keeps a compact, thinned trajectory of what the detector reads (a ``SiblingRecord``);
``stores`` keeps the sweep's records where the sweep already lives (a shared directory, an
Optuna study's storage); ``reference`` aligns the healthy siblings on the optimizer step;
``judge`` decides whether a run is hopelessly behind them; ``peers`` wires it all into a monitor
(background refresh, no I/O on the per-step path). See docs/sweep-aware.md.
"""

from .judge import MIN_SIBLINGS, PATIENCE, SiblingJudge, SiblingVerdict
from .peers import SIBLINGS_DIR_ENV, SweepPeers, attach_siblings
from .record import RecordBuilder, SiblingPoint, SiblingRecord
from .reference import Reference
from .stores import DirectoryStore, OptunaStore, SiblingStore, WandbStore

__all__ = [
    "MIN_SIBLINGS",
    "PATIENCE",
    "SIBLINGS_DIR_ENV",
    "DirectoryStore",
    "OptunaStore",
    "RecordBuilder",
    "Reference",
    "SiblingJudge",
    "SiblingPoint",
    "SiblingRecord",
    "SiblingStore",
    "SiblingVerdict",
    "SweepPeers",
    "WandbStore",
    "attach_siblings",
]
