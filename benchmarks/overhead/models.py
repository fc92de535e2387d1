"""The benchmark's models: small to large, few to many parameter tensors, learnable tasks.

Each task is learnable with noise left in the targets, so the loss falls quickly (the
detector's ``no_progress`` rule stays quiet) and then plateaus with healthy gradients (no
vanishing norm): a benchmark of steady-state overhead must not trigger escalations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DEFAULT_MODELS", "MODELS", "ModelSpec", "TinyTransformer", "mlp"]

Batch = tuple[Tensor, Tensor]

#: Batches pre-generated per model and cycled through, so data loading is not timed.
N_BATCHES = 32


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: how to build it, its data, its loss, and its share of the time.

    Attributes:
        key: the name ``--models`` selects.
        description: architecture, in a few words.
        build: a fresh, seeded model.
        batches: ``N_BATCHES`` (input, target) pairs from a generator.
        loss: the training loss of a model on one batch.
        batch: the batch size, in words.
        weight: share of the time budget (larger models need longer per repetition).
    """

    key: str
    description: str
    build: Callable[[], nn.Module]
    batches: Callable[[torch.Generator], list[Batch]]
    loss: Callable[[nn.Module, Tensor, Tensor], Tensor]
    batch: str
    weight: float


def mlp(dims: list[int]) -> nn.Sequential:
    """A GELU MLP through ``dims`` (no activation after the last layer)."""
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*layers[:-1])


def _regression_batches(d_in: int, d_out: int, size: int) -> Callable[[torch.Generator], list[Batch]]:
    """Targets from a fixed random teacher, plus 30% noise: learnable, never learned to zero."""

    def make(gen: torch.Generator) -> list[Batch]:
        a = torch.randn(d_in, 64, generator=gen) / math.sqrt(d_in)
        b = torch.randn(64, d_out, generator=gen) / 8.0
        out = []
        for _ in range(N_BATCHES):
            x = torch.randn(size, d_in, generator=gen)
            y = torch.tanh(x @ a) @ b
            out.append((x, y + 0.3 * y.std() * torch.randn(y.shape, generator=gen)))
        return out

    return make


def _mse(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(model(x), y)


class _Block(nn.Module):
    """Pre-norm transformer block with separate q/k/v/o projections (16 parameter tensors)."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (
            p(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """A small-width, many-layer causal transformer: hundreds of small parameter tensors."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        self.blocks = nn.ModuleList(_Block(d, heads, 4 * d) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


_VOCAB, _SEQ = 256, 64


def _token_batches(size: int) -> Callable[[torch.Generator], list[Batch]]:
    """Next token = a fixed permutation of the current one, with 10% of the labels random."""

    def make(gen: torch.Generator) -> list[Batch]:
        perm = torch.randperm(_VOCAB, generator=gen)
        out = []
        for _ in range(N_BATCHES):
            x = torch.randint(_VOCAB, (size, _SEQ), generator=gen)
            y = perm[x]
            noisy = torch.rand(x.shape, generator=gen) < 0.1
            out.append((x, torch.where(noisy, torch.randint(_VOCAB, x.shape, generator=gen), y)))
        return out

    return make


def _cross_entropy(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x).reshape(-1, _VOCAB), y.reshape(-1))


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            "mlp-100k",
            "MLP 64-256-256-64",
            lambda: mlp([64, 256, 256, 64]),
            _regression_batches(64, 64, 128),
            _mse,
            "128",
            1.0,
        ),
        ModelSpec(
            "mlp-5m",
            "MLP 512-1792-1792-512",
            lambda: mlp([512, 1792, 1792, 512]),
            _regression_batches(512, 512, 64),
            _mse,
            "64",
            1.2,
        ),
        ModelSpec(
            "mlp-10m",
            "MLP 1024-2560-2560-1024",
            lambda: mlp([1024, 2560, 2560, 1024]),
            _regression_batches(1024, 1024, 32),
            _mse,
            "32",
            1.2,
        ),
        ModelSpec(
            "transformer-5m",
            f"transformer, 16 layers, width 160, 4 heads, vocab {_VOCAB}",
            lambda: TinyTransformer(_VOCAB, 160, 16, 4, _SEQ),
            _token_batches(4),
            _cross_entropy,
            f"4 x {_SEQ} tokens",
            1.5,
        ),
        ModelSpec(
            "mlp-50m",
            "MLP 2048-4096-4096-4096-2048",
            lambda: mlp([2048, 4096, 4096, 4096, 2048]),
            _regression_batches(2048, 2048, 8),
            _mse,
            "8",
            2.0,
        ),
    )
}

#: The models run by default (the issue's four sizes); others are picked with ``--models``.
DEFAULT_MODELS = ("mlp-100k", "mlp-5m", "transformer-5m", "mlp-50m")
