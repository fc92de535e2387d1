"""Load a split's traces: from the cache, by training (at most ``jobs`` processes), or from the
shared dev set; then label them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .cache import TraceCache
from .labels import Verdict, final_loss, label_run, stopped_short
from .scenarios import EXTENDED_PREFIX, scenarios
from .spec import Spec
from .trace import OBSERVATION_FIELDS, Trace
from .train import train

SHARED_DEV = Path(__file__).parent / "shared_dev"
MAX_JOBS = 2


def load_split(
    split: str,
    *,
    retrain: bool = False,
    jobs: int = MAX_JOBS,
    cache: TraceCache | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Trace]:
    """The labelled traces of ``split`` (``dev``, ``test``, ``holdout`` to ``holdout4``, ``quick``,
    ``shared-dev``, ``ext-dev``, ``ext-test``, ``ext-holdout`` to ``ext-holdout4``, ``blowup-dev``,
    ``blowup-holdout`` to ``blowup-holdout4``)."""
    if split == "shared-dev":
        return load_shared_dev()
    cache = cache or TraceCache()
    named = scenarios(split)
    traces: dict[str, Trace] = {}
    missing: list[tuple[str, Spec]] = []
    for name, spec in named:
        hit = None if retrain else cache.get(spec, name, split)
        if hit is None:
            missing.append((name, spec))
        else:
            traces[name] = hit
    for trace in _train_all(missing, split, jobs):
        cache.put(trace)
        traces[trace.name] = trace
        if progress:
            progress(f"trained {len(traces)}/{len(named)} {split}: {trace.name}")
    ordered = [traces[name] for name, _ in named]
    label_suite(ordered)
    return ordered


def _train_all(todo: Sequence[tuple[str, Spec]], split: str, jobs: int) -> Iterator[Trace]:
    """Train ``todo``, in ``min(jobs, MAX_JOBS)`` worker processes when more than one."""
    jobs = max(1, min(jobs, MAX_JOBS, len(todo)))
    if jobs == 1:
        for name, spec in todo:
            yield train(spec, name, split)
        return
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train, spec, name, split) for name, spec in todo]
        for f in as_completed(futures):
            yield f.result()


def label_suite(traces: Sequence[Trace]) -> None:
    """Label every trace; ``collapsed`` needs a healthy run on the same task in the suite.

    Traces of the extended suite (split ``ext-*``) are labelled with the extensions of
    ``labels.py`` (batch-loss shape, fine-tunes); every suite's healthy runs that stopped far
    short of their twin (``labels.stopped_short``) are collapsed.
    """
    verdicts = [_label(t, task_learns=True) for t in traces]
    learns = {t.spec["task"] for t, v in zip(traces, verdicts) if v.label == "healthy"}
    # the twins: the best final loss of a healthy run (from scratch) per task and model
    twins: dict[tuple[str, str], float] = {}
    for t, v in zip(traces, verdicts):
        if v.label == "healthy" and not t.is_finetune:
            key = (t.spec["task"], t.spec["model"])
            twins[key] = min(twins.get(key, np.inf), final_loss(t.arrays["loss"]))
    for t, v in zip(traces, verdicts):
        t.verdict = (
            _label(t, task_learns=False) if v.label == "collapsed" and t.spec["task"] not in learns else v
        )
        if v.label == "healthy" and not t.is_finetune:
            twin = twins[(t.spec["task"], t.spec["model"])]
            if stopped_short(t.arrays["loss"], _reference(t), twin):
                t.verdict = Verdict("collapsed")


def _reference(trace: Trace) -> float:
    """R, the level the label compares with: min(L0, C), scaled by the batch-loss shape in the
    extended suite."""
    ratio = trace.median_ratio if trace.split.startswith(EXTENDED_PREFIX) else 1.0
    return min(trace.init_loss, trace.chance_loss) * ratio


def _label(trace: Trace, *, task_learns: bool) -> Verdict:
    a = trace.arrays
    nonfinite = a["n_nonfinite"] + ~np.isfinite(a["grad_norm"])
    extended = trace.split.startswith(EXTENDED_PREFIX)
    return label_run(
        a["loss"],
        nonfinite,
        trace.init_loss,
        trace.chance_loss,
        task_learns=task_learns,
        median_ratio=trace.median_ratio if extended else 1.0,
        finetune=extended and trace.is_finetune,
    )


def load_shared_dev(root: Path = SHARED_DEV) -> list[Trace]:
    """The shared dev traces, with their given labels; health and active share replay as 1.0."""
    labels = json.loads((root / "labels.json").read_text())
    traces = []
    for name, info in labels.items():
        with np.load(root / f"{name}.npz") as z:
            given = {
                "grad_norm": z["grad_norm"].astype(np.float64),
                "loss": z["loss"].astype(np.float64),
                "lr": z["lr"].astype(np.float64),
                # the file counts non-finite elements; here: at least one non-finite tensor
                "n_nonfinite": (z["nonfinite"] > 0).astype(np.int64),
            }
        n = len(given["loss"])
        arrays = {f.name: given.get(f.name, np.full(n, f.default)) for f in OBSERVATION_FIELDS}
        traces.append(
            Trace(
                name=name,
                split="shared-dev",
                spec=info["spec"],
                init_loss=info["init_loss"],
                chance_loss=info["chance_loss"],
                n_params=info["n_params"],
                arrays=arrays,
                verdict=Verdict(info["label"], info["t_div"]),
            )
        )
    return traces
