"""The decision schedule and the deferred read-back path, on CPU.

On accelerators the monitor queues device values and decides every ``sync_every`` steps; on CPU
``sync_every > 1`` runs the same deferred path. Decisions depend on the step count alone (never
on W&B, wall-clock time or rank); reading back elsewhere (``state_dict()``, ``last``,
``remove()``) judges but never acts. Each test runs both paths where they differ.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from helpers import nan_safe, train_loop

import wandb_gradema
from wandb_gradema import EscalationError, GrademaWarning
from wandb_gradema import readback as readback_module

PATHS = pytest.mark.parametrize("sync_every", [1, 8], ids=["host", "deferred"])


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", message="No active W&B run", category=GrademaWarning)


@pytest.mark.parametrize("with_run", [False, True], ids=["no-run", "run"])
@pytest.mark.parametrize("log_every", [None, 1], ids=["adaptive", "every-step"])
def test_decisions_come_every_sync_every_steps_whatever_is_logged(tiny, wandb_offline, monkeypatch,
                                                                  with_run: bool, log_every: int | None) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    if with_run:
        wandb_offline.init()
    reads: list[int] = []
    real = readback_module.read_back
    monkeypatch.setattr("wandb_gradema.decisions.read_back", lambda q: reads.append(len(q)) or real(q))
    acted: list[tuple[int, int]] = []
    monitor = wandb_gradema.watch(opt, sync_every=8, log_every=log_every,
                                  on_escalation=lambda e: acted.append((e.step, monitor.step)))
    train_loop(model, opt, batch, 20, monitor=monitor, nan_at={3})
    assert reads == [8, 8], "one read-back per 8 steps, with or without a run or rows to log"
    assert acted == [(3, 8)]  # found at step 3, acted on at the decision step (the 8th)
    monitor.remove()


@PATHS
def test_saving_reading_and_removing_never_act_and_the_decision_still_comes(tiny, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = wandb_gradema.watch(opt, sync_every=sync_every, on_escalation="raise")
    train_loop(model, opt, batch, 3, monitor=monitor)
    if sync_every == 1:
        with pytest.raises(EscalationError, match="at step 3"):
            train_loop(model, opt, batch, 1, start=3, monitor=monitor, nan_at={3})
        opt.zero_grad()
    else:
        train_loop(model, opt, batch, 1, start=3, monitor=monitor, nan_at={3})  # queued, not decided
        saved = opt.state_dict()  # judged now, not acted on: the checkpoint is not lost
        assert monitor.last[0].step == 3 and not monitor.events
        assert [e["step"] for e in saved["gradema"]["undecided_events"]] == [3]
        train_loop(model, opt, batch, 3, start=4, monitor=monitor)
        with pytest.raises(EscalationError, match="at step 3"):
            train_loop(model, opt, batch, 1, start=7, monitor=monitor)  # the 8th step decides
        opt.zero_grad()
    assert [e.step for e in monitor.events] == [3]
    monitor.remove()


def test_remove_with_a_pending_escalation_records_it_and_unhooks(tiny) -> None:
    """(On the host path every step is decided at once: nothing is pending at removal.)"""
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = wandb_gradema.watch(opt, sync_every=8, on_escalation="raise")
    train_loop(model, opt, batch, 2, monitor=monitor, nan_at={1})
    with pytest.warns(GrademaWarning, match="after the last decision step .recorded, not acted on."):
        monitor.remove()  # never raises
    assert [e.step for e in monitor.events] == [1]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_state_dict_post_hooks
    train_loop(model, opt, batch, 2, start=2)  # the optimizer steps on, unwatched


@PATHS
def test_checkpoint_in_the_middle_of_a_decision_interval_resumes_exactly(tiny, sync_every: int) -> None:
    model, batch = tiny
    init = {k: v.clone() for k, v in model.state_dict().items()}

    def run(steps: int, *, start: int = 0, state: dict[str, Any] | None = None) -> tuple[list, dict, Any]:
        model.load_state_dict(init if state is None else state["model"])
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        seen: list[int] = []
        monitor = wandb_gradema.watch(opt, sync_every=sync_every, on_escalation=lambda e: seen.append(e.step))
        if state is not None:
            opt.load_state_dict(state["optimizer"])
        train_loop(model, opt, batch, steps, start=start, monitor=monitor, nan_at={9})
        saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "optimizer": opt.state_dict()}
        final = monitor.state_dict()
        monitor.remove()
        return seen, saved, final

    full_events, _, full_state = run(24)
    first_events, saved, _ = run(11)  # 11 = 8 + 3: three steps judged but not decided
    second_events, _, resumed_state = run(13, start=11, state=saved)
    assert first_events + second_events == full_events == [9]
    assert nan_safe(resumed_state) == nan_safe(full_state)


@PATHS
def test_param_groups_added_later_are_measured_and_named(wandb_offline, sync_every: int) -> None:
    torch.manual_seed(0)
    body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    for p in body.parameters():
        p.requires_grad_(False)  # frozen at first, unfrozen later (fine-tuning)
    model = torch.nn.Sequential(body, head)
    opt = torch.optim.SGD(head.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, model=model, sync_every=sync_every, log_every=1, telemetry_steps=2,
                                  on_escalation=lambda e: None)
    norms: list[tuple[float, float]] = []
    for step in range(8):
        if step == 4:
            for p in body.parameters():
                p.requires_grad_(True)
            opt.add_param_group({"params": list(body.parameters()), "lr": 0.001})
        x = torch.randn(8, 4)
        model(x).pow(2).mean().mul(1000.0 if step >= 4 else 1.0).backward()
        if step == 6:
            body.weight.grad.fill_(float("nan"))  # an escalation: per-layer telemetry names it
        truth = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item()
        opt.step()
        opt.zero_grad()
        norms.append((monitor.last[0].grad_norm, truth))
    monitor.remove()
    run.finish()
    for tracked, truth in norms[:6]:
        assert tracked == pytest.approx(truth, rel=1e-5)
    rows = {r["gradema/step"]: r for r in wandb_offline.read(run).history if "gradema/step" in r}
    assert math.isnan(rows[6]["gradema/layers/0.weight"]) and rows[6]["gradema/layers/1.weight"] > 0


@PATHS
def test_create_graph_gradients_keep_no_graph_alive(tiny, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, sync_every=sync_every, max_norm=10.0)
    x, y = batch(0)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward(create_graph=True)  # gradient penalties, meta-learning
    assert any(p.grad.requires_grad for p in model.parameters())
    opt.step()
    for pending in monitor.intake.queue:
        for t in (pending.row, pending.layer_norms):
            assert not isinstance(t, torch.Tensor) or (t.grad_fn is None and not t.requires_grad)
    assert monitor.last[0].grad_norm > 0
    opt.zero_grad(set_to_none=True)
    monitor.remove()


@PATHS
def test_nan_gradient_with_max_norm_leaves_every_gradient_as_it_was(tiny, sync_every: int) -> None:
    """One documented behaviour on both paths: a non-finite norm does not clip (torch's clip
    would multiply every gradient, the finite ones too, by NaN)."""
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = wandb_gradema.watch(opt, sync_every=sync_every, max_norm=1e-3, on_escalation=lambda e: None)
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    model[0].bias.grad[0] = float("nan")
    before = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, g in zip(model.parameters(), before):
        torch.testing.assert_close(p.grad, g, equal_nan=True)
    assert math.isnan(monitor.last[0].grad_norm)
    monitor.remove()


@PATHS
def test_tensor_learning_rates_are_read(tiny, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(3e-3))
    monitor = wandb_gradema.watch(opt, sync_every=sync_every)
    train_loop(model, opt, batch, 2, monitor=monitor)
    assert monitor.last[0].lr == pytest.approx(3e-3)
    monitor.remove()


@PATHS
def test_internal_errors_are_counted_after_the_first_warning(tiny, wandb_offline, monkeypatch, sync_every: int) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    run = wandb_offline.init()
    monitor = wandb_gradema.watch(opt, sync_every=sync_every, log_every=1)
    broken = [True]

    def check(obs: Any) -> Any:
        if broken[0]:
            raise RuntimeError("detector bug")
        return real(obs)

    real = monitor.detector.check
    monkeypatch.setattr(monitor.detector, "check", check)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_loop(model, opt, batch, 16, monitor=monitor)
    shown = [w for w in caught if "internal error" in str(w.message)]
    messages = [str(w.message)[:300] for w in caught]
    assert len(shown) == 1 and "RuntimeError: detector bug" in str(shown[0].message), messages
    assert (monitor.internal_errors, monitor.step) == (16 if sync_every == 1 else 2, 16), messages
    broken[0] = False
    train_loop(model, opt, batch, 8, start=16, monitor=monitor)
    monitor.remove()
    run.finish()
    assert wandb_offline.read(run).summary["gradema/internal_errors"] == monitor.internal_errors


def test_a_newer_state_format_is_named_and_an_older_one_loads(tiny) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    train_loop(model, opt, batch, 3, monitor=monitor, nan_at={1})
    state = monitor.state_dict()
    with pytest.raises(ValueError, match="format_version 5, written by a newer wandb_gradema.*Upgrade"):
        monitor.load_state_dict({**state, "format_version": 5, "new_key": 1})
    v3 = {k: v for k, v in state.items() if k != "nonfinite"} | {"format_version": 3, "detector": {"older": 1}}
    resumed = wandb_gradema.watch(torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.warns(GrademaWarning, match="older format: the detector's statistics restart"):
        resumed.load_state_dict(v3)  # before the loss statistics followed early blow-ups
    assert resumed.step == 3 and [e.step for e in resumed.events] == [1]
    assert resumed.state_dict()["nonfinite"]["since"] == -1
    resumed.remove()
    v2 = {**state, "format_version": 2, "detector": {"families": [], "older": "statistics"}}
    restored = wandb_gradema.watch(torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.warns(GrademaWarning, match="older format: the detector's statistics restart"):
        restored.load_state_dict(v2)  # the first detector's checkpoints: everything else comes back
    assert restored.step == 3 and [e.step for e in restored.events] == [1]
    assert restored.state_dict()["tracker"] == state["tracker"]
    restored.remove()
    v1 = {
        "format_version": 1, "step": state["step"], "skip_streak": 0, "next_log": 7,
        "tracker": state["tracker"], "detector": {"old": "statistics"}, "policy": state["policy"],
        "aggregator": state["aggregator"],
        "events": [{k: v for k, v in e.items() if k != "confirmed"} for e in state["events"]],
    }
    fresh = wandb_gradema.watch(torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.warns(GrademaWarning, match="older format: the detector's statistics restart"):
        fresh.load_state_dict(v1)
    assert fresh.step == 3 and [e.step for e in fresh.events] == [1] and fresh.events[0].confirmed is False
    assert fresh.cadence.next_log == 7
    monitor.remove()
    fresh.remove()


def test_dcp_optimizer_state_dict_drops_the_monitor_state_with_a_warning(tiny) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    train_loop(model, opt, batch, 2, monitor=monitor)
    with pytest.warns(GrademaWarning, match="get_optimizer_state_dict keeps only 'state' and 'param_groups'"):
        state = get_optimizer_state_dict(model, opt)
    assert "gradema" not in state
    assert "gradema" in opt.state_dict()  # the plain call still carries it
    monitor.remove()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_monitor_goes_into_a_dcp_checkpoint(tiny, tmp_path) -> None:
    """The documented call for sharded checkpoints: ``monitor.stateful()`` in the DCP state dict."""
    import torch.distributed.checkpoint as dcp

    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, sync_every=4)
    train_loop(model, opt, batch, 6, monitor=monitor, nan_at={5})  # 2 steps judged, not decided
    dcp.save({"gradema": monitor.stateful()}, checkpoint_id=str(tmp_path / "ckpt"))
    fresh_opt = torch.optim.SGD(model.parameters(), lr=0.01)
    fresh = wandb_gradema.watch(fresh_opt, sync_every=4, on_escalation="raise")
    dcp.load({"gradema": fresh.stateful()}, checkpoint_id=str(tmp_path / "ckpt"))
    assert nan_safe(fresh.state_dict()) == nan_safe(monitor.state_dict())
    with pytest.raises(EscalationError, match="at step 5"):  # the pending decision comes back too
        train_loop(model, fresh_opt, batch, 2, start=6, monitor=fresh)
    with pytest.warns(GrademaWarning, match="escalated at step 5, after the last decision step"):
        monitor.remove()  # the original never reached its decision step
    fresh.remove()


def test_fsdp_flattened_parameters_count_as_sharded() -> None:
    from wandb_gradema.params import is_sharded

    flat = torch.nn.Parameter(torch.zeros(3))
    assert not is_sharded(flat)
    flat._fsdp_flattened = True  # what FSDP1 marks, FlatParameter and use_orig_params=True alike
    assert is_sharded(flat)


def test_a_compiled_function_that_steps_the_optimizer_has_no_graph_break(tiny) -> None:
    dynamo = pytest.importorskip("torch._dynamo")
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt)
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    truth = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()

    def step() -> None:
        opt.step()

    explanation = dynamo.explain(step)()
    assert explanation.graph_break_count == 0
    assert monitor.step == 1 and monitor.last[0].grad_norm == pytest.approx(truth, rel=1e-6)
    monitor.remove()
