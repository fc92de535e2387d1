"""GradientMonitor end to end: a real model, a real optimizer, real W&B in offline mode.

Every test runs twice: on the host path (CPU's default, every step decided at once) and on the
deferred path accelerators take (values queued as tensors, read back and decided every 8
steps), which ``sync_every=8`` runs on CPU.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import DEFERRED
from helpers import decided_at, nan_safe, train_loop

import wandb_gradema
from wandb_gradema import EscalationError, GrademaWarning, GradientEMATracker
from wandb_gradema.monitor import PRUNED_TAG

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths


def test_watch_keeps_the_optimizer_and_its_scheduler(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    cls = type(opt)
    with wandb_gradema.watch(opt) as monitor:
        for i in range(10):
            train_loop(model, opt, batch, 1, start=i, monitor=monitor)
            sched.step()
        assert monitor.step == 10
    assert type(opt) is cls and opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    assert monitor.last[0].lr == pytest.approx(5e-4)  # the LR the last step used
    train_loop(model, opt, batch, 2)
    assert monitor.step == 10  # removed: no longer observing


def test_logs_one_section_with_the_optimizer_step_as_x_axis(tiny, wandb_offline) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, log_every=5)
    ref: list[float] = []
    train_loop(model, opt, batch, 20, monitor=monitor, ref_norms=ref)
    monitor.remove()
    run.finish()
    logged = wandb_offline.read(run)

    rows = [r for r in logged.history if "gradema/step" in r]
    assert [r["gradema/step"] for r in rows] == [0, 5, 10, 15]
    assert all(k.startswith("gradema/") for r in rows for k in r if not k.startswith("_"))
    expected = {
        "grad_norm", "grad_norm_ema", "norm_drift", "health", "health_ema", "health_drift", "active_share",
        "score", "escalated", "escalation_event", "nonfinite_steps", "skipped_steps", "lr", "loss",
        "norm_drift_max", "health_drift_max", "score_max", "grad_norm_max", "health_min",
    }
    assert expected <= {k.removeprefix("gradema/") for k in rows[1]}
    for r in rows:  # the tracked norm is the norm before the update, as torch computes it
        assert r["gradema/grad_norm"] == pytest.approx(ref[r["gradema/step"]], rel=1e-5)
    axis = [m for m in logged.metrics if m.get("glob_name") == "gradema/*"]
    assert axis and axis[0]["step_metric"] == "gradema/step"
    assert logged.summary["gradema/escalated"] is False
    assert logged.summary["gradema/steps_observed"] == 20


def test_thinned_logging_keeps_the_maximum_drift_between_rows(tiny, wandb_offline) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, log_every=10, ema_decay=0.9)
    ref: list[float] = []
    train_loop(model, opt, batch, 30, monitor=monitor, ref_norms=ref)
    monitor.remove()
    run.finish()
    rows = {r["gradema/step"]: r for r in wandb_offline.read(run).history if "gradema/step" in r}
    tracker = GradientEMATracker(decay=0.9)
    drifts = [tracker.update(n, 1.0).norm_drift for n in ref]
    assert rows[10]["gradema/norm_drift_max"] == pytest.approx(max(drifts[1:11]), rel=1e-4)
    assert rows[20]["gradema/norm_drift_max"] == pytest.approx(max(drifts[11:21]), rel=1e-4)
    assert rows[20]["gradema/grad_norm_max"] == pytest.approx(max(ref[11:21]), rel=1e-5)


def test_nan_gradients_escalate_at_once_with_telemetry_summary_and_alert(tiny, wandb_offline) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, model=model, log_every=100, telemetry_steps=4)
    train_loop(model, opt, batch, 12, monitor=monitor)
    assert monitor.last[0].step == 11  # judged so far (read back on the deferred path)
    ema_before = monitor.tracker.norm_ema
    with pytest.warns(GrademaWarning, match="escalated at step 12: Non-finite gradient norm"):  # when decided
        train_loop(model, opt, batch, 1, start=12, monitor=monitor, nan_at={12})
        assert monitor.last[0].step == 12  # judged (read back on the deferred path)
        assert monitor.tracker.norm_ema == ema_before  # the NaN step never entered the EMA
        model.load_state_dict({k: torch.nan_to_num(v) for k, v in model.state_dict().items()})
        train_loop(model, opt, batch, 8, start=13, monitor=monitor)
    monitor.remove()
    run.finish()
    logged = wandb_offline.read(run)

    assert monitor.escalated and [e.step for e in monitor.events] == [12]
    assert monitor.events[0].anomaly_types == ("nonfinite",)
    rows = {r["gradema/step"]: r for r in logged.history if "gradema/step" in r}
    assert sorted(rows) == [0, 12, 13, 14, 15, 16]  # step 0, then the event and its window
    assert rows[12]["gradema/escalation_event"] == 1 and rows[16]["gradema/escalated"] == 1
    assert math.isnan(rows[12]["gradema/layers/0.weight"])
    assert rows[13]["gradema/layers/2.bias"] > 0
    assert logged.summary["gradema/first_escalation_step"] == 12
    assert "Non-finite gradient norm" in logged.summary["gradema/first_escalation_reason"]
    assert logged.summary["gradema/nonfinite_steps"] == 1
    assert len(logged.alerts) == 1 and "step 12" in logged.alerts[0]["title"]
    assert logged.state == "finished"  # outside a sweep the default only warns


def test_without_a_run_tracking_works_and_one_warning_says_logging_is_off(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, log_every=1, on_escalation=lambda e: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_loop(model, opt, batch, DEFERRED, monitor=monitor, nan_at={3})
    messages = [str(w.message) for w in caught if issubclass(w.category, GrademaWarning)]
    assert sum("No active W&B run" in m for m in messages) == 1
    assert [e.step for e in monitor.events] == [3]


def test_disabled_wandb_warns_once_and_keeps_tracking(tiny, wandb_offline) -> None:
    import wandb

    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb.init(mode="disabled")
    monitor = wandb_gradema.watch(opt, log_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_loop(model, opt, batch, DEFERRED, monitor=monitor)  # to a decision step on either path
    run.finish()
    messages = [str(w.message) for w in caught if issubclass(w.category, GrademaWarning)]
    assert messages == [m for m in messages if "disabled" in m] and len(messages) == 1
    assert monitor.step == DEFERRED and monitor.last[0].grad_norm > 0


def test_a_wandb_failure_never_stops_training(tiny, wandb_offline) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, run=run, log_every=1)
    train_loop(model, opt, batch, 3, monitor=monitor)
    run.finish()  # the script finishes the run early; W&B would raise on log()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_loop(model, opt, batch, 5, start=3, monitor=monitor, nan_at={5})
    messages = [str(w.message) for w in caught if issubclass(w.category, GrademaWarning)]
    assert sum("run was finished while training goes on" in m for m in messages) == 1
    assert not any("failed" in m for m in messages)
    assert monitor.step == 8 and [e.step for e in monitor.events] == [5]  # still tracked and decided
    logged = wandb_offline.read(run)
    # Everything measured before finish() went in first, queued steps too (deferred path).
    assert [r["gradema/step"] for r in logged.history if "gradema/step" in r] == [0, 1, 2]
    assert logged.summary["gradema/steps_observed"] == 3


def test_gradscaler_steps_are_seen_unscaled_and_skipped_ones_are_counted(tiny, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    monitor = wandb_gradema.watch(opt, scaler=scaler, max_skipped_steps=3, on_escalation="warn")
    x, y = batch(0)
    for i in range(4):
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        true_norm = torch.nn.utils.get_total_norm([p.grad / scaler.get_scale() for p in model.parameters()])
        if i in (1, 2):
            next(model.parameters()).grad.fill_(float("inf"))  # an fp16-style overflow
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if i in (0, 3):
            assert monitor.last[0].grad_norm == pytest.approx(true_norm.item(), rel=1e-5)
    assert (monitor.step, monitor.skipped_steps) == (2, 2)
    assert monitor.last[0].step == 1 and not monitor.escalated

    with pytest.warns(GrademaWarning, match="3 optimizer steps in a row skipped by the GradScaler"):
        for _ in range(3 if sync_every == 1 else sync_every - 4):  # to the decision step
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            next(model.parameters()).grad.fill_(float("nan"))
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
    assert monitor.events[0].anomaly_types == ("skipped_steps",)
    monitor.remove()
    assert "step" not in vars(scaler)  # the scaler is left as it was


def test_gradient_accumulation_gives_one_observation_per_optimizer_step(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    for step in range(3):
        losses = []
        for micro in range(4):
            x, y = batch(step * 4 + micro)
            loss = torch.nn.functional.mse_loss(model(x), y)
            monitor.observe_loss(loss)
            losses.append(loss.item())
            (loss / 4).backward()
        opt.step()
        opt.zero_grad()
        assert monitor.last[0].loss == pytest.approx(sum(losses) / 4, rel=1e-6)
    assert monitor.step == 3


@pytest.mark.parametrize("how", ["monitor.clip_grad_norm_", "max_norm option"])
def test_clipping_tracks_the_pre_clip_norm_measured_once(tiny, monkeypatch, how: str) -> None:
    from wandb_gradema import norms

    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    calls = []
    real = norms.measure
    monkeypatch.setattr(norms, "measure", lambda params, **kw: calls.append(1) or real(params, **kw))
    monitor = wandb_gradema.watch(opt, max_norm=0.1 if how == "max_norm option" else None)
    reference = [p.detach().clone() for p in model.parameters()]
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    pre_clip = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    expected_grads = [p.grad * min(1.0, 0.1 / (pre_clip + 1e-6)) for p in model.parameters()]
    if how == "monitor.clip_grad_norm_":
        returned = monitor.clip_grad_norm_(0.1)
        assert returned.item() == pytest.approx(pre_clip, rel=1e-6)
    opt.step()
    assert monitor.last[0].grad_norm == pytest.approx(pre_clip, rel=1e-6)
    assert len(calls) == 1  # one pass over the gradients
    for p, g, p0 in zip(model.parameters(), expected_grads, reference):
        torch.testing.assert_close(p.detach(), p0 - 0.01 * g)  # the update used clipped grads


def test_param_groups_frozen_params_and_mixed_dtypes() -> None:
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 4)
    b = torch.nn.Linear(4, 4).double()
    unused = torch.nn.Parameter(torch.zeros(3))  # never gets a gradient
    opt = torch.optim.SGD([{"params": a.parameters(), "lr": 0.1}, {"params": [*b.parameters(), unused], "lr": 0.3}])
    monitor = wandb_gradema.watch(opt)
    x = torch.randn(2, 4)
    (a(x).sum() + b(x.double()).sum()).backward()
    ref = math.sqrt(sum(p.grad.double().norm().item() ** 2 for p in [*a.parameters(), *b.parameters()]))
    opt.step()
    obs = monitor.last[0]
    assert obs.grad_norm == pytest.approx(ref, rel=1e-6)
    assert obs.lr == 0.3 and obs.active_share == 1.0  # the gradient-less parameter is left out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_gradients(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    model(torch.randn(8, 16, dtype=dtype)).float().pow(2).mean().backward()
    ref = torch.nn.utils.get_total_norm([p.grad.float() for p in model.parameters()]).item()
    opt.step()
    assert monitor.last[0].grad_norm == pytest.approx(ref, rel=1e-3)


def test_sparse_gradients_do_not_break_the_hook() -> None:
    emb = torch.nn.Embedding(50, 8, sparse=True)
    opt = torch.optim.SGD(emb.parameters(), lr=0.1)
    monitor = wandb_gradema.watch(opt)
    emb(torch.tensor([1, 2, 3])).pow(2).sum().backward()
    ref = emb.weight.grad.to_dense().norm().item()
    opt.step()
    assert monitor.last[0].grad_norm == pytest.approx(ref, rel=1e-6)


def _run_logged(tiny_factory, wandb_offline, steps, *, start=0, state=None):
    """Train from a fixed seed (or restored state), logging every 3rd step; return rows and state."""
    model, batch = tiny_factory()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])  # the monitor state rides inside
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, log_every=3, ema_decay=0.8, on_escalation=lambda e: None)
    if state is not None:
        opt.load_state_dict(state["optimizer"])
    train_loop(model, opt, batch, steps, start=start, monitor=monitor, nan_at={15})
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    monitor.remove()
    run.finish()
    rows = [
        {k: v for k, v in r.items() if k.startswith("gradema/")}
        for r in wandb_offline.read(run).history
        if "gradema/step" in r
    ]
    return rows, saved, monitor


def test_resume_from_checkpoint_logs_exactly_the_uninterrupted_sequence(tmp_path, wandb_offline, tiny) -> None:
    def factory():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        return model, tiny[1]

    full, _, _ = _run_logged(factory, wandb_offline, 20)
    first, state, _ = _run_logged(factory, wandb_offline, 11)
    assert "gradema" in state["optimizer"]  # existing checkpoints carry the drift state
    second, _, resumed = _run_logged(factory, wandb_offline, 9, start=11, state=state)
    assert resumed.step == 20
    assert nan_safe(first + second) == nan_safe(full)


def test_monitor_state_dict_round_trip_without_the_optimizer(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, save_with_optimizer=False)
    train_loop(model, opt, batch, 5, monitor=monitor)
    assert "gradema" not in opt.state_dict()
    state = monitor.state_dict()
    monitor.remove()
    fresh = wandb_gradema.watch(opt)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    with pytest.raises(KeyError, match=r"missing keys \['events'\]"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "events"})
    with pytest.raises(ValueError, match="format_version 99"):
        fresh.load_state_dict({**state, "format_version": 99})


def test_on_escalation_raise_and_callable(tiny, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, on_escalation="raise")
    with pytest.raises(EscalationError, match="at step 2") as err:
        train_loop(model, opt, batch, DEFERRED, monitor=monitor, nan_at={2})
    assert err.value.step == 2 and monitor.step == decided_at(2, sync_every) + 1  # raised by that step()
    opt.zero_grad()  # the aborted step left its NaN gradients behind
    monitor.remove()
    # On the deferred path the steps before the decision applied the NaN gradients.
    model.load_state_dict({k: torch.nan_to_num(v) for k, v in model.state_dict().items()})
    seen = []
    monitor = wandb_gradema.watch(opt, on_escalation=seen.append)
    train_loop(model, opt, batch, DEFERRED, monitor=monitor, nan_at={1})
    assert [e.step for e in seen] == [1]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"log_every": 0}, ValueError, r"`log_every` must be an int >= 1, got 0"),
        ({"on_escalation": "stop"}, ValueError, r"`on_escalation` must be one of 'auto', 'warn', 'prune', 'raise'; got 'stop'"),
        ({"max_norm": -1.0}, ValueError, r"`max_norm` must be in \(0, inf\)"),
        ({"sensitivity": 0}, ValueError, r"`sensitivity` must be in \(0, inf\)"),
        ({"z_threshold": "high"}, TypeError, r"`z_threshold` must be a number"),
        ({"patience": 1.5}, TypeError, r"`patience` must be an int"),
        ({"logevery": 5}, TypeError, r"unknown option\(s\) `logevery` \(did you mean `log_every`\?\)\.$"),
        ({"modle": None}, TypeError, r"`modle` \(did you mean `model`\?\)"),
        ({"clip": 1.0}, TypeError, r"`clip` \(did you mean `max_norm`\?\)"),
        ({"wandb_run": None}, TypeError, r"`wandb_run` \(did you mean `run`\?\)"),
        ({"frobnicate": 1}, TypeError, r"`frobnicate`\. The options are listed in the README's option table"),
        ({"run": "myrun"}, TypeError, r"`run` must be a W&B run \(what wandb.init\(\) returns\) or None.*str 'myrun'.*wandb.init\(name='myrun'\)"),
        ({"run": 3}, TypeError, r"`run` must be a W&B run"),
        ({"name": 3}, TypeError, r"`name` must be a string or None, got int 3"),
        ({"on_escalation": 3}, TypeError, r"`on_escalation` must be one of 'auto', 'warn', 'prune', 'raise'; got int 3"),
        ({"sweep_goal": None}, TypeError, r"`sweep_goal` must be one of 'minimize', 'maximize'; got NoneType"),
        ({"model": "net"}, TypeError, r"`model` must be a torch.nn.Module"),
    ],
)
def test_bad_options_are_named(tiny, options, error, match) -> None:
    model, _ = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(error, match=match):
        wandb_gradema.watch(opt, **options)
    assert not opt._optimizer_step_pre_hooks  # nothing was hooked


def test_watch_rejects_what_is_not_an_optimizer_and_double_watching(tiny) -> None:
    model, _ = tiny
    with pytest.raises(TypeError, match="expects a torch.optim.Optimizer, got Sequential"):
        wandb_gradema.watch(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    with pytest.raises(ValueError, match="already watched"):
        wandb_gradema.watch(opt)
    monitor.remove()
    wandb_gradema.watch(opt).remove()


def test_options_come_from_the_run_config_and_explicit_arguments_win(tiny, wandb_offline) -> None:
    model, _ = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    wandb_offline.init(config={"gradema": {"log_every": 7, "patience": 5, "z_threshold": 3.0}, "lr": 0.01})
    monitor = wandb_gradema.watch(opt, patience=2)
    assert (monitor.log_every, monitor.policy.patience, monitor.detector.z_threshold) == (7, 2, 3.0)
    monitor.remove()


@pytest.mark.parametrize(
    ("section", "error", "match"),
    [
        ({"patience": 0}, ValueError, r"`patience` must be an int >= 1, got 0 \(set in wandb.config\['gradema'\]\)"),
        ({"patiense": 3}, TypeError, r"wandb.config\['gradema'\] got unknown option\(s\) `patiense`"),
        ("fast", TypeError, r"wandb.config\['gradema'\] must be a mapping"),
    ],
)
def test_bad_options_in_the_run_config_are_named(tiny, wandb_offline, section, error, match) -> None:
    model, _ = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    wandb_offline.init(config={"gradema": section})
    with pytest.raises(error, match=match):
        wandb_gradema.watch(opt)


def test_pruning_outside_a_sweep_fails_the_run_and_unwinds_the_loop(tiny, wandb_offline, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, on_escalation="prune")
    cleaned = []
    stop = decided_at(4, sync_every)  # found at step 4, pruned by the step() that decides
    with pytest.raises(wandb_gradema.RunPruned, match=f"Run pruned at step {stop}: Non-finite .* at step 4") as pruned:
        try:
            train_loop(model, opt, batch, 10, monitor=monitor, nan_at={4})
        except Exception:  # noqa: BLE001 - a training script's broad handler must not swallow the prune
            pytest.fail("RunPruned was caught as an Exception")
        finally:
            cleaned.append(True)
    assert cleaned and pruned.value.step == stop and pruned.value.code == 0
    logged = wandb_offline.read(run)
    assert (logged.state, logged.exit_code) == ("failed", 1)
    assert logged.summary["gradema/pruned"] is True and logged.summary["gradema/pruned_step"] == stop
    assert PRUNED_TAG in logged.tags


def test_step_with_a_closure_is_observed_after_the_closure_computes_gradients(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4)
    monitor = wandb_gradema.watch(opt)
    x, y = batch(0)
    seen = []

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        seen.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        return loss

    opt.step(closure)
    assert len(seen) > 1 and monitor.step == 1  # LBFGS re-evaluates; one observation
    obs = monitor.last[0]
    assert obs.grad_norm == pytest.approx(seen[0], rel=1e-6)  # this step's gradients, not stale ones
    assert obs.loss is not None  # the closure's loss is picked up when none was observed


def test_fused_optimizer_under_gradscaler_sees_true_scale_and_counts_overflow_as_skipped(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    monitor = wandb_gradema.watch(opt, scaler=scaler, on_escalation="raise")
    x, y = batch(0)
    for i in range(3):
        scaler.scale(torch.nn.functional.mse_loss(model(x), y)).backward()
        true_norm = torch.nn.utils.get_total_norm([p.grad / scaler.get_scale() for p in model.parameters()]).item()
        if i == 1:
            next(model.parameters()).grad.fill_(float("inf"))  # overflow: the fused step is a no-op
        scaler.step(opt)  # never unscaled by hand: the fused kernel unscales
        scaler.update()
        opt.zero_grad()
        if i != 1:
            assert monitor.last[0].grad_norm == pytest.approx(true_norm, rel=1e-5)
    assert monitor.skipped_steps == 1 and not monitor.escalated


def test_max_norm_still_clips_after_an_explicit_measure(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = wandb_gradema.watch(opt, max_norm=1e-3)
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    pre = monitor.measure().item()  # e.g. a framework measuring before its own hooks
    opt.step()
    assert monitor.last[0].grad_norm == pytest.approx(pre)
    post = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert post == pytest.approx(1e-3, rel=1e-3)


def test_remove_leaves_another_wrapper_of_the_scaler_in_place(tiny) -> None:
    model, _ = tiny
    scaler = torch.amp.GradScaler("cpu")
    monitor = wandb_gradema.watch(torch.optim.SGD(model.parameters(), lr=0.1), scaler=scaler)
    ours = scaler.step

    def theirs(*args, **kwargs):  # someone wraps on top of the monitor's wrapper
        return ours(*args, **kwargs)

    scaler.step = theirs
    monitor.remove()
    assert scaler.step is theirs  # not torn out from under them


@pytest.mark.parametrize(
    ("log_seconds", "step_seconds", "interval"),
    [
        (0.0006, 0.0005, 100),  # a tiny model: logging every step would double the step
        (0.0006, 0.010, 6),
        (0.0006, 0.5, 1),  # a big model: every step
        (0.010, 0.0001, 100),  # never sparser than MAX_LOG_INTERVAL
        (0.0006, None, 10),  # no step time yet
    ],
)
def test_adaptive_log_interval_table(log_seconds, step_seconds, interval) -> None:
    from wandb_gradema.cadence import log_interval

    assert log_interval(log_seconds, step_seconds) == interval


def test_default_logging_thins_rows_but_keeps_every_escalation_and_no_long_gap(tiny, wandb_offline) -> None:
    from wandb_gradema.cadence import MAX_LOG_INTERVAL

    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, on_escalation=lambda e: None, telemetry_steps=0)  # log_every=None
    train_loop(model, opt, batch, 400, monitor=monitor, nan_at={250})
    monitor.remove()
    run.finish()
    steps = [r["gradema/step"] for r in wandb_offline.read(run).history if "gradema/step" in r]
    assert steps[0] == 0 and 250 in steps and steps[-1] == 399  # remove() logs the last step
    assert max(b - a for a, b in zip(steps, steps[1:])) <= MAX_LOG_INTERVAL


@pytest.mark.parametrize("order", ["load_then_watch", "watch_then_load"])
def test_resuming_from_a_checkpoint_continues_drift_tracking_in_either_order(tiny, sync_every, tmp_path, order) -> None:
    """The usual resume order (load the optimizer, then watch it) must not restart drift tracking."""
    model, batch = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, on_escalation="warn")
    train_loop(model, opt, batch, 40, monitor=monitor)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
    before = monitor.state_dict()
    monitor.remove()

    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model2, _ = tiny
    model2.load_state_dict(ck["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*checkpoint", GrademaWarning)  # resuming says nothing: it just works
        if order == "load_then_watch":
            opt2.load_state_dict(ck["optimizer"])
            resumed = wandb_gradema.watch(opt2, on_escalation="warn")
        else:
            resumed = wandb_gradema.watch(opt2, on_escalation="warn")
            opt2.load_state_dict(ck["optimizer"])
    assert resumed.step == 40
    assert nan_safe(resumed.state_dict()) == nan_safe(before)
    train_loop(model2, opt2, batch, 5, start=40, monitor=resumed)
    assert resumed.step == 45
    resumed.remove()


def test_watch_after_loading_a_checkpoint_without_monitor_state_says_so(tiny, tmp_path) -> None:
    model, batch = tiny
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    train_loop(model, opt, batch, 5)  # an unwatched run
    ck = {"optimizer": opt.state_dict()}
    opt2 = torch.optim.AdamW(model.parameters(), lr=0.01)
    opt2.load_state_dict(ck["optimizer"])
    with pytest.warns(GrademaWarning, match=r"loaded from a checkpoint without the monitor's state.*starts at step 0"):
        monitor = wandb_gradema.watch(opt2)
    assert monitor.step == 0
    monitor.remove()
    # An optimizer that merely took steps unwatched is watched quietly; so is a re-watch.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*checkpoint", GrademaWarning)
        wandb_gradema.watch(opt).remove()
        wandb_gradema.watch(opt2).remove()


def test_monitor_load_state_dict_accepts_the_optimizers_state_dict(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    train_loop(model, opt, batch, 7, monitor=monitor)
    saved = opt.state_dict()
    monitor.remove()
    fresh = wandb_gradema.watch(torch.optim.SGD(model.parameters(), lr=0.01), save_with_optimizer=False)
    fresh.load_state_dict(saved)
    assert fresh.step == 7
    fresh.remove()
