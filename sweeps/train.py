"""Train a small MLP on scikit-learn's digits with SGD, watched by wandb_gradema.

The program every config in ``sweeps/`` runs (``program: sweeps/train.py``). It is a real task
on which the learning rate decides everything: with momentum 0.9, LRs up to ~0.3 train to
~96 % validation accuracy in a few hundred steps, ~0.5-1 blows the loss up after a few dozen
steps, and >= 2 turns it into NaN within a handful. Each run takes seconds on one CPU thread.

It is an ordinary W&B training script: ``wandb.init(config=...)`` with its command-line
defaults, one ``wandb_gradema.watch(opt)`` line, a plain loop. Under ``wandb agent`` (or
``wandb-gradema sweep``) the sweep's parameters override the defaults, and inside the sweep a
diverging run is pruned from inside ``opt.step()``: marked *failed* with the reason, while the
process exits 0. Run it alone with ``python sweeps/train.py --lr 4``: outside a sweep the
monitor only warns.

Logged: ``train/loss`` every step; ``val_loss`` and ``val_acc`` at step 0 (the untrained
model) and every ``--eval_every`` steps. ``val_loss`` is the sweep metric.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The defaults, overridable by flags; unknown flags (``--gradema=...``) are ignored."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    p.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (the budget)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128, help="hidden units")
    p.add_argument("--eval_every", type=int, default=25, help="steps between validation passes")
    p.add_argument("--seed", type=int, default=0)
    # Sweep agents pass every parameter as a flag, nested ``gradema`` options included: the
    # program reads its settings from wandb.config, so the flags it does not know are ignored.
    args, _unknown = p.parse_known_args(argv)
    return args


def load_digits(seed: int) -> tuple[Any, Any, Any, Any]:
    """Standardised 8x8 digit images: (x_train, y_train, x_val, y_val), a fixed 1400/397 split.

    Reads the copy of UCI digits that ships inside scikit-learn (what
    ``sklearn.datasets.load_digits`` returns) without importing scikit-learn and SciPy, which
    would add seconds to every run.
    """
    import importlib.util
    from pathlib import Path

    import numpy as np
    import torch

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("sweeps/train.py needs scikit-learn for its data: pip install scikit-learn")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(csv, delimiter=",", dtype=np.float32)
    x = torch.from_numpy(data[:, :-1])
    y = torch.from_numpy(data[:, -1].astype(np.int64))
    x = (x - x.mean(0)) / (x.std(0) + 1e-3)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = perm[:1400], perm[1400:]
    return x[train], y[train], x[val], y[val]


def main(argv: list[str] | None = None) -> None:
    """One training run: init W&B, watch the optimizer, train, finish."""
    import torch
    import wandb

    import wandb_gradema

    torch.set_num_threads(1)  # a few hundred tiny steps: threads only add contention
    run = wandb.init(config=vars(parse_args(argv)))
    cfg = run.config
    torch.manual_seed(cfg.seed)
    x_train, y_train, x_val, y_val = load_digits(cfg.seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, cfg.hidden), torch.nn.ReLU(), torch.nn.Linear(cfg.hidden, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batches = torch.Generator().manual_seed(cfg.seed + 1)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            logits = model(x_val)
            loss = torch.nn.functional.cross_entropy(logits, y_val).item()
            acc = (logits.argmax(1) == y_val).float().mean().item()
        return {"val_loss": loss, "val_acc": acc}

    monitor = wandb_gradema.watch(opt, model=model)
    try:
        for step in range(cfg.steps):
            row: dict[str, float] = evaluate() if step % cfg.eval_every == 0 else {}
            idx = torch.randint(0, len(x_train), (cfg.batch_size,), generator=batches)
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            monitor.observe_loss(loss)
            opt.step()  # a pruned run stops here: RunPruned unwinds the loop
            run.log({**row, "train/loss": loss.item()})
        final = evaluate()
        run.log(final)
        if not math.isfinite(final["val_loss"]):
            print(f"training diverged: final val_loss {final['val_loss']}")
    finally:
        monitor.remove()  # runs on a prune too
    run.finish()


if __name__ == "__main__":
    main()
