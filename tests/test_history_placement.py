"""Where rows land: every user row at the ``_step`` it has without the monitor, every monitor row
in the history with its ``gradema/step``.

Each script runs twice on real offline runs read back with the W&B CLI: once without the monitor
(W&B's own placement: the reference) and once watched; the user's rows must be identical, key for
key and ``_step`` for ``_step``. Styles and their mixtures, on both decision paths.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import wandb_gradema
from wandb_gradema import GrademaWarning
from wandb_gradema.history import HistoryWriter

STEPS = 24
Hook = Callable[[Any, int], None]


def _nothing(run: Any, i: int) -> None:
    pass


def _train(run: Any, model: Any, opt: torch.optim.Optimizer, batch: Any, steps: int,
           before: Hook = _nothing, after: Hook = _nothing) -> None:
    """``steps`` training steps, with the script's logging before and after each ``opt.step()``."""
    for i in range(steps):
        x, y = batch(i)
        torch.nn.functional.mse_loss(model(x), y).backward()
        before(run, i)
        opt.step()
        opt.zero_grad()
        after(run, i)


def _log_step(run: Any, i: int) -> None:
    run.log({"u/i": i}, step=i)


#: name -> (at the start, before opt.step() of step i, after it): how scripts log.
SCRIPTS: dict[str, tuple[Callable[[Any], None], Hook, Hook]] = {
    "step_after": (lambda run: None, _nothing, _log_step),
    "step_before": (lambda run: None, _log_step, _nothing),
    "plain_after": (lambda run: None, _nothing, lambda run, i: run.log({"u/i": i})),
    "plain_before": (lambda run: None, lambda run, i: run.log({"u/i": i}), _nothing),
    "split": (
        lambda run: None,
        lambda run, i: run.log({"u/a": i}, commit=False),
        lambda run, i: run.log({"u/b": i}),
    ),
    # issue 19, bug 1: one plain log() first, then two step= logs per step
    "plain_then_step_twice": (
        lambda run: run.log({"u/n_params": 3}),
        _nothing,
        lambda run, i: (run.log({"u/loss": i}, step=i), run.log({"u/acc": i}, step=i)),
    ),
    # bug 1's second form: step= logging that starts after an unlogged warm-up
    "step_late": (lambda run: None, _nothing, lambda run, i: run.log({"u/i": i}, step=i) if i >= 15 else None),
    "step_sparse": (lambda run: None, _nothing, lambda run, i: run.log({"u/i": i}, step=i) if i % 5 == 0 else None),
    "step_and_plain_eval": (
        lambda run: None,
        lambda run, i: run.log({"u/lr": i}, step=i),
        lambda run, i: run.log({"u/eval": i}) if i % 4 == 3 else None,
    ),
    "own_axis": (
        lambda run: (run.define_metric("u/my_step"), run.define_metric("u/*", step_metric="u/my_step")),
        _nothing,
        lambda run, i: run.log({"u/my_step": i, "u/i": i}),
    ),
}


def _run(wandb_offline: Any, tiny: Any, script: str, *, watched: bool, log_every: int = 1,
         ending: str = "finish") -> list[dict[str, Any]]:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start, before, after = SCRIPTS[script]
    run = wandb_offline.init()
    start(run)
    monitor = wandb_gradema.watch(opt, model=model, log_every=log_every) if watched else None
    _train(run, model, opt, batch, STEPS, before, after)
    if monitor is not None and ending == "remove":
        monitor.remove()
    run.finish()
    return wandb_offline.read(run).history


def user_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user's keys of each row that has any, with its ``_step``."""
    out = []
    for row in history:
        mine = {k: v for k, v in row.items() if k.startswith("u/")}
        if mine:
            out.append({"_step": row["_step"], **mine})
    return out


def monitor_rows(history: list[dict[str, Any]], prefix: str = "gradema") -> list[dict[str, Any]]:
    rows = [r for r in history if f"{prefix}/step" in r]
    assert all(f"{prefix}/grad_norm" in r for r in rows), "a monitor row was split"
    return rows


_REFERENCE: dict[str, list[dict[str, Any]]] = {}


def reference(wandb_offline: Any, tiny: Any, script: str) -> list[dict[str, Any]]:
    """The user's rows of ``script`` run without the monitor (W&B's own placement), run once."""
    if script not in _REFERENCE:
        _REFERENCE[script] = user_rows(_run(wandb_offline, tiny, script, watched=False))
    return _REFERENCE[script]


@pytest.mark.parametrize(
    "script,ending",
    [(name, "finish") for name in sorted(SCRIPTS)] + [(name, "remove") for name in ("step_after", "split", "plain_then_step_twice")],
)
def test_user_rows_stay_where_wandb_puts_them_and_every_monitor_row_lands(
    wandb_offline, tiny, script: str, ending: str, sync_every: int
) -> None:
    # the host path with a thinned cadence (issue 19, bug 6: a row decided while the user's row of
    # the step before is still pending), the deferred path with a row per step (rows come 8 at once)
    log_every = 3 if sync_every == 1 else 1
    history = _run(wandb_offline, tiny, script, watched=True, ending=ending, log_every=log_every)
    assert user_rows(history) == reference(wandb_offline, tiny, script), "a user row moved, changed or was lost"

    rows = monitor_rows(history)
    steps = [int(r["gradema/step"]) for r in rows]
    assert steps == list(range(0, STEPS, log_every)), "a monitor row was lost, doubled or reordered"
    # a monitor row never sits in a row of an earlier step than its own
    assert all(r["_step"] >= r["gradema/step"] for r in rows)
    if sync_every == 1 and script in ("step_after", "step_before", "split", "plain_after", "own_axis", "step_late"):
        # decided at once, each monitor row sits in the user's row of its own step
        assert all(r["_step"] == r["gradema/step"] for r in rows)


@pytest.mark.usefixtures("sync_every")
def test_nobody_else_logs_rows_sit_at_their_optimizer_step(wandb_offline, tiny, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, log_every=1)
    _train(run, model, opt, batch, STEPS)
    monitor.remove()
    run.finish()
    rows = monitor_rows(wandb_offline.read(run).history)
    assert [(r["_step"], r["gradema/step"]) for r in rows] == [(i, i) for i in range(STEPS)]


def test_two_watched_optimizers_each_keep_every_row(wandb_offline, tiny) -> None:
    model, batch = tiny
    head = torch.nn.Linear(1, 1)
    opts = [torch.optim.SGD(model.parameters(), lr=0.01), torch.optim.SGD(head.parameters(), lr=0.01)]
    run = wandb_offline.init()
    run.log({"u/n_params": 3})
    monitors = [wandb_gradema.watch(o, log_every=1, name=n) for o, n in zip(opts, ("body", "head"))]
    for i in range(12):
        x, y = batch(i)
        torch.nn.functional.mse_loss(head(model(x)), y).backward()
        for o in opts:
            o.step()
            o.zero_grad()
        run.log({"u/i": i}, step=i)
    run.finish()
    history = wandb_offline.read(run).history
    assert [(r["_step"], r["u/i"]) for r in history if "u/i" in r] == [(i, i) for i in range(1, 12)]
    for name in ("body", "head"):
        assert [int(r[f"gradema/{name}/step"]) for r in monitor_rows(history, f"gradema/{name}")] == list(range(12))
    assert monitors[0].sink._history is None or monitors[0].sink._history is monitors[1].sink._history


def test_a_thousand_watch_remove_cycles_leave_nothing_on_the_run(wandb_offline) -> None:
    """issue 19, bug 4: two monitors watched and removed 1,000 times on one run (a notebook, a
    trial loop): the run's log() and finish() stay W&B's own, nothing is stacked."""
    run = wandb_offline.init()
    params = [torch.nn.Parameter(torch.ones(2))]
    opts = [torch.optim.SGD(params, lr=0.1), torch.optim.SGD(params, lr=0.1)]
    for _ in range(1000):
        monitors = [wandb_gradema.watch(o, name=n) for o, n in zip(opts, ("a", "b"))]
        assert HistoryWriter.of(run) is monitors[0].sink._history is monitors[1].sink._history
        for m in monitors:
            m.remove()
        assert HistoryWriter.of(run) is None
    assert "_partial_history_callback" not in vars(run) and "finish" not in vars(run)
    run.log({"u/i": 1})
    run.finish()
    assert wandb_offline.read(run).summary["u/i"] == 1


def test_a_second_thread_logging_during_a_monitor_write_is_seen(wandb_offline) -> None:
    """The write flag is per thread: another thread's log() while this one writes counts."""
    run = wandb_offline.init()
    params = [torch.nn.Parameter(torch.ones(2))]
    monitor = wandb_gradema.watch(torch.optim.SGD(params, lr=0.1), log_every=1)
    writer = HistoryWriter.of(run)
    assert writer is not None and writer.style == "unknown"
    writer._local.writing = True  # this thread is inside one of the writer's own log() calls
    other = threading.Thread(target=lambda: run.log({"u/eval": 1.0}, step=5))
    other.start()
    other.join()
    writer._local.writing = False
    assert writer.style == "user" and writer._counter == 5
    monitor.remove()
    run.finish()
    assert [(r["_step"], r["u/eval"]) for r in wandb_offline.read(run).history if "u/eval" in r] == [(5, 1.0)]


def test_threads_logging_beside_training_keep_every_row(wandb_offline, tiny) -> None:
    """An eval thread logs its own rows (its own step key) while training logs step= rows."""
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, log_every=1)
    stop = threading.Event()

    def evaluate() -> None:
        k = 0
        while not stop.is_set() and k < 200:
            run.log({"u/eval_k": k}, commit=False)
            k += 1

    thread = threading.Thread(target=evaluate)
    thread.start()
    _train(run, model, opt, batch, STEPS, after=_log_step)
    stop.set()
    thread.join()
    monitor.remove()
    run.finish()
    history = wandb_offline.read(run).history
    assert [(r["_step"], r["u/i"]) for r in history if "u/i" in r] == [(i, i) for i in range(STEPS)]
    assert [int(r["gradema/step"]) for r in monitor_rows(history)] == list(range(STEPS))


_CHILD = """
import sys, torch, wandb, wandb_gradema
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.01)

def train(run):
    monitor = wandb_gradema.watch(opt, log_every=1, sync_every=8)
    for i in range(21):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        run.log({"u/i": i}, step=i)
    return monitor

if sys.argv[1] == "with":
    with wandb.init(project="gradema-tests", mode="offline") as run:
        monitor = train(run)
else:  # the script just ends: no finish(), no remove()
    run = wandb.init(project="gradema-tests", mode="offline")
    monitor = train(run)
"""


@pytest.mark.parametrize("ending", ["with", "script_end"])
def test_a_run_ended_by_a_with_block_or_the_script_keeps_the_last_rows_and_summary(
    tmp_path, ending: str
) -> None:
    """issue 19, bug 2: with sync_every=8, steps 16-20 are still queued when the run ends."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from wandb_gradema.offline import find_runs, read_run

    env = {**os.environ, "WANDB_DIR": str(tmp_path), "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-c", _CHILD, ending], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = find_runs(tmp_path)
    run = read_run(path)
    assert [(r["_step"], r["u/i"]) for r in run.history if "u/i" in r] == [(i, i) for i in range(21)]
    assert [int(r["gradema/step"]) for r in monitor_rows(run.history)] == list(range(21))
    assert run.summary["gradema/steps_observed"] == 21 and not run.summary["gradema/escalated"]


def _clipped_steps(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int) -> None:
    """Steps whose gradients were clipped before step(): the norm repeats (the clipping advice)."""
    for i in range(steps):
        (params[0] * (1.0 + i)).sum().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()


def test_warnings_as_errors_never_raise_from_opt_step() -> None:
    """issue 19, bug 5: under `-W error` (every warning an error) no opt.step() raises; the
    "no active W&B run" warning and the clipping advice are shown, never as internal errors."""
    params = [torch.nn.Parameter(torch.ones(4))]
    opt = torch.optim.SGD(params, lr=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")
        monitor = wandb_gradema.watch(opt, log_every=1)
        _clipped_steps(opt, params, 30)
        monitor.remove()
    shown = [str(w.message) for w in caught]
    assert monitor.internal_errors == 0 and monitor.step == 30
    assert any("No active W&B run" in m for m in shown) and any("steps in a row" in m for m in shown)
    assert not any("internal error" in m for m in shown)


def test_a_filter_naming_gradema_warnings_still_raises_them() -> None:
    """Only an explicit opt-in turns our warnings into errors: the advice then raises as itself."""
    params = [torch.nn.Parameter(torch.ones(4))]
    opt = torch.optim.SGD(params, lr=0.01)
    monitor = wandb_gradema.watch(opt, log_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("error", message=".*steps in a row", category=GrademaWarning)
        with pytest.raises(GrademaWarning, match="steps in a row"):
            _clipped_steps(opt, params, 30)
    assert monitor.internal_errors == 0
    monitor.remove()


def test_python_W_error_script_trains_to_the_end(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import torch, wandb_gradema\n"
        "p = [torch.nn.Parameter(torch.ones(4))]\n"
        "opt = torch.optim.SGD(p, lr=0.01)\n"
        "m = wandb_gradema.watch(opt, log_every=1)\n"
        "for i in range(30):\n"
        "    (p[0] * (1.0 + i)).sum().backward()\n"
        "    torch.nn.utils.clip_grad_norm_(p, 1.0)\n"
        "    opt.step(); opt.zero_grad()\n"
        "m.remove()\n"
        "print('steps', m.step, 'internal', m.internal_errors)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steps 30 internal 0" in done.stdout
    assert "No active W&B run" in done.stderr and "steps in a row" in done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


def test_without_the_history_callback_user_rows_stay_and_the_version_is_named(
    wandb_offline, tiny, monkeypatch
) -> None:
    """An SDK without the one private hook: merge-only mode, nothing of the user's moves."""
    import wandb

    from wandb_gradema import history

    monkeypatch.setattr(history, "_CALLBACK", "_no_such_callback")
    with pytest.warns(GrademaWarning, match=f"wandb {wandb.__version__} has no history callback"):
        rows = _run(wandb_offline, tiny, "step_after", watched=True)
    assert user_rows(rows) == reference(wandb_offline, tiny, "step_after")
    assert monitor_rows(rows), "the latest monitor values still reach the user's rows"


def test_without_teardown_hooks_finish_still_writes_the_last_rows(wandb_offline, tiny, monkeypatch) -> None:
    import wandb

    from wandb_gradema import history

    monkeypatch.setattr(history, "_TEARDOWN", "_no_such_hooks")
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    with pytest.warns(GrademaWarning, match=f"wandb {wandb.__version__} has no teardown hooks"):
        wandb_gradema.watch(opt, log_every=1, sync_every=8)
    _train(run, model, opt, batch, 13, after=_log_step)
    run.finish()
    history_rows = wandb_offline.read(run).history
    assert [int(r["gradema/step"]) for r in monitor_rows(history_rows)] == list(range(13))


def test_the_offline_reader_names_a_wandb_too_old_for_it(tmp_path, monkeypatch) -> None:
    """issue 19, bug 3: wandb before 0.31 has no `leet inspect --json`: say so, do not hang."""
    import importlib.metadata

    from wandb_gradema import offline

    offline._check_reader.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.19.11")
    try:
        with pytest.raises(RuntimeError, match=r"wandb 0\.19\.11 does not have.*wandb>=0\.31"):
            offline.read_run(tmp_path)
    finally:
        offline._check_reader.cache_clear()
