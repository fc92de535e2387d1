"""Detection benchmark: real CPU training runs, monitored live, labelled from their loss, replayed.

Run ``python -m benchmarks.detection``; to tune, replay cached traces through any detector::

    from benchmarks.detection import evaluate, load_split, product
    dev = load_split("dev")  # trains on first use, then cached under out/
    print(evaluate(dev, product(sensitivity=1.5, stall_steps=80)))
"""

from .detectors import REFERENCE_RULES, Detector, Firing, all_detectors, fire, product
from .evaluate import Metrics, Scores, evaluate, format_families, format_table, score
from .suite import load_shared_dev, load_split
from .trace import Trace

__all__ = [
    "REFERENCE_RULES",
    "Detector",
    "Firing",
    "Metrics",
    "Scores",
    "Trace",
    "all_detectors",
    "evaluate",
    "fire",
    "format_families",
    "format_table",
    "load_shared_dev",
    "load_split",
    "product",
    "score",
]
