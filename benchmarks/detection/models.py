"""The benchmark's model families: MLP, small CNN (8x8 digits), GRU and 2-layer transformer LMs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .spec import Spec
from .tasks import SEQ_LEN, Task

_ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _mlp(in_dim: int, width: int, depth: int, out_dim: int, act: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else width, width), _ACTS[act]()]
    layers.append(nn.Linear(width if depth else in_dim, out_dim))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """Two 3x3 conv layers and a hidden linear layer over 1x8x8 digit images."""

    def __init__(self, width: int, out_dim: int, act: str) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), _ACTS[act](),
            nn.Conv2d(16, 32, 3, padding=1), _ACTS[act](),
            nn.MaxPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.head = _mlp(32 * 4 * 4, width, 1, out_dim, act)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.reshape(-1, 1, 8, 8)))


class GRULM(nn.Module):
    """Character embedding, ``depth`` GRU layers, linear head."""

    def __init__(self, vocab: int, width: int, depth: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.rnn = nn.GRU(32, width, num_layers=depth, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(x))[0])


class TransformerLM(nn.Module):
    """Causal transformer encoder (4 heads, learned positions), pre- or post-LN."""

    def __init__(self, vocab: int, width: int, depth: int, norm_first: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(SEQ_LEN, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, nhead=4, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=norm_first
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(SEQ_LEN), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        return self.head(self.norm(self.blocks(h, mask=self.mask, is_causal=True)))


def build_model(spec: Spec, task: Task) -> nn.Module:
    """The spec's model for ``task``, with its init faults (``weight_scale``, ``bias_init``) applied."""
    kind, width, depth, act = spec["model"], spec["width"], spec["depth"], spec["act"]
    if kind == "mlp":
        model: nn.Module = _mlp(task.in_dim, width, depth, task.out_dim, act)
    elif kind == "cnn":
        model = CNN(width, task.out_dim, act)
    elif kind == "gru":
        model = GRULM(task.in_dim, width, depth)
    elif kind == "transformer":
        model = TransformerLM(task.in_dim, width, depth, spec["norm_first"])
    else:
        raise ValueError(f"unknown model {kind!r}")
    _apply_init(model, spec["weight_scale"], spec["bias_init"])
    return model


@torch.no_grad()
def _apply_init(model: nn.Module, weight_scale: float, bias_init: float | None) -> None:
    """Scale every weight matrix; set every bias except the output head's to ``bias_init``."""
    named = list(model.named_parameters())
    head_bias = [n for n, _ in named if n.endswith("bias")][-1:]
    for name, p in named:
        if p.dim() >= 2 and weight_scale != 1.0:
            p.mul_(weight_scale)
        elif name.endswith("bias") and bias_init is not None and name not in head_bias:
            p.fill_(bias_init)
