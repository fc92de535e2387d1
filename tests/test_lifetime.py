"""Nothing kept alive: what a monitor holds, for how long, and what copying a watched optimizer does.

While hooked, the optimizer and its monitor hold each other by design: the hook must keep
alive a monitor nobody assigned (``wandb_gradema.watch(opt)`` on its own line). ``remove()``
breaks that: afterwards plain reference counting frees the optimizer and the model (the tests
switch the cyclic garbage collector off to show it). A training function that returns without
``remove()`` leaves a cycle that the garbage collector frees.
"""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from helpers import train_loop

import wandb_gradema

pytestmark = pytest.mark.filterwarnings("ignore:No active W&B run")
Refs = tuple["weakref.ref[Any]", ...]


@pytest.fixture
def no_cyclic_gc(tiny: Any) -> Iterator[None]:
    """Only reference counting frees objects while the test runs.

    The first optimizer of a process imports ``torch._dynamo``, which keeps the frames of that
    first call alive: one watched optimizer is built before, so that it is not the test's.
    """
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with wandb_gradema.watch(opt) as monitor:
        train_loop(model, opt, batch, 1, monitor=monitor)
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _alive(refs: Refs) -> list[str]:
    return [name for name, ref in zip(("model", "optimizer", "monitor"), refs) if ref() is not None]


def _train(tiny: Any, *, remove: bool, options: dict[str, Any]) -> Refs:
    """A training function: builds its model, optimizer and monitor, trains, returns weak refs."""
    _, batch = tiny
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu") if options.pop("scaler", False) else None
    monitor = wandb_gradema.watch(opt, model=model, scaler=scaler, log_every=1, **options)
    train_loop(model, opt, batch, 12, monitor=monitor, nan_at={5} if options.get("on_escalation") else ())
    opt.state_dict()  # the state-dict hooks ran too
    if remove:
        monitor.remove()
    return weakref.ref(model), weakref.ref(opt), weakref.ref(monitor)


OPTIONS = pytest.mark.parametrize(
    ("options", "with_run"),
    [
        ({}, False),
        ({"sync_every": 8}, False),
        ({"scaler": True}, False),
        ({"on_escalation": (lambda e: None)}, True),
    ],
    ids=["defaults", "sync_every-8", "gradscaler", "escalation-logged-to-a-run"],
)


@OPTIONS
def test_after_remove_reference_counting_frees_model_optimizer_and_monitor(
    tiny: Any, wandb_offline: Any, no_cyclic_gc: None, options: dict[str, Any], with_run: bool
) -> None:
    run = wandb_offline.init() if with_run else None
    refs = _train(tiny, remove=True, options=dict(options))
    assert _alive(refs) == [], "remove() must leave no cycle through the monitor"
    if run is not None:
        run.finish()
        assert wandb_offline.read(run).summary["gradema/escalations"] == 1  # it did log


@OPTIONS
def test_a_monitor_dropped_without_remove_is_collected_with_its_optimizer(
    tiny: Any, wandb_offline: Any, no_cyclic_gc: None, options: dict[str, Any], with_run: bool
) -> None:
    run = wandb_offline.init() if with_run else None
    refs = _train(tiny, remove=False, options=dict(options))
    assert _alive(refs) == ["optimizer", "monitor"], "while hooked, optimizer and monitor hold each other"
    gc.collect()
    assert _alive(refs) == []
    if run is not None:
        run.finish()


def test_an_unassigned_monitor_keeps_watching_until_the_optimizer_goes(tiny: Any) -> None:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    wandb_gradema.watch(opt)  # nobody keeps the monitor
    gc.collect()
    train_loop(model, opt, batch, 5)
    assert opt.state_dict()["gradema"]["step"] == 5


def _watched(tiny: Any) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    model, batch = tiny
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    monitor = wandb_gradema.watch(opt, model=model)
    train_loop(model, opt, batch, 5, monitor=monitor)
    return model, opt, monitor


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copying_a_watched_optimizer_gives_an_unwatched_copy_whose_monitor_resumes_by_state_dict(
    tiny: Any, how: str
) -> None:
    """torch copies an optimizer without any of its hooks (``Optimizer.__getstate__``): the copy
    works, unwatched; to watch it, ``watch()`` it and load the monitor's ``state_dict()``."""
    model, opt, monitor = _watched(tiny)
    pair = (model, opt)  # copied together, so that the copy steps the copied model
    model2, opt2 = copy.deepcopy(pair) if how == "deepcopy" else pickle.loads(pickle.dumps(pair))
    assert not opt2._optimizer_step_pre_hooks and "gradema" not in opt2.state_dict()
    assert opt.state_dict()["gradema"]["step"] == 5  # the original is still watched
    twin = wandb_gradema.watch(opt2, model=model2)
    twin.load_state_dict(opt.state_dict()["gradema"])
    train_loop(model, opt, tiny[1], 3, start=5, monitor=monitor)
    train_loop(model2, opt2, tiny[1], 3, start=5, monitor=twin)
    assert monitor.step == twin.step == 8 and twin.state_dict() == monitor.state_dict()
    twin.remove()
    monitor.remove()


@pytest.mark.parametrize("how", [copy.deepcopy, copy.copy, pickle.dumps], ids=["deepcopy", "copy", "pickle"])
def test_copying_the_monitor_itself_fails_saying_what_to_do(tiny: Any, wandb_offline: Any, how: Callable) -> None:
    wandb_offline.init()
    _, _, monitor = _watched(tiny)
    with pytest.raises(TypeError, match=r"cannot be copied or pickled.*monitor\.state_dict\(\).*watch\(\)"):
        how(monitor)
    monitor.remove()
