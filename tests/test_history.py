"""The user's own W&B logging is never disturbed: every user row and every monitor row lands whole.

Real offline runs, read back with the W&B CLI. The monitor logs from inside ``opt.step()``;
the user logs in each of the styles scripts use (no step, ``step=`` before or after
``opt.step()``, rows built in two calls with ``commit=False``, their own ``define_metric``
step key), with ``log_every=1`` and a thinned cadence, across an escalation with its telemetry
window and across a prune; on both decision paths (on the deferred one the monitor's rows come
eight at a time).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from helpers import decided_at

import wandb_gradema
from wandb_gradema import GrademaWarning, RunPruned

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths

STEPS = 40
BAD_AT = 20  # a NaN loss: a critical escalation, weights untouched
TELEMETRY = 4
STYLES = ["step_after", "step_before", "split", "plain", "own_axis", "none"]


def _train(wandb_offline: Any, tiny: Any, style: str, *, log_every: int | None, prune: bool = False,
           user_every: int = 1, user_from: int = 0) -> tuple[list[dict[str, Any]], Any, int]:
    """Train with the user logging in ``style``; returns the history rows, the monitor and the
    number of steps that completed."""
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    if style == "own_axis":
        run.define_metric("user/my_step")
        run.define_metric("user/*", step_metric="user/my_step")
    monitor = wandb_gradema.watch(
        opt, model=model, log_every=log_every, telemetry_steps=TELEMETRY,
        on_escalation="prune" if prune else (lambda e: None),
    )
    done = 0
    try:
        for i in range(STEPS):
            x, y = batch(i)
            loss = torch.nn.functional.mse_loss(model(x), y)
            monitor.observe_loss(float("nan") if i == BAD_AT else loss)
            loss.backward()
            logs = i >= user_from and i % user_every == 0
            if logs and style == "step_before":
                run.log({"user/i": i}, step=i)
            if logs and style == "split":
                run.log({"user/a": i}, commit=False)
            opt.step()
            opt.zero_grad()
            if logs and style == "step_after":
                run.log({"user/i": i}, step=i)
            if logs and style == "split":
                run.log({"user/b": i})
            if logs and style == "plain":
                run.log({"user/i": i})
            if logs and style == "own_axis":
                run.log({"user/my_step": i, "user/i": i})
            done += 1
    except RunPruned:
        pass
    monitor.remove()
    if wandb_offline_run_open(run):
        run.finish()
    return wandb_offline.read(run).history, monitor, done


def wandb_offline_run_open(run: Any) -> bool:
    return not getattr(run, "_is_finished", False)


def _user_rows(history: list[dict[str, Any]], style: str) -> list[dict[str, Any]]:
    key = "user/a" if style == "split" else "user/i"
    return [r for r in history if key in r]


def _monitor_steps(history: list[dict[str, Any]]) -> list[int]:
    rows = [r for r in history if "gradema/step" in r]
    assert all("gradema/grad_norm" in r and "gradema/score" in r for r in rows), "a monitor row was split"
    return [int(r["gradema/step"]) for r in rows]


def _expected_monitor_steps(log_every: int, last: int) -> list[int]:
    forced = set(range(BAD_AT, BAD_AT + TELEMETRY + 1))
    return sorted({s for s in range(last + 1) if s % log_every == 0} | {s for s in forced if s <= last})


@pytest.mark.parametrize("log_every", [1, 5])
@pytest.mark.parametrize("style", STYLES)
def test_every_user_row_and_every_monitor_row_lands_whole(wandb_offline, tiny, style: str, log_every: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", GrademaWarning)  # no fallback, no conflict: nothing to warn about
        history, monitor, done = _train(wandb_offline, tiny, style, log_every=log_every)
    assert done == STEPS and [e.step for e in monitor.events] == [BAD_AT]

    user = _user_rows(history, style)
    if style != "none":
        assert [r.get("user/i", r.get("user/a")) for r in user] == list(range(STEPS)), "a user row was dropped"
    if style == "split":
        assert all(r.get("user/b") == r["user/a"] for r in user), "a user row was split"
    if style != "none":  # one row per step from step 0: W&B alone puts row i at _step i
        assert all(r["_step"] == r.get("user/i", r.get("user/a")) for r in user), "a user row landed at another step"

    assert _monitor_steps(history) == _expected_monitor_steps(log_every, STEPS - 1)
    event = [r for r in history if r.get("gradema/escalation_event") == 1]
    assert [r["gradema/step"] for r in event] == [BAD_AT]
    assert any(k.startswith("gradema/layers/") for k in event[0])  # its per-layer telemetry


@pytest.mark.parametrize("style", ["step_after", "split", "plain"])
def test_a_prune_keeps_the_user_rows_before_it_and_the_monitor_rows(wandb_offline, tiny, style: str,
                                                                   sync_every: int) -> None:
    stop = decided_at(BAD_AT, sync_every)  # the step() that decides prunes
    with pytest.warns(GrademaWarning, match=f"Run pruned at step {stop}: Non-finite loss .* at step {BAD_AT}"):
        history, monitor, done = _train(wandb_offline, tiny, style, log_every=1, prune=True)
    assert done == stop and monitor.pruned is not None and monitor.pruned.step == stop
    user = [r.get("user/i", r.get("user/a")) for r in _user_rows(history, style)]
    # the user logs the pruned step too when they log before opt.step() (split rows' first half)
    assert user[:stop] == list(range(stop)) and len(user) <= stop + 1
    assert _monitor_steps(history) == list(range(stop + 1))  # the prune step's row included


def test_explicit_steps_sparser_than_the_monitor_fall_back_with_one_warning(wandb_offline, tiny, monkeypatch) -> None:
    """The one style that cannot keep every monitor row: step= less often than the monitor logs.

    Monitor rows wait for user rows (one merged into each); once more than ``MAX_WAITING`` wait
    (lowered here to reach it in 40 steps), the oldest are combined, with one warning. The
    user's rows are untouched and the escalation stays visible.
    """
    from wandb_gradema import history as history_module

    monkeypatch.setattr(history_module, "MAX_WAITING", 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history, _, _ = _train(wandb_offline, tiny, "step_after", log_every=1, user_every=10)
    combined = [w for w in caught if "logs its own rows less often than gradema" in str(w.message)]
    assert len(combined) == 1
    user = _user_rows(history, "step_after")
    assert [r["user/i"] for r in user] == [0, 10, 20, 30] and all(r["_step"] == r["user/i"] for r in user)
    steps = _monitor_steps(history)
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == STEPS - 1 and len(steps) < STEPS
    event = [r for r in history if r.get("gradema/escalation_event") == 1]
    assert [r["gradema/step"] for r in event] == [BAD_AT], "the escalation's row is never folded"
    assert any(k.startswith("gradema/layers/") for k in event[0])
    assert max(r.get("gradema/score_max", 0.0) for r in history) == math.inf  # the NaN step's score


def test_explicit_steps_that_start_late_land_at_their_steps(wandb_offline, tiny, sync_every: int) -> None:
    """Nobody logs for 15 steps: the monitor's own rows sit at _step = their optimizer step, so the
    user's step= rows that start then land where W&B alone puts them (issue 19, bug 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", GrademaWarning)
        history, _, _ = _train(wandb_offline, tiny, "step_after", log_every=1, user_from=15)
    user = _user_rows(history, "step_after")
    assert [(r["_step"], r["user/i"]) for r in user] == [(i, i) for i in range(15, STEPS)]
    assert _monitor_steps(history) == _expected_monitor_steps(1, STEPS - 1)
    placed = [(r["_step"], r["gradema/step"]) for r in history if "gradema/step" in r]
    assert all(at == step if sync_every == 1 else at >= step for at, step in placed)


def test_explicit_steps_behind_the_monitors_rows_are_moved_together_and_warned_about(wandb_offline, tiny) -> None:
    """A late start at a step behind the rows the monitor already wrote (W&B would drop them):
    every later step= moves by one offset, so the two logs of one step stay one row."""
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, model=model, log_every=1)
    with pytest.warns(GrademaWarning, match=r"your log\(step=0\) came after gradema .* moved by"):
        for i in range(30):
            x, y = batch(i)
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if i >= 20:  # a second phase that counts its own steps from 0
                run.log({"user/a": i}, step=i - 20)
                run.log({"user/b": i}, step=i - 20)
    monitor.remove()
    run.finish()
    history = wandb_offline.read(run).history
    user = [r for r in history if "user/a" in r]
    first = user[0]["_step"]  # where the monitor's rows had got to (step 19, or 15 on the deferred path)
    assert first >= 15
    assert [(r["_step"] - first, r["user/a"], r["user/b"]) for r in user] == [(k, 20 + k, 20 + k) for k in range(10)]
    assert _monitor_steps(history) == list(range(30))


def test_two_watched_optimizers_share_the_user_rows(wandb_offline, tiny) -> None:
    model, batch = tiny
    head = torch.nn.Linear(1, 1)
    opt_a = torch.optim.SGD(model.parameters(), lr=0.01)
    opt_b = torch.optim.SGD(head.parameters(), lr=0.01)
    run = wandb_offline.init()
    mon_a = wandb_gradema.watch(opt_a, log_every=1, name="body")
    mon_b = wandb_gradema.watch(opt_b, log_every=1, name="head")
    for i in range(12):
        x, y = batch(i)
        loss = torch.nn.functional.mse_loss(head(model(x)), y)
        loss.backward()
        opt_a.step()
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
        run.log({"user/i": i}, step=i)
    mon_a.remove()
    mon_b.remove()
    run.finish()
    history = wandb_offline.read(run).history
    assert [r["user/i"] for r in history if "user/i" in r] == list(range(12))
    for name in ("body", "head"):
        assert [int(r[f"gradema/{name}/step"]) for r in history if f"gradema/{name}/step" in r] == list(range(12))
    assert not any(math.isnan(r.get("gradema/body/grad_norm", 0.0)) for r in history)
