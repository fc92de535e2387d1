"""Replay one sweep (its traces in one order, one run at a time) through each pruner.

Every method returns, per run, the step it was stopped at (None: ran to the end). The metric
the metric-only pruners see is a ``val`` proxy logged every ``EVERY`` steps: the mean training
loss over those steps (NaN once a loss is non-finite), as a script would log a running loss.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.detection.detectors import fire, product
from benchmarks.detection.trace import Trace
from wandb_gradema import AnomalyDetector, EscalationPolicy
from wandb_gradema.siblings import SiblingRecord, SweepPeers

__all__ = ["EVERY", "EXTRA", "METHODS", "PARALLEL", "hyperband", "optuna_pruner", "per_run", "sweep_aware"]

EVERY = 10
Stops = list[int | None]


class ListStore:
    """An in-memory ``SiblingStore`` (the replay's sweep)."""

    def __init__(self) -> None:
        self.records: list[SiblingRecord] = []

    def load(self) -> list[SiblingRecord]:
        return list(self.records)

    def save(self, record: SiblingRecord) -> None:
        self.records = [r for r in self.records if r.run_id != record.run_id] + [record]


def val_series(trace: Trace, every: int = EVERY) -> list[tuple[int, float]]:
    """``(step, value)`` every ``every`` steps: the mean loss of those steps (NaN if any is not finite)."""
    losses = [float(v) for v in trace.arrays["loss"]]
    out = []
    for end in range(every, len(losses) + 1, every):
        chunk = losses[end - every : end]
        out.append((end - 1, sum(chunk) / every if all(math.isfinite(v) for v in chunk) else math.nan))
    return out


_PER_RUN: dict[str, int | None] = {}


def _per_run_stop(trace: Trace) -> int | None:
    key = f"{trace.split}/{trace.name}"
    if key not in _PER_RUN:
        _PER_RUN[key] = fire(product(), trace).pruned
    return _PER_RUN[key]


def per_run(traces: Sequence[Trace]) -> Stops:
    """The library's per-run rules alone (the first confirmed escalation)."""
    return [_per_run_stop(t) for t in traces]


def sweep_aware(traces: Sequence[Trace], min_siblings: int | None = None, patience: float | None = None) -> Stops:
    """Per-run rules plus the sibling judgement against the runs that ended before, in the
    monitor's order: per step the detector, the policy, the sibling judgement; a per-run
    escalation goes through ``SweepPeers.review`` (what healthy siblings showed and recovered
    from is not prune-grade) before it may prune."""
    store = ListStore()
    stops: Stops = []
    for trace in traces:
        kwargs: dict[str, Any] = {} if min_siblings is None else {"min_siblings": min_siblings}
        if patience is not None:
            kwargs["patience"] = patience
        peers = SweepPeers(store, trace.name, {"batch_size": trace.spec["batch_size"]}, background=False, **kwargs)
        detector, policy = AnomalyDetector(), EscalationPolicy()
        stop = None
        for obs in trace.observations():
            events = [policy.update(detector.check(obs))]
            events.append(peers.observe(obs.step, obs.loss, obs.grad_norm, obs.active_share, obs.lr))
            if any(e is not None and peers.review(e).confirmed for e in events):
                stop = obs.step
                break
        peers.finish("finished" if stop is None else "pruned")
        stops.append(stop)
    return stops


def sweep_aware_parallel(traces: Sequence[Trace], agents: int = 4, sync: int = 20, live: bool = True) -> Stops:
    """The sweep-aware replay with ``agents`` runs at a time (concurrent agents, one step per
    tick each): every ``sync`` steps a run writes its record (state ``running``) to the shared
    store and reloads its siblings' records, as ``SweepPeers``' background thread does; a run
    starts when an agent is free, in the sweep's order. ``live`` False compares with finished
    siblings only."""
    from dataclasses import replace

    store = ListStore()
    stops: Stops = [None] * len(traces)
    waiting = list(range(len(traces)))
    running: dict[int, tuple[SweepPeers, AnomalyDetector, EscalationPolicy, Any]] = {}
    while waiting or running:
        while waiting and len(running) < agents:
            i = waiting.pop(0)
            trace = traces[i]
            peers = SweepPeers(
                store, trace.name, {"batch_size": trace.spec["batch_size"]}, background=False, live_siblings=live
            )
            running[i] = (peers, AnomalyDetector(), EscalationPolicy(), iter(trace.observations()))
        for i in list(running):
            peers, detector, policy, observations = running[i]
            obs = next(observations, None)
            if obs is None:
                peers.finish("finished")
                del running[i]
                continue
            events = [policy.update(detector.check(obs))]
            events.append(peers.observe(obs.step, obs.loss, obs.grad_norm, obs.active_share, obs.lr))
            if any(e is not None and peers.review(e).confirmed for e in events):
                stops[i] = obs.step
                peers.finish("pruned")
                del running[i]
            elif (obs.step + 1) % sync == 0:
                record = peers.builder.record
                store.save(replace(record, points=list(record.points)))
                peers.refresh()
    return stops


def hyperband(traces: Sequence[Trace], min_iter: int = 3, eta: int = 2, every: int = EVERY, check: int = 0) -> Stops:
    """W&B's hyperband (``sweeps.stop_runs``) on ``val`` logged every ``every`` steps.

    ``check`` 0 applies it at every logged value of the running run, the moment it is logged
    (the most it can do). ``check`` N > 0 applies it every N steps of the running run, as W&B's
    controller does on a wall clock (the local ``wandb controller`` reads the runs' sampled
    history every 5 s, the server every few minutes, and the agent polls for the stop every
    5 s): the stop lands at the first check after the value that crosses the threshold.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps
        from sweeps import RunState, SweepRun

    config = {
        "method": "random",
        "metric": {"name": "val", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": min_iter, "eta": eta},
        "parameters": {"x": {"values": [1]}},
    }
    done: list[SweepRun] = []
    stops: Stops = []
    for trace in traces:
        series = val_series(trace, every)
        checks = [step for step, _ in series] if not check else list(range(check - 1, trace.steps, check))
        history: list[dict[str, float]] = []
        stop = None
        for at in checks:
            history = [{"val": value, "_step": step} for step, value in series if step <= at]
            if not history:
                continue
            running = SweepRun(name=trace.name, state=RunState.running, history=history, config={"x": {"value": 1}})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stopped = sweeps.stop_runs(config, [*done, running])
            if any(r.name == trace.name for r in stopped) and at < trace.steps - 1:
                stop = at
                break
        if stop is None:
            history = [{"val": value, "_step": step} for step, value in series]
        state = RunState.killed if stop is not None else RunState.finished
        done.append(SweepRun(name=trace.name, state=state, history=history, config={"x": {"value": 1}}))
        stops.append(stop)
    return stops


def optuna_pruner(make: Callable[[], object]) -> Callable[[Sequence[Trace]], Stops]:
    """An Optuna pruner in a real in-memory study: ``report`` every logged value, ``should_prune``."""

    def replay(traces: Sequence[Trace]) -> Stops:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="minimize", pruner=make())  # type: ignore[arg-type]
            stops: Stops = []
            for trace in traces:
                trial = study.ask()
                stop, values = None, []
                for step, value in val_series(trace):
                    trial.report(value, step)
                    values.append(value)
                    if trial.should_prune():
                        stop = step
                        break
                finite = [v for v in values if math.isfinite(v)]
                if stop is not None:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                elif finite and math.isfinite(values[-1]):
                    study.tell(trial, values[-1])
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                stops.append(stop)
        return stops

    return replay


def _median() -> object:
    import optuna

    return optuna.pruners.MedianPruner()


def _wilcoxon() -> object:
    import optuna

    return optuna.pruners.WilcoxonPruner()


METHODS: dict[str, Callable[[Sequence[Trace]], Stops]] = {
    "per-run only (defaults)": per_run,
    "sweep-aware (defaults)": sweep_aware,
    "sweep-aware, plateaus judged at once (patience 0)": functools.partial(sweep_aware, patience=0.0),
    "W&B hyperband (min_iter 3, eta 2)": hyperband,
    "W&B hyperband, checked every 100 steps": functools.partial(hyperband, check=100),
    "Optuna MedianPruner": optuna_pruner(_median),
    "Optuna WilcoxonPruner": optuna_pruner(_wilcoxon),
}

#: Further hyperband replays (``--extra``): a coarser controller cadence (a check every 200
#: steps: a 1 s loop on runs of ~5 ms per step) and the training loss logged every step as the
#: metric (bands at steps 2, 5, 11, 23...). Slow: ``stop_runs`` at every step.
EXTRA: dict[str, Callable[[Sequence[Trace]], Stops]] = {
    "W&B hyperband, checked every 200 steps": functools.partial(hyperband, check=200),
    "W&B hyperband, loss logged every step": functools.partial(hyperband, every=1),
}

#: Concurrent agents (``--parallel``): the sweep-aware replay with 4 runs at a time, comparing
#: with running siblings' records or with finished siblings only.
PARALLEL: dict[str, Callable[[Sequence[Trace]], Stops]] = {
    "sweep-aware, 4 agents, running siblings too": functools.partial(sweep_aware_parallel, agents=4),
    "sweep-aware, 4 agents, finished siblings only": functools.partial(sweep_aware_parallel, agents=4, live=False),
}
