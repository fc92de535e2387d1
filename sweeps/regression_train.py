"""Train an MLP regression with Adam, watched by wandb_gradema: the program of ``regression.yaml``.

Issue 9's sweep: a 16-64-64-1 ReLU MLP fits a smooth non-linear target of 16 Gaussian inputs
(unit variance, so predicting the mean scores ~1.0) with MSE and Adam. Batches of 4-32 make
the training loss very noisy, and Adam's first steps at high LRs make the gradient norm jump a
hundredfold: the runs a noise-blind detector used to prune. LRs up to ~3e-2 learn (the best
reach a validation loss well under 0.5); ~0.1 and above mostly end dead at chance level.

Like ``train.py``: an ordinary W&B script, ``wandb.init(config=...)`` with the command-line
defaults, one ``wandb_gradema.watch(opt)`` line, ``observe_loss``, a plain loop. Run it alone
with ``python sweeps/regression_train.py --lr 0.003``; outside a sweep the monitor only warns.

Logged: ``train/loss`` every step; ``val_loss`` at step 0 (the untrained model), every
``--eval_every`` steps and at the end. ``val_loss`` is the sweep metric.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

INPUTS = 16
TRAIN, VAL = 4000, 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The defaults, overridable by flags; unknown flags (``--gradema=...``) are ignored."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=400, help="optimizer steps (the budget)")
    p.add_argument("--hidden", type=int, default=64, help="units in each of the two hidden layers")
    p.add_argument("--eval_every", type=int, default=25, help="steps between validation passes")
    p.add_argument("--seed", type=int, default=0)
    args, _unknown = p.parse_known_args(argv)
    return args


def make_data(seed: int = 12345) -> tuple[Any, Any, Any, Any]:
    """A fixed regression task: ``y = tanh(2 x W) v`` plus 10% noise, standardised (variance 1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(TRAIN + VAL, INPUTS, generator=gen)
    w = torch.randn(INPUTS, 8, generator=gen) / math.sqrt(INPUTS)
    v = torch.randn(8, 1, generator=gen)
    y = torch.tanh(2 * x @ w) @ v
    y = y + 0.1 * y.std() * torch.randn(y.shape, generator=gen)
    y = (y - y.mean()) / y.std()
    return x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:]


def main(argv: list[str] | None = None) -> None:
    """One training run: init W&B, watch the optimizer, train, finish."""
    import torch
    import wandb

    import wandb_gradema

    torch.set_num_threads(1)
    run = wandb.init(config=vars(parse_args(argv)))
    cfg = run.config
    torch.manual_seed(cfg.seed)
    x_train, y_train, x_val, y_val = make_data()
    model = torch.nn.Sequential(
        torch.nn.Linear(INPUTS, cfg.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(cfg.hidden, cfg.hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(cfg.hidden, 1),
    )
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = torch.Generator().manual_seed(cfg.seed + 1)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {"val_loss": torch.nn.functional.mse_loss(model(x_val), y_val).item()}

    monitor = wandb_gradema.watch(opt, model=model)
    try:
        for step in range(cfg.steps):
            row: dict[str, float] = evaluate() if step % cfg.eval_every == 0 else {}
            idx = torch.randint(0, len(x_train), (cfg.batch_size,), generator=batches)
            loss = torch.nn.functional.mse_loss(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            monitor.observe_loss(loss)
            opt.step()  # a pruned run stops here: RunPruned unwinds the loop
            run.log({**row, "train/loss": loss.item()})
        run.log(evaluate())
    finally:
        monitor.remove()  # runs on a prune too
    run.finish()


if __name__ == "__main__":
    main()
