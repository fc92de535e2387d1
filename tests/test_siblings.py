"""Sweep-aware judgement: real runs judged against their healthy siblings at the same step."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import wandb_gradema
from wandb_gradema import GrademaWarning, RunPruned
from wandb_gradema.siblings import (
    MIN_SIBLINGS,
    SIBLINGS_DIR_ENV,
    DirectoryStore,
    OptunaStore,
    RecordBuilder,
    SiblingRecord,
    attach_siblings,
)

STEPS = 120
_G = torch.Generator().manual_seed(0)
CENTERS = torch.randn(10, 20, generator=_G) * 1.5


def _train(lr: float, *, steps: int = STEPS, store: Any = None, run_id: str = "", monitor_kw: Any = None, log: Any = None) -> tuple[Any, Any, int | None]:
    """A 10-class classifier of Gaussian clusters, Adam at ``lr``; (monitor, peers, pruned step)."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    monitor = wandb_gradema.watch(opt, model=model, **(monitor_kw or {"on_escalation": "prune"}))
    peers = attach_siblings(monitor, store, run_id=run_id, background=False) if store is not None else monitor.decisions.peers
    gen = torch.Generator().manual_seed(2)
    try:
        for _ in range(steps):
            y = torch.randint(0, 10, (32,), generator=gen)
            x = CENTERS[y] + torch.randn(32, 20, generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            monitor.observe_loss(loss)
            opt.step()
            if log is not None:
                log({"loss": loss.item()})
    except RunPruned as exc:
        return monitor, peers, exc.step
    monitor.remove()
    return monitor, peers, None


_HEALTHY: list[SiblingRecord] = []


def _healthy_siblings(store: Any, n: int = MIN_SIBLINGS) -> None:
    """``n`` healthy siblings' records in ``store`` (trained once per test session)."""
    if not _HEALTHY:
        for i, lr in enumerate([3e-3, 1e-2, 5e-3]):
            _, peers, pruned = _train(lr, store=_Memory(), run_id=f"good{i}")
            assert pruned is None and peers.builder.record.state == "finished"
            _HEALTHY.append(peers.builder.record)
    for record in _HEALTHY[:n]:
        store.save(record)


class _Memory:
    def __init__(self) -> None:
        self.records: list[SiblingRecord] = []

    def load(self) -> list[SiblingRecord]:
        return list(self.records)

    def save(self, record: SiblingRecord) -> None:
        self.records.append(record)


# ---------------------------------------------------------------------------- records and stores
def test_a_100k_step_record_stays_small_and_spans_the_run() -> None:
    builder = RecordBuilder("long")
    for step in range(100_000):
        builder.observe(step, 2.3 - step * 1e-5 + 0.01 * math.sin(step), 1.0, 1.0, 1e-3)
    points = builder.record.points
    assert len(points) <= 2 * builder.max_points and len(json.dumps(builder.record.to_json())) < 40_000
    assert points[0].step < 100 and points[-1].step > 99_000
    assert points[-1].loss == pytest.approx(2.3 - 1.0, abs=0.02) and 0 < points[-1].noise < 0.02


def test_the_directory_store_is_atomic_under_concurrent_writers(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "sib")
    (tmp_path / "sib").mkdir()
    (tmp_path / "sib" / "half.json").write_text('{"run_id": "half", "poi')  # a torn file from elsewhere
    errors: list[BaseException] = []

    def write(name: str) -> None:
        builder = RecordBuilder(name)
        try:
            for step in range(400):
                if builder.observe(step, 2.0, 1.0, 1.0, 0.1) is not None:
                    store.save(builder.record)
                    assert all(r.run_id != "half" for r in store.load())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in ("a", "b", "a", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.run_id for r in store.load()) == ["a", "b", "c"]
    assert not list((tmp_path / "sib").glob("*.tmp"))


# ---------------------------------------------------------------------------- judgement
def test_a_never_learning_run_is_stopped_naming_siblings_and_step(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    _healthy_siblings(store)
    with pytest.warns(GrademaWarning, match="Run pruned"):
        monitor, peers, pruned = _train(1e-6, store=store, run_id="tiny")
    assert pruned is not None and pruned < STEPS // 2
    reason = monitor.events[-1].reason
    assert f"at step {peers.fired.step}" in reason and "3 healthy siblings were at" in reason
    assert "good0" in reason and "good2" in reason and monitor.events[-1].anomaly_types == ("siblings_behind",)
    saved = {r.run_id: r for r in store.load()}["tiny"]
    assert saved.state == "pruned" and saved.cause == "siblings_behind" and not saved.healthy
    # the pruned run never joins the reference of the next one
    _, later, _ = _train(1e-6, store=store, run_id="tiny2")
    assert "tiny" not in later.reference.run_ids


@pytest.mark.parametrize("n", [1, MIN_SIBLINGS - 1])
def test_below_k_healthy_siblings_the_per_run_rules_judge_alone(tmp_path: Path, n: int) -> None:
    store = DirectoryStore(tmp_path)
    _healthy_siblings(store, n)
    monitor, peers, pruned = _train(1e-6, store=store, run_id="tiny")
    assert pruned is None and not monitor.events and peers.latest is None


def test_healthy_runs_are_not_stopped_by_their_siblings(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    _healthy_siblings(store)
    for lr in (2e-3, 2e-2):
        monitor, peers, pruned = _train(lr, store=store, run_id=f"ok{lr}")
        assert pruned is None and not monitor.events and peers.latest is not None and not peers.latest.behind


def test_a_failing_store_never_stops_training(tmp_path: Path) -> None:
    class Broken:
        def load(self) -> list[SiblingRecord]:
            raise OSError("disk gone")

        def save(self, record: SiblingRecord) -> None:
            raise OSError("disk gone")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor, peers, pruned = _train(1e-6, store=Broken(), run_id="x")
    assert pruned is None and monitor.internal_errors == 0
    assert sum("sibling store" in str(w.message) for w in caught) == 1


# ---------------------------------------------------------------------------- Optuna
def test_optuna_watch_trial_judges_against_the_studys_trials() -> None:
    optuna = pytest.importorskip("optuna")
    from wandb_gradema.integrations.optuna import watch_trial

    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def objective(trial: Any) -> float:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
        opt = torch.optim.Adam(model.parameters(), lr=trial.suggest_float("lr", 1e-6, 1e-2, log=True))
        gen = torch.Generator().manual_seed(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with watch_trial(trial, opt, model=model) as monitor:
                for _ in range(STEPS):
                    y = torch.randint(0, 10, (32,), generator=gen)
                    loss = torch.nn.functional.cross_entropy(model(CENTERS[y] + torch.randn(32, 20, generator=gen)), y)
                    opt.zero_grad()
                    loss.backward()
                    monitor.observe_loss(loss)
                    opt.step()
        return float(loss)

    study = optuna.create_study(storage="sqlite:///:memory:")
    for lr in (3e-3, 1e-2, 5e-3, 1e-6):
        study.enqueue_trial({"lr": lr})
    study.optimize(objective, n_trials=4)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 3 + [optuna.trial.TrialState.PRUNED]
    assert "healthy siblings were at" in study.trials[3].user_attrs["gradema_pruned"]["reason"]
    records = {r.run_id: r for r in OptunaStore(study).load()}
    assert [records[str(i)].state for i in range(4)] == ["finished"] * 3 + ["pruned"]
    assert records["0"].final_metric == study.trials[0].value and records["3"].config == {"lr": 1e-6}
    # siblings=False: the trial is judged alone
    trial = study.ask()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert watch_trial(trial, opt, siblings=False).decisions.peers is None
        assert watch_trial(trial, torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)).decisions.peers is not None


# ---------------------------------------------------------------------------- W&B, inside a sweep
def test_inside_a_sweep_the_directory_store_prunes_and_the_run_says_why(
    tmp_path: Path, wandb_offline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    siblings = tmp_path / "siblings"
    _healthy_siblings(DirectoryStore(siblings))
    params = tmp_path / "params.yaml"
    params.write_text("wandb_version: 1\n\n" + yaml.safe_dump({"lr": {"value": 1e-6}, "batch_size": {"value": 32}}))
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(params))
    monkeypatch.setenv(SIBLINGS_DIR_ENV, str(siblings))
    wandb.teardown()
    try:
        run = wandb_offline.init()
        with pytest.warns(GrademaWarning, match="Run pruned"):
            monitor, peers, pruned = _train(1e-6, monitor_kw={}, log=run.log)
        assert pruned is not None and peers is not None and peers.run_id == run.id
        logged = wandb_offline.read(run)
    finally:
        monkeypatch.delenv("WANDB_SWEEP_ID")
        monkeypatch.delenv("WANDB_SWEEP_PARAM_PATH")
        wandb.teardown()
    assert (logged.state, logged.exit_code) == ("failed", 1)
    s = logged.summary
    assert s["gradema/pruned"] is True and s["gradema/prune_cause"] == "behind"
    assert s["gradema/siblings_compared"] == "good0, good1, good2" and s["gradema/siblings_healthy"] == 3
    assert "healthy siblings were at" in s["gradema/prune_reason"]
    # a plateau: pruned once 40% of the siblings' steps were run, and the reason says so
    assert pruned >= 0.4 * (STEPS - 1) and "steps run (a plateau waits for 40%)" in s["gradema/prune_reason"]
    ranks = [v for v in logged.column("gradema/siblings/rank") if v is not None]
    assert ranks and ranks[-1] == 1.0
    record = {r.run_id: r for r in DirectoryStore(siblings).load()}[run.id]
    assert record.state == "pruned" and record.config["batch_size"] == 32


def test_the_sweeps_patience_is_set_by_environment_and_a_bad_value_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wandb_gradema.siblings import PATIENCE
    from wandb_gradema.siblings.peers import PATIENCE_ENV

    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_ID", "r1")
    monkeypatch.setenv(SIBLINGS_DIR_ENV, str(tmp_path))

    def peers_of_a_new_monitor() -> Any:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            monitor = wandb_gradema.watch(opt)
        monitor.remove()
        return monitor.decisions.peers, " ".join(str(w.message) for w in caught)

    peers, _ = peers_of_a_new_monitor()
    assert peers is not None and peers.judge.patience == PATIENCE == 0.4
    monkeypatch.setenv(PATIENCE_ENV, "0")
    peers, _ = peers_of_a_new_monitor()
    assert peers is not None and peers.judge.patience == 0.0
    monkeypatch.setenv(PATIENCE_ENV, "40%")
    peers, said = peers_of_a_new_monitor()
    assert peers is None and "`GRADEMA_SIBLINGS_PATIENCE` must be a share of the sweep's budget in [0, 1]" in said


# ---------------------------------------------------------------------------- W&B public API
class _RecordedRun:
    """A ``wandb.apis.public.Run`` as the API returned it: the three attributes the store reads."""

    def __init__(self, run_id: str, state: str, summary: dict[str, Any]) -> None:
        self.id, self.state, self.summary = run_id, state, summary


def test_the_wandb_store_reads_the_sweeps_ended_and_running_runs_through_the_public_api() -> None:
    from wandb.apis import public

    from wandb_gradema.siblings.stores import SUMMARY_KEY, WandbStore

    assert all(hasattr(public.Run, name) for name in ("id", "state", "summary"))
    assert "runs" in public.Sweep.__init__.__code__.co_names  # Sweep.runs, filled by load()
    if not _HEALTHY:
        _healthy_siblings(_Memory())
    written: dict[str, Any] = {}

    class Run:
        summary = written

    store = WandbStore("ent/proj/sw1", run=Run())
    running = SiblingRecord.from_json(_HEALTHY[0].to_json())
    running.run_id, running.state = "live", "running"
    store.save(running)
    live_body = written.pop(SUMMARY_KEY)  # a running record goes into the summary...
    store.save(running)
    assert written == {}  # ...at most once a minute
    for record in _HEALTHY:
        store.save(record)  # an end always does
    body = written[SUMMARY_KEY]
    quiet = WandbStore("ent/proj/sw1", run=Run(), running_every_s=None)
    written.clear()
    quiet.save(running)
    assert written == {}
    with pytest.raises(ValueError, match="running_every_s"):
        WandbStore("ent/proj/sw1", running_every_s=-1)
    pruned = SiblingRecord.from_json(_HEALTHY[1].to_json())
    pruned.state = "pruned"
    runs = [
        _RecordedRun("good0", "finished", {SUMMARY_KEY: body}),
        _RecordedRun("p", "failed", {SUMMARY_KEY: json.dumps(pruned.to_json())}),
        _RecordedRun("live", "running", {SUMMARY_KEY: live_body}),
        _RecordedRun("queued", "pending", {SUMMARY_KEY: live_body}),
        _RecordedRun("old", "finished", {"loss": 1.0}),
        _RecordedRun("bad", "finished", {SUMMARY_KEY: "{not json"}),
    ]

    class Api:
        def sweep(self, path: str) -> Any:
            assert path == "ent/proj/sw1"
            return type("Sweep", (), {"runs": runs})()

    records = WandbStore("ent/proj/sw1", api=Api()).load()
    assert [(r.run_id, r.state) for r in records] == [("good2", "finished"), ("good1", "pruned"), ("live", "running")]
    live = records[-1]
    assert live.points and live.points[-1].step == running.points[-1].step  # as far as it got
    with pytest.raises(ValueError, match="ENTITY/PROJECT/SWEEP_ID"):
        WandbStore("sw1")


def test_a_running_record_written_from_the_background_thread_reaches_the_runs_summary(wandb_offline: Any) -> None:
    """What agents on other machines read: the record as far as the run got, in its W&B summary,
    written by SweepPeers' background thread (a real offline run, read back with the CLI)."""
    import threading

    from wandb_gradema.siblings.stores import SUMMARY_KEY, WandbStore

    if not _HEALTHY:
        _healthy_siblings(_Memory())
    run = wandb_offline.init()
    running = SiblingRecord.from_json(_HEALTHY[0].to_json())
    running.state = "running"
    writer = threading.Thread(target=WandbStore("ent/proj/sw1", run=run).save, args=(running,))
    writer.start()
    writer.join()
    run.finish()
    summary = wandb_offline.read(run, history=False).summary
    body = summary[SUMMARY_KEY]
    back = SiblingRecord.from_json(json.loads(body) if isinstance(body, str) else body)
    assert back.state == "running" and [p.step for p in back.points] == [p.step for p in running.points]


def test_what_healthy_siblings_showed_at_the_same_step_is_not_prune_grade(tmp_path: Path) -> None:
    from wandb_gradema import EscalationEvent

    store = DirectoryStore(tmp_path)
    _healthy_siblings(store)
    _, peers, pruned = _train(1e-6, store=store, run_id="tiny", monitor_kw={"on_escalation": "warn"})
    assert pruned is None and peers.fired is not None  # warn mode: the sibling escalation only warns

    def event(step: int, kind: str) -> EscalationEvent:
        return EscalationEvent(step, (f"{kind} at step {step}.",), (kind,), 9.0, step, confirmed=True)

    early = peers.review(event(3, "stalled"))  # at step 3 no sibling had moved yet either
    assert not early.confirmed and "showed the same at step 3 and recovered (good0, good1, good2)" in early.reason
    assert peers.review(event(100, "stalled")).confirmed  # by step 100 all three had learned
    assert peers.review(event(7, "nonfinite")).confirmed  # never excused
    assert peers.review(event(7, "siblings_behind")).confirmed


# ---------------------------------------------------------------------------- cold start
_STUCK: list[SiblingRecord] = []


def _stuck_siblings(store: Any, n: int) -> None:
    """``n`` finished siblings that never left the untrained level (one tiny-LR run, judged
    alone, saved under ``n`` ids)."""
    from dataclasses import replace

    if not _STUCK:
        _, peers, pruned = _train(1e-6, store=_Memory(), run_id="stuck")
        assert pruned is None and peers.builder.record.state == "finished"
        _STUCK.append(peers.builder.record)
    for i in range(n):
        store.save(replace(_STUCK[0], run_id=f"stuck{i}"))


def _cold_start(store: Any, extra: SiblingRecord | None = None) -> None:
    """One learner (2.3 -> 0.3 by step 40, ending well) and two siblings that sat at the
    untrained level to their end: three siblings answer, one of them learning."""
    store.save(_synthetic("learner", lambda s: max(0.3, 2.3 - 0.05 * s), 0.05, 20, steps=400))
    for i in range(2):
        store.save(_synthetic(f"stuck{i}", lambda s: 2.3, 0.02, 21 + i, steps=400))
    if extra is not None:
        store.save(extra)


def _judged(
    store: Any,
    levels: Any,
    noise: float,
    run_id: str = "run",
    norm: float = 1.0,
    steps: int = STEPS,
    active: float = 1.0,
    **kwargs: Any,
) -> Any:
    """Feed a run whose loss follows ``levels`` through the monitor's ``SweepPeers``; its
    sibling escalation (or None) and the peers."""
    from wandb_gradema.siblings import SweepPeers

    peers = SweepPeers(store, run_id, background=False, **kwargs)
    gen = torch.Generator().manual_seed(7)
    fired = None
    for step in range(steps):
        fired = fired or peers.observe(step, levels(step) + noise * float(torch.randn(1, generator=gen)), norm, active, 1e-3)
    return fired, peers


def test_cold_start_one_learner_and_two_siblings_that_stayed_stuck_stop_a_sharp_stall() -> None:
    store = _Memory()
    _cold_start(store)
    # a plateau (live gradients, a finite loss at its start) waits for 40% of the siblings' 400
    # steps, then stops well before half of them
    fired, _ = _judged(store, lambda s: 2.3, 0.02, steps=400)
    assert fired is not None and 0.4 * 396 <= fired.step < 200
    assert "1 healthy sibling was at" in fired.reasons[0] and "(learner)" in fired.reasons[0]
    assert "2 that had not learned by this step stayed that way (stuck0, stuck1)" in fired.reasons[0]
    assert "of the siblings' 39" in fired.reasons[0] and "steps run (a plateau waits for 40%)." in fired.reasons[0]
    # a run that learns beside the same three is spared
    fired, peers = _judged(store, lambda s: max(0.5, 2.3 - 0.03 * s), 0.02, "ok", steps=400)
    assert fired is None and peers.latest is not None and not peers.latest.behind
    # with one or two learners only a sharp stall is judged: a stall as noisy as a fifth of the
    # gap is left to the per-run rules (one learner's gradients are no band either)
    fired, _ = _judged(store, lambda s: 2.3, 0.3, steps=400)
    assert fired is None
    fired, _ = _judged(store, lambda s: 2.3, 0.3, norm=10.0, steps=400)  # outside the one learner's norm
    assert fired is None


def test_a_plateau_waits_for_patience_of_the_budget_a_late_learner_leaves_it_before() -> None:
    store = _Memory()
    _cold_start(store)
    # with no patience the same plateau is stopped once its streak spans a window (step 43):
    # a late learner that leaves the untrained level at step 120 would have been stopped too
    late = lambda s: 2.3 if s < 120 else max(0.3, 2.3 - 0.05 * (s - 120))  # noqa: E731
    fired, _ = _judged(store, late, 0.02, steps=400, patience=0.0)
    assert fired is not None and fired.step < 60
    fired, peers = _judged(store, late, 0.02, steps=400)
    assert fired is None and peers.latest is not None and not peers.latest.behind
    # the wait is a share of what the siblings ran: siblings of 200 steps, a plateau prunes at 80+
    short = _Memory()
    short.save(_synthetic("learner", lambda s: max(0.3, 2.3 - 0.05 * s), 0.05, 20, steps=200))
    for i in range(2):
        short.save(_synthetic(f"stuck{i}", lambda s: 2.3, 0.02, 21 + i, steps=200))
    fired, _ = _judged(short, lambda s: 2.3, 0.02, steps=200)
    assert fired is not None and 0.4 * 196 <= fired.step < 100
    # the budget is the longest finished sibling's; with every sibling still running, unknown
    from wandb_gradema.siblings import Reference

    assert Reference([*store.records, *short.records]).budget >= 396
    assert math.isnan(Reference([dataclasses.replace(r, state="running") for r in store.records]).budget)
    with pytest.raises(ValueError, match="`patience` must be a share of the sweep's budget in \\[0, 1\\], got 1.5"):
        _judged(store, lambda s: 2.3, 0.02, patience=1.5)


def test_dead_and_diverged_runs_do_not_wait_for_the_budget() -> None:
    store = _Memory()
    for i in range(3):  # three learners of 400 steps, all units active: a band K learners define
        store.save(_synthetic(f"fast{i}", lambda s, i=i: max(0.3, 2.3 - (0.05 + 0.01 * i) * s), 0.02, 50 + i, steps=400))
    # silent units (active share 0.5 against the learners' 1.0) at the untrained loss: dead
    fired, peers = _judged(store, lambda s: 2.3, 0.02, steps=400, active=0.5)
    assert fired is not None and fired.step < 0.4 * 396 and peers.fired.cause == "dead"
    assert "plateau waits" not in fired.reasons[0]
    # a loss far above its start: diverged
    fired, peers = _judged(store, lambda s: 2.3 if s < 10 else 4.0, 0.02, steps=400)
    assert fired is not None and fired.step < 0.4 * 396 and peers.fired.cause == "diverged"
    # the same flat loss with live units is a plateau: it waits
    fired, peers = _judged(store, lambda s: 2.3, 0.02, steps=400)
    assert fired is not None and fired.step >= 0.4 * 396 and peers.fired.cause == "behind"


def test_a_stuck_sibling_that_learned_later_keeps_the_cold_start_from_judging() -> None:
    store = _Memory()
    # a sibling that sat at the untrained level until step 70, then learned and ended well
    _cold_start(store, _synthetic("late", lambda s: 2.3 if s < 70 else max(0.05, 2.3 - 0.06 * (s - 70)), 0.02, 3, steps=400))
    fired, _ = _judged(store, lambda s: 2.3, 0.02, patience=0.0)  # the veto alone, no wait
    assert fired is None or fired.step > 70


def test_cold_start_fewer_than_k_answering_siblings_judge_nothing(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    _healthy_siblings(store, 1)
    _stuck_siblings(store, 1)  # one learner and one stuck sibling: 2 < K answer
    monitor, peers, pruned = _train(1e-6, store=store, run_id="tiny")
    assert pruned is None and not monitor.events and peers.latest is None
    # stuck siblings alone (no learner) never set a bar either
    store = DirectoryStore(tmp_path / "only-stuck")
    _stuck_siblings(store, 3)
    monitor, peers, pruned = _train(1e-6, store=store, run_id="tiny")
    assert pruned is None and not monitor.events and peers.latest is not None and not peers.latest.behind


def _synthetic(run_id: str, levels: Any, noise: float, seed: int, state: str = "finished", steps: int = STEPS) -> SiblingRecord:
    """A record of a run whose loss follows ``levels(step)`` plus Gaussian noise ``noise``."""
    gen = torch.Generator().manual_seed(seed)
    builder = RecordBuilder(run_id)
    for step in range(steps):
        builder.observe(step, levels(step) + noise * float(torch.randn(1, generator=gen)), 1.0, 1.0, 1e-3)
    builder.record.state = state
    return builder.record


@pytest.mark.parametrize(("noise", "pruned_expected"), [(0.02, True), (0.3, False)])
def test_a_stall_is_judged_only_when_its_noise_resolves_the_gap(noise: float, pruned_expected: bool) -> None:
    store = _Memory()
    for i in range(3):  # three learners, 2.3 -> 1.5 by step 40, ending well
        store.save(_synthetic(f"l{i}", lambda s: max(1.5, 2.3 - 0.02 * s), 0.05, 10 + i))
    fired, _ = _judged(store, lambda s: 2.3, noise)  # flat at the untrained level, gradients like theirs
    # a loss as noisy as the gap cannot tell a stall from a late learner that began to move
    assert (fired is not None) is pruned_expected
    if fired is not None:
        assert fired.step < 60 and "3 healthy siblings were at" in fired.reasons[0]


# ---------------------------------------------------------------------------- concurrent agents
def test_running_siblings_count_as_far_as_they_got_and_a_running_late_learner_vetoes() -> None:
    from wandb_gradema.siblings import Reference

    store = _Memory()
    # one finished learner and one stuck sibling: two answer, below K
    store.save(_synthetic("learner", lambda s: max(0.3, 2.3 - 0.05 * s), 0.05, 20, steps=400))
    store.save(_synthetic("stuck0", lambda s: 2.3, 0.02, 21, steps=400))
    fired, _ = _judged(store, lambda s: 2.3, 0.02)
    assert fired is None
    # a concurrent agent's run, at step 300 of its budget and learning clearly: the third answer
    store.save(_synthetic("running", lambda s: max(0.4, 2.3 - 0.04 * s), 0.05, 22, state="running", steps=300))
    fired, peers = _judged(store, lambda s: 2.3, 0.02, patience=0.0)  # the answers alone, no wait
    assert fired is not None and fired.step < STEPS // 2 and "running" in peers.latest.compared
    # ... unless it is to be compared with finished siblings only
    from wandb_gradema.siblings import SweepPeers

    alone = SweepPeers(store, "run", background=False, live_siblings=False)
    assert "running" not in alone.reference.run_ids
    # a running sibling that sat where this run sits and has learned since is a late learner:
    # this step is not late enough to tell
    store.save(_synthetic("late", lambda s: 2.3 if s < 150 else max(0.2, 2.3 - 0.05 * (s - 150)), 0.02, 23, state="running", steps=260))
    fired, _ = _judged(store, lambda s: 2.3, 0.02, patience=0.0)
    assert fired is None
    # a running sibling gone non-finite is no sibling; a running one never "ended well"
    broken = _synthetic("broken", lambda s: 2.3, 0.02, 24, state="running", steps=200)
    broken.points[-1] = dataclasses.replace(broken.points[-1], nonfinite=True)
    ref = Reference([*store.records, broken])
    at = ref.at(50)
    assert "broken" not in ref.run_ids and not at.good[list(at.run_ids).index("running")]


def test_a_stall_is_counted_from_the_end_of_the_runs_first_window() -> None:
    import re

    from wandb_gradema.siblings.judge import MIN_WINDOW

    store = _Memory()
    for i in range(3):  # three fast learners: clear progress from the first steps
        store.save(_synthetic(f"fast{i}", lambda s: max(0.3, 2.3 - 0.1 * s), 0.02, 30 + i))
    # a deep net that sits at the untrained level until step 35, then learns: spared
    fired, peers = _judged(store, lambda s: 2.3 if s < 35 else max(0.3, 2.3 - 0.05 * (s - 35)), 0.02, "late")
    assert fired is None and peers.latest is not None and not peers.latest.behind
    # a run that never leaves it is still stopped, one window after its first window (no wait
    # for a share of the budget here: the window alone)
    fired, _ = _judged(store, lambda s: 2.3, 0.02, patience=0.0)
    assert fired is not None and 2 * MIN_WINDOW <= fired.step < STEPS // 2
    since = re.search(r"behind since step (\d+)", fired.reasons[0])
    assert since is not None and int(since.group(1)) >= MIN_WINDOW


def test_reference_at_gives_the_same_siblings_whatever_was_asked_before() -> None:
    """``Reference.at`` keeps each set of siblings' fixed fields between queries: asked in any
    order (before, inside and past siblings of different lengths), it answers what a fresh
    reference answers, and the shared arrays cannot be edited by whoever reads them."""
    import numpy as np

    from wandb_gradema.siblings import Reference

    records = [
        _synthetic(f"r{i}", lambda s, i=i: max(0.3, 2.3 - 0.01 * (i + 1) * s), 0.02, 40 + i, steps=120 + 60 * i)
        for i in range(4)
    ]
    used = Reference(records)
    for step in (5, 150, 60, 400, 150, 5, 230, 299, 300, 1000, 60):
        got, fresh = used.at(step), Reference(records).at(step)
        assert got.run_ids == fresh.run_ids, step
        for name in ("start", "loss", "noise", "norm", "active", "end_progress", "end_noise", "good", "last", "live"):
            np.testing.assert_array_equal(getattr(got, name), getattr(fresh, name), err_msg=f"{name} at {step}")
    assert len(used.at(1000).run_ids) < len(used.at(60).run_ids)  # the sets differ along the way
    with pytest.raises(ValueError):
        used.at(60).good[0] = True
