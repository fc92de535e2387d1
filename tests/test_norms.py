"""norms: foreach-grouped gradient norms equal torch's, and the health score's definition."""

from __future__ import annotations

import math

import pytest
import torch

from wandb_gradema import health_score, total_grad_norm
from wandb_gradema.norms import clip_grads_, host_row, measure, per_tensor_norms


def _params_with_grads(dtypes: list[torch.dtype], seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, dt in enumerate(dtypes):
        p = torch.nn.Parameter(torch.zeros(3 + i, 4, dtype=dt))
        p.grad = torch.randn(3 + i, 4, generator=g).to(dt)
        params.append(p)
    return params


@pytest.mark.parametrize(
    "dtypes",
    [
        [torch.float32] * 4,
        [torch.float32, torch.float16, torch.bfloat16, torch.float64],
        [torch.bfloat16] * 3,
    ],
    ids=["fp32", "mixed", "bf16"],
)
def test_total_grad_norm_matches_torch(dtypes: list[torch.dtype]) -> None:
    params = _params_with_grads(dtypes)
    ours = total_grad_norm([p.grad for p in params])
    ref = torch.nn.utils.get_total_norm([p.grad.float() for p in params])
    assert ours.dtype == torch.float32 and ours.dim() == 0
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_measure_skips_params_without_grad_and_counts_health() -> None:
    params = _params_with_grads([torch.float32] * 3)
    params.append(torch.nn.Parameter(torch.zeros(2)))  # no grad: left out
    params[1].grad.zero_()  # a dead layer: present but vanished
    stats = measure(params)
    assert stats.row is None  # on a device path the row is derived later, or on demand
    norm, largest, n_active, n_finite = stats.device_row().tolist()
    assert stats.index == [0, 1, 2]
    assert (n_active, n_finite) == (2, 3)
    expected = [params[i].grad.norm().item() for i in range(3)]
    assert norm == pytest.approx(math.sqrt(sum(e * e for e in expected)), rel=1e-6)
    assert largest == pytest.approx(max(expected), rel=1e-6)
    # the host derives the same row from the read-back per-tensor norms
    assert list(host_row(stats.norms.tolist())) == pytest.approx([norm, largest, n_active, n_finite], rel=1e-6)
    assert list(measure(params, host=True).row) == pytest.approx([norm, largest, n_active, n_finite], rel=1e-6)


def test_measure_with_nan_gradient_reports_it_without_raising() -> None:
    params = _params_with_grads([torch.float32] * 3)
    params[2].grad[0, 0] = float("nan")
    stats = measure(params)
    for norm, _, n_active, n_finite in (stats.device_row().tolist(), host_row(stats.norms.tolist())):
        assert math.isnan(norm)
        assert (n_active, n_finite) == (2, 2)


def test_fp16_gradients_beyond_fp16_range_do_not_overflow_the_norm() -> None:
    p = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float16))
    p.grad = torch.full((1000,), 60000.0, dtype=torch.float16)  # norm 1.9e6 > fp16 max
    assert total_grad_norm([p.grad]).item() == pytest.approx(60000.0 * math.sqrt(1000), rel=1e-3)


def test_sparse_gradients_are_measured() -> None:
    emb = torch.nn.Embedding(10, 4, sparse=True)
    emb(torch.tensor([1, 2, 2])).sum().backward()
    assert emb.weight.grad.is_sparse
    dense = emb.weight.grad.to_dense()
    assert per_tensor_norms([emb.weight.grad]).item() == pytest.approx(dense.norm().item(), rel=1e-6)


def test_clip_grads_matches_torch_clip() -> None:
    ours = _params_with_grads([torch.float32] * 3, seed=1)
    ref = _params_with_grads([torch.float32] * 3, seed=1)
    stats = measure(ours)
    clip_grads_(stats.grads, stats.total, max_norm=0.5)
    torch.nn.utils.clip_grad_norm_(ref, max_norm=0.5)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    ("n_tensors", "n_active", "norm", "largest", "health", "active", "conc"),
    [
        (4, 4, 2.0, 1.0, 1.0, 1.0, 0.25),  # perfectly even over 4 tensors
        (4, 2, 2.0, 1.0, 0.5, 0.5, 0.25),  # half the tensors dead
        (4, 4, 2.0, 2.0, 0.0, 1.0, 1.0),  # one tensor holds all the norm
        (1, 1, 3.0, 3.0, 1.0, 1.0, 1.0),  # one tensor only: evenly spread by convention
        (4, 3, math.nan, math.nan, 0.0, 0.75, math.nan),  # non-finite: 0
        (0, 0, 0.0, 0.0, 0.0, 0.0, math.nan),  # no gradient at all: 0
    ],
)
def test_health_score_table(n_tensors, n_active, norm, largest, health, active, conc) -> None:
    h, a, c = health_score(n_tensors, n_active, norm, largest)
    assert h == pytest.approx(health)
    assert a == pytest.approx(active)
    assert (math.isnan(c) and math.isnan(conc)) or c == pytest.approx(conc)
