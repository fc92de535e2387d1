"""``python -m benchmarks.detection.digest [--split NAME ...] [--out FILE]``: every verdict, hashed.

Speed work on the detector must change no decision. The benchmark's tables only show each run's
first escalation and prune; this replays every cached trace (never trains: traces not in the
cache are counted and skipped) through the product's detector and escalation policy under a few
option sets, and hashes *every* report (rules, sentences, the score's exact bits, critical,
confirmed, immediate), every escalation event and the final ``state_dict``. A replay that is
checkpointed halfway (``state_dict`` through JSON into a fresh detector) must give the same
digest as one that is not. Run it before and after a change and diff the outputs: one line per
split and option set, one digest per trace with ``--traces``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterable
from typing import Any

from wandb_gradema.detector import AnomalyDetector, AnomalyReport
from wandb_gradema.escalation import EscalationPolicy

from .__main__ import SPLITS
from .cache import TraceCache
from .scenarios import scenarios
from .trace import Trace

#: Option sets replayed: the defaults, and others that move the rules' thresholds and paths.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "sensitive": {"sensitivity": 2.0},
    "lenient": {"sensitivity": 0.5, "confirm_steps": 4},
    "short": {"burst_steps": 2, "trend_window": 8, "reference_steps": 4, "warmup_steps": 5, "stall_steps": 40},
}


def _report_line(r: AnomalyReport) -> str:
    return repr((r.step, r.has_anomaly, r.anomaly_types, tuple(r.details.items()), r.score.hex(), r.critical,
                 r.confirmed, r.immediate))  # fmt: skip


def replay(trace: Trace, options: dict[str, Any], *, use_loss: bool = True, reload_at: int | None = None) -> str:
    """The digest of ``trace`` replayed with ``options`` (reloaded from JSON at ``reload_at``)."""
    detector, policy = AnomalyDetector(**options), EscalationPolicy()
    h = hashlib.sha256()
    for obs in trace.observations():
        if not use_loss:
            obs = dataclasses.replace(obs, loss=None)
        if obs.step == reload_at:
            state = json.loads(json.dumps(detector.state_dict()))
            detector = AnomalyDetector(**options)
            detector.load_state_dict(state)
        report = detector.check(obs)
        event = policy.update(report)
        h.update(_report_line(report).encode())
        if event is not None:
            h.update(repr(dataclasses.astuple(event)).encode())
    h.update(json.dumps(detector.state_dict(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def cached(split: str, cache: TraceCache) -> tuple[list[Trace], int]:
    """The traces of ``split`` in the cache, and how many are not."""
    found, missing = [], 0
    for name, spec in scenarios(split):
        t = cache.get(spec, name, split)
        if t is None:
            missing += 1
        else:
            found.append(t)
    return found, missing


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection.digest", description=__doc__.splitlines()[0])
    parser.add_argument("--split", action="append", choices=[s for s in SPLITS if s != "shared-dev"])
    parser.add_argument("--traces", action="store_true", help="one digest per trace too")
    args = parser.parse_args(None if argv is None else list(argv))
    cache = TraceCache()
    failed = 0
    for split in args.split or [s for s in SPLITS if s != "shared-dev"]:
        traces, missing = cached(split, cache)
        for variant, options in VARIANTS.items():
            for use_loss in (True, False):
                if not use_loss and variant != "default":
                    continue
                name = variant if use_loss else "gradients-only"
                per = []
                for t in traces:
                    d = replay(t, options, use_loss=use_loss)
                    if variant == "default" and replay(t, options, use_loss=use_loss, reload_at=t.steps // 2) != d:
                        print(f"  RELOAD DIFFERS: {split} {name} {t.name}")
                        failed += 1
                    per.append((t.name, d))
                    if args.traces:
                        print(f"  {split} {name} {t.name} {d}")
                total = hashlib.sha256("".join(d for _, d in per).encode()).hexdigest()[:16]
                print(f"{split:16} {name:15} {len(traces):4} traces ({missing} not cached) {total}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
