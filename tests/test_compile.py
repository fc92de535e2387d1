"""torch.compile: a compiled model trains with watch() attached, without graph breaks in the
model and with the same tracked numbers as eager (the hook runs on optimizer.step(), outside
the compiled region)."""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Callable

import pytest
import torch

import wandb_gradema
from wandb_gradema import GrademaWarning

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths

_dynamo = pytest.importorskip("torch._dynamo")

Batch = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
STEPS = 6


@pytest.fixture(autouse=True)
def _quiet() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="No active W&B run", category=GrademaWarning)
    warnings.filterwarnings("ignore", message=".*script_method` is deprecated", category=DeprecationWarning)


def _train(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], batch: Batch) -> tuple:
    """A plain loop with watch(); returns the tracked norms, losses and the final monitor state."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    norms, losses = [], []
    with wandb_gradema.watch(opt, model=model, max_norm=1.0) as monitor:
        for i in range(STEPS):
            x, y = batch(i)
            loss = torch.nn.functional.mse_loss(forward(x), y)
            monitor.observe_loss(loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
            observation = monitor.last[0]
            norms.append(observation.grad_norm)
            losses.append(observation.loss)
    return norms, losses, monitor.state_dict()


def _compiler_or_skip(backend: str) -> None:
    if backend == "inductor" and shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on CPU; none found.")


def test_compiled_model_has_no_graph_breaks(tiny) -> None:
    model, batch = tiny
    explanation = _dynamo.explain(model)(batch(0)[0])
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_tracks_the_same_numbers_as_eager(tiny, backend: str) -> None:
    _compiler_or_skip(backend)
    model, batch = tiny
    compiled_model = copy.deepcopy(model)
    _dynamo.reset()
    # fullgraph=True: any graph break in the model (forward or backward) is an error.
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)

    eager_norms, eager_losses, eager_state = _train(model, model, batch)
    norms, losses, state = _train(compiled_model, compiled, batch)

    assert eager_norms[0] > 1.0  # the monitor clips (max_norm=1) in its hook: outside the graph
    assert norms == pytest.approx(eager_norms, rel=1e-5)
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    assert state["step"] == eager_state["step"] == STEPS
    assert state["tracker"]["norm_ema"] == pytest.approx(eager_state["tracker"]["norm_ema"], rel=1e-5)
    for p, q in zip(compiled_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
