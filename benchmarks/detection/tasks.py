"""The benchmark's tasks: offline data, batch sampling, loss and chance level.

- ``digits``: sklearn's bundled 8x8 digits, 10 classes (cross-entropy);
- ``cancer``: sklearn's bundled breast-cancer set, binary (one logit, BCE);
- ``regress``: a fixed synthetic nonlinear regression, 20 inputs, unit-variance target (MSE);
- ``charlm``: next-character prediction on ``data/corpus.txt``, written once from the stdlib's
  ``pydoc_data/topics.py`` (topics in sorted order, printable ASCII only, first ~80 KB);
- ``sum16``: ``y = x.sum(1)`` over 16 Gaussian inputs, unscaled (the issue's plain loop; MSE,
  chance 16);
- ``sine16``: a smooth non-linear target of 16 Gaussian inputs plus observation noise (MSE;
  the noise floor is ~1/6 of the chance level; batches of 2-8 are very noisy);
- ``sign16``: the sign of ``sine16``'s noiseless target, 10% of the labels flipped (BCE);
- ``parity``: sparse parity of 3 of 10 +-1 bits (BCE): MLPs sit at chance for a while, then learn;
- ``teacher32``: the README's Quick start task: 32 Gaussian inputs labelled into 10 classes by a
  fixed random tanh teacher (cross-entropy).

The chance loss C is the loss of the best input-independent predictor: class-prior entropy,
target variance, unigram entropy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CORPUS = Path(__file__).parent / "data" / "corpus.txt"
SEQ_LEN = 32
REGRESS_INPUTS = 20
REGRESS_SAMPLES = 2000
SYNTH_SAMPLES = 4000
SYNTH_INPUTS = 16
PARITY_BITS = 10
PARITY_K = 3
TEACHER_INPUTS = 32


@dataclass(frozen=True)
class Task:
    """A dataset with its loss: ``x``/``y`` hold every example (``charlm``: the token stream)."""

    name: str
    x: Tensor
    y: Tensor
    in_dim: int  # features, or vocabulary size for ``charlm``
    out_dim: int
    chance_loss: float
    kind: str = "ce"  # the loss: "mse", "bce" (one logit) or "ce"

    @property
    def is_lm(self) -> bool:
        return self.name == "charlm"

    def sample(self, batch_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """A batch drawn with replacement (``charlm``: random windows of ``SEQ_LEN`` chars)."""
        if self.is_lm:
            start = torch.randint(len(self.x) - SEQ_LEN - 1, (batch_size, 1), generator=gen)
            idx = start + torch.arange(SEQ_LEN + 1)
            window = self.x[idx]
            return window[:, :-1], window[:, 1:]
        idx = torch.randint(len(self.x), (batch_size,), generator=gen)
        return self.x[idx], self.y[idx]

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """The task's mean training loss."""
        if self.kind == "mse":
            return F.mse_loss(out.squeeze(-1), y)
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(out.squeeze(-1), y)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _standardise(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


@functools.cache
def load_task(name: str, unscaled: bool = False) -> Task:
    """Build a task (cached per process); ``unscaled`` keeps raw tabular features."""
    if name in ("digits", "cancer"):
        from sklearn.datasets import load_breast_cancer, load_digits

        x, y = (load_digits if name == "digits" else load_breast_cancer)(return_X_y=True)
        x = x if unscaled else _standardise(x)
        prior = _entropy(np.bincount(y))
        out_dim = 10 if name == "digits" else 1
        yt = torch.tensor(y, dtype=torch.long if name == "digits" else torch.float32)
        kind = "ce" if name == "digits" else "bce"
        return Task(name, torch.tensor(x, dtype=torch.float32), yt, x.shape[1], out_dim, prior, kind)
    if name == "regress":
        rng = np.random.default_rng(12345)
        x = rng.standard_normal((REGRESS_SAMPLES, REGRESS_INPUTS))
        w = rng.standard_normal((REGRESS_INPUTS, 8)) / np.sqrt(REGRESS_INPUTS)
        y = np.tanh(2 * x @ w) @ rng.standard_normal(8) + 0.1 * rng.standard_normal(REGRESS_SAMPLES)
        y = (y - y.mean()) / y.std()
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        return Task(name, xt, yt, REGRESS_INPUTS, 1, float(yt.var(unbiased=False)), "mse")
    if name in ("sum16", "sine16", "sign16"):
        rng = np.random.default_rng(23456 if name == "sum16" else 34567)
        x = rng.standard_normal((SYNTH_SAMPLES, SYNTH_INPUTS))
        if name == "sum16":
            y = x.sum(axis=1)
        else:
            w = rng.standard_normal((SYNTH_INPUTS, 2)) / np.sqrt(SYNTH_INPUTS)
            clean = np.sin(1.5 * x @ w[:, 0]) + 0.5 * np.sin(2 * x @ w[:, 1])
            noise = rng.standard_normal(SYNTH_SAMPLES)
            flip = rng.random(SYNTH_SAMPLES) < 0.1
            y = clean + 0.3 * noise if name == "sine16" else ((clean > 0) ^ flip).astype(np.float64)
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        if name == "sign16":
            return Task(name, xt, yt, SYNTH_INPUTS, 1, _entropy(np.bincount(y.astype(np.int64))), "bce")
        return Task(name, xt, yt, SYNTH_INPUTS, 1, float(yt.var(unbiased=False)), "mse")
    if name == "parity":
        rng = np.random.default_rng(45678)
        x = rng.choice([-1.0, 1.0], size=(SYNTH_SAMPLES, PARITY_BITS))
        y = (x[:, :PARITY_K].prod(axis=1) > 0).astype(np.float64)
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
        return Task(name, xt, yt, PARITY_BITS, 1, _entropy(np.bincount(y.astype(np.int64))), "bce")
    if name == "teacher32":
        rng = np.random.default_rng(56789)
        x = rng.standard_normal((SYNTH_SAMPLES, TEACHER_INPUTS))
        w1 = rng.standard_normal((TEACHER_INPUTS, 64)) / np.sqrt(TEACHER_INPUTS)
        y = (np.tanh(x @ w1) @ rng.standard_normal((64, 10)) / 8.0).argmax(axis=1)
        xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        return Task(name, xt, yt, TEACHER_INPUTS, 10, _entropy(np.bincount(y, minlength=10)), "ce")
    if name == "charlm":
        text = CORPUS.read_text()
        vocab = sorted(set(text))
        ids = _encode(text, vocab)
        return Task(
            name, torch.tensor(ids), torch.tensor(ids), len(vocab), len(vocab), _entropy(np.bincount(ids))
        )
    raise ValueError(f"unknown task {name!r}")


def _encode(text: str, vocab: list[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(vocab)}
    return np.array([lookup[c] for c in text], dtype=np.int64)
