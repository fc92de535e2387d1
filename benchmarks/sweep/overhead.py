"""``python -m benchmarks.sweep.overhead``: host time the sibling judgement adds per optimizer step.

Feeds recorded runs' observations through ``SweepPeers`` (record builder + judgement, against a
reference of 20 healthy siblings built beforehand, as the background thread builds it): the
work the monitor's decision path does per judged step inside a sweep. Best of 12 runs of 400
steps; wall-clock, so noisy on a shared machine.
"""

from __future__ import annotations

import time
import warnings

from .replay import ListStore
from .space import load_sweep


def main() -> None:
    from wandb_gradema.siblings import SweepPeers

    warnings.simplefilter("ignore")
    traces = load_sweep(0)
    store = ListStore()
    for t in traces[:20]:
        peers = SweepPeers(store, t.name, background=False)
        for o in t.observations():
            peers.observe(o.step, o.loss, o.grad_norm, o.active_share, o.lr)
        peers.finish("finished")
    runs = [list(t.observations()) for t in traces[20:24]]
    best = {}
    for label, reference in (("no siblings yet", False), ("20 healthy siblings", True)):
        fastest = float("inf")
        for _ in range(3):
            for obs in runs:
                peers = SweepPeers(store if reference else ListStore(), "x", background=False)
                started = time.perf_counter()
                for o in obs:
                    peers.observe(o.step, o.loss, o.grad_norm, o.active_share, o.lr)
                fastest = min(fastest, (time.perf_counter() - started) / len(obs))
        best[label] = fastest
    print("| reference | host time per optimizer step |\n|---|---|")
    for label, seconds in best.items():
        print(f"| {label} | {seconds * 1e6:.1f} us |")


if __name__ == "__main__":
    main()
