"""Bad gradients, the whole matrix: no crash, statistics never poisoned, the right reason at the
right step, on both decision paths (and on a CUDA device where there is one).

Each case trains a small model for ``STEPS`` steps (SGD; the weights are put back after each
step, so only the batches move the gradients and a poisoned step cannot spread into the next)
and does something to the gradients at ``BAD_AT``. ``cooldown_steps=0``, so a statistic
poisoned by the bad step would show as a later escalation. "Never poisoned": the drift
tracker left the bad step out and its EMA is still a mean of the clean norms, and the
detector's statistics are non-finite nowhere a clean run's are finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

import wandb_gradema
from wandb_gradema import EscalationEvent

STEPS = 40
BAD_AT = 24
#: Both decision paths on CPU, and the accelerator's own (its default: decisions every 16 steps).
PATHS = pytest.mark.parametrize(
    ("device", "sync_every"),
    [
        ("cpu", 1),
        ("cpu", 8),
        pytest.param("cuda", None, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
    ],
    ids=["host", "deferred", "cuda"],
)
pytestmark = pytest.mark.filterwarnings("ignore:No active W&B run")


class Mixed(nn.Module):
    """fp16, bf16, fp32 and fp64 layers in one model (and so in one optimizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8, 8).to(d) for d in (torch.float16, torch.bfloat16, torch.float32))
        self.head = nn.Linear(8, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x.to(layer.weight.dtype)))
        return self.head(x.double()).float()


class ComplexNet(nn.Module):
    """A complex weight (its gradient is complex) and a real head."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8, dtype=torch.complex64) / 4)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x.to(torch.complex64) @ self.w).abs())


class SparseNet(nn.Module):
    """A sparse embedding (sparse COO gradients) and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8, sparse=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = (x.abs() * 10).long().clamp(max=49)
        return self.head(self.emb(idx).mean(dim=1))


class LoraRankZero(nn.Module):
    """An MLP whose layers carry rank-0 LoRA adapters: zero-size parameters, as many as the
    real ones (their gradients have no elements: neither dead nor alive)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 1)])
        self.lora_a = nn.ParameterList(nn.Parameter(torch.zeros(0, lin.in_features)) for lin in self.layers)
        self.lora_b = nn.ParameterList(nn.Parameter(torch.zeros(lin.out_features, 0)) for lin in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (layer, a, b) in enumerate(zip(self.layers, self.lora_a, self.lora_b)):
            x = layer(x) + x @ a.T @ b.T
            x = torch.tanh(x) if i == 0 else x
        return x


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _fill(grad: torch.Tensor, value: float) -> None:
    (grad._values() if grad.is_sparse else grad).fill_(value)


def poison(value: float, which: str) -> Callable[[nn.Module, int], None]:
    """Fill the gradient of one tensor (the first) or of all with ``value`` at ``BAD_AT``
    (the weights are put back after every step, so the poison stays in its step)."""

    def apply(model: nn.Module, step: int) -> None:
        if step == BAD_AT:
            grads = [p.grad for p in model.parameters() if p.grad is not None and p.grad.numel()]
            for g in grads[:1] if which == "one" else grads:
                _fill(g, value)

    return apply


def no_gradient_at_all(model: nn.Module, step: int) -> None:
    """At ``BAD_AT`` and the next step the script calls ``step()`` without a ``backward()`` (two
    skipped batches): no parameter has a gradient, the update is a no-op."""
    if step in (BAD_AT, BAD_AT + 1):
        model.zero_grad(set_to_none=True)


def first_layer_frozen_half_way(model: nn.Module, step: int) -> None:
    """From step 20 on the first layer is frozen: its gradient is None from then on."""
    if step >= 20:
        next(iter(model.parameters())).grad = None


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    bad: Callable[[nn.Module, int], None] | None
    reason: str | None  # "Non-finite gradient norm (nan)" etc., or None: no escalation at all


NAN, INF = math.nan, math.inf
CASES = {
    "nan-one": Case(mlp, poison(NAN, "one"), "Non-finite gradient norm (nan)"),
    "nan-all": Case(mlp, poison(NAN, "all"), "Non-finite gradient norm (nan)"),
    "+inf-one": Case(mlp, poison(INF, "one"), "Non-finite gradient norm (inf)"),
    "+inf-all": Case(mlp, poison(INF, "all"), "Non-finite gradient norm (inf)"),
    "-inf-one": Case(mlp, poison(-INF, "one"), "Non-finite gradient norm (inf)"),
    "-inf-all": Case(mlp, poison(-INF, "all"), "Non-finite gradient norm (inf)"),
    "no-gradient-at-all": Case(mlp, no_gradient_at_all, None),
    "none-half-way": Case(mlp, first_layer_frozen_half_way, None),
    "sparse": Case(SparseNet, None, None),
    "sparse-nan": Case(SparseNet, poison(NAN, "one"), "Non-finite gradient norm (nan)"),
    "mixed-dtypes": Case(Mixed, None, None),
    "mixed-dtypes-fp16-inf": Case(Mixed, poison(INF, "one"), "Non-finite gradient norm (inf)"),
    "complex": Case(ComplexNet, None, None),
    "complex-nan": Case(ComplexNet, poison(NAN, "one"), "Non-finite gradient norm (nan)"),
    "zero-size": Case(LoraRankZero, None, None),
}


@dataclass
class Outcome:
    events: list[EscalationEvent]
    state: dict[str, Any]
    last_norm: float
    reference_norm: float
    clean_norms: list[float]


def _train(case: Case, device: str, sync_every: int | None, *, clean: bool = False) -> Outcome:
    torch.manual_seed(0)
    model = case.build().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights = [p.detach().clone() for p in model.parameters()]
    events: list[EscalationEvent] = []
    monitor = wandb_gradema.watch(opt, model=model, sync_every=sync_every, cooldown_steps=0, on_escalation=events.append)
    norms: list[float] = []
    reference = math.nan
    for step in range(STEPS):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step)).to(device)
        model(x).pow(2).mean().backward()
        if case.bad is not None and not clean:
            case.bad(model, step)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        reference = math.sqrt(sum(_norm(g) ** 2 for g in grads))
        if math.isfinite(reference) and grads:
            norms.append(reference)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)
    last = monitor.last
    assert last is not None
    monitor.remove()
    return Outcome(events, monitor.state_dict(), last[0].grad_norm, reference, norms)


def _norm(grad: torch.Tensor) -> float:
    values = grad.coalesce().values() if grad.is_sparse else grad
    return torch.linalg.vector_norm(values.to(torch.complex128 if values.is_complex() else torch.float64)).item()


def _nonfinite_paths(value: Any, path: str = "") -> set[str]:
    """Where in a state a number is NaN or infinite (NaN marked as such)."""
    if isinstance(value, dict):
        return set().union(*(_nonfinite_paths(v, f"{path}/{k}") for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return set().union(*(_nonfinite_paths(v, f"{path}[{i}]") for i, v in enumerate(value)))
    if isinstance(value, float) and not math.isfinite(value):
        return {f"{path}=nan" if math.isnan(value) else path}
    return set()


@PATHS
@pytest.mark.parametrize("name", list(CASES))
def test_bad_gradients_never_crash_never_poison_and_escalate_with_the_right_reason(
    name: str, device: str, sync_every: int | None
) -> None:
    case = CASES[name]
    out = _train(case, device, sync_every)
    if case.reason is None:
        assert out.events == [], f"a false escalation: {out.events}"
    else:
        assert [(e.step, e.anomaly_types, e.confirmed) for e in out.events] == [(BAD_AT, ("nonfinite",), True)]
        assert out.events[0].reason.startswith(f"{case.reason} at step {BAD_AT}")
    # The last step's norm is torch's (half precision accumulated in fp32, complex as |z|).
    assert out.last_norm == pytest.approx(out.reference_norm, rel=1e-3)

    tracker = out.state["tracker"]
    assert tracker["count"] == len(out.clean_norms), "a step without a finite gradient entered the EMA"
    assert min(out.clean_norms) <= tracker["norm_ema"] <= max(out.clean_norms)
    assert 0.0 <= tracker["health_ema"] <= 1.0
    clean = _train(case, device, sync_every, clean=True)
    assert _nonfinite_paths(out.state["detector"]) <= _nonfinite_paths(clean.state["detector"])
    assert out.state["internal_errors"] == 0


def test_meta_device_parameters_are_rejected_by_watch_with_what_to_do() -> None:
    with torch.device("meta"):
        model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"parameter '0\.weight' is on the meta device.*to_empty"):
        wandb_gradema.watch(opt, model=model)
    assert not opt._optimizer_step_pre_hooks  # nothing was hooked
    bare = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=0.1)
    with pytest.raises(ValueError, match=r"parameter 'group0\.param0' is on the meta device"):
        wandb_gradema.watch(bare)
