"""Adapters that wire ``wandb_gradema``'s monitor into training frameworks.

Each adapter is a small module behind an optional extra; importing this package imports none of
them, and none of the frameworks. The adapters hold no detection logic of their own: they build
the same ``GradientMonitor`` that ``wandb_gradema.watch()`` builds and feed it at the right
moments of the framework's loop.

- ``wandb_gradema.integrations.lightning``: ``GradientDriftCallback`` for PyTorch Lightning
  (``pip install "wandb_gradema[lightning]"``).
- ``wandb_gradema.integrations.huggingface``: ``watch_trainer(trainer)`` for the Hugging Face
  ``Trainer`` (``pip install "wandb_gradema[huggingface]"``).
- ``wandb_gradema.integrations.optuna``: ``watch_trial(trial, optimizer)`` and
  ``GradientDriftPruner`` for Optuna studies (``pip install "wandb_gradema[optuna]"``).

A missing framework raises ``ImportError`` naming the extra when an adapter is used, not when
its module is imported.
"""

from __future__ import annotations

__all__: list[str] = []
