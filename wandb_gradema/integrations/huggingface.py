"""Hugging Face ``Trainer``: a ``TrainerCallback`` that watches the Trainer's optimizer.

    trainer = Trainer(model, args, train_dataset=ds)   # args.report_to="wandb"
    watch_trainer(trainer)
    trainer.train()

Needs ``pip install "wandb_gradema[huggingface]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor
from torch.utils.hooks import RemovableHandle

from .. import watch
from ..errors import RunPruned
from ..monitor import GradientMonitor
from ..wandb_sink import current_run
from ._common import InstancePatch, PruneStop, check_options, undo_all, unwrap_optimizer
from ._imports import OptionalImport

with OptionalImport("transformers", extra="huggingface") as _imports:
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import WandbCallback

if TYPE_CHECKING:
    from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

__all__ = ["GradientDriftCallback", "watch_trainer"]

_Callback: type = TrainerCallback if _imports.available else object
_RESERVED = {
    "run": "the WandbCallback's run, else wandb.run",
    "model": "the Trainer's model",
    "scaler": "the Accelerator's GradScaler",
    "max_norm": "set TrainingArguments(max_grad_norm=...); the pre-clip norm is tracked",
    "save_with_optimizer": "its state rides in the checkpoint's optimizer file",
}


def watch_trainer(trainer: Trainer, **options: Any) -> GradientDriftCallback:
    """Track, judge and chart the gradient drift of ``trainer``'s optimizer; returns the callback.

    Adds a ``GradientDriftCallback`` to ``trainer`` and hooks the points of the Trainer's loop
    that no callback event reaches (see the class). Call it before ``trainer.train()``.

    Args:
        trainer: a ``transformers.Trainer`` (or subclass).
        **options: any ``wandb_gradema.watch()`` option (``on_escalation``, ``log_every``,
            ``sensitivity``...) except ``run``, ``model``, ``scaler``, ``max_norm`` and
            ``save_with_optimizer``, which come from the Trainer.

    Raises:
        ImportError: ``transformers`` is not installed.
        TypeError, ValueError: ``trainer`` is not a Trainer, or an option is invalid.
    """
    callback = GradientDriftCallback(trainer, **options)
    callback._attach()
    trainer.add_callback(callback)
    return callback


class GradientDriftCallback(_Callback):
    """The same monitor as ``wandb_gradema.watch()``, wired into a Hugging Face ``Trainer``.

    Create it with ``watch_trainer(trainer)``. At ``on_train_begin`` it watches the Trainer's
    torch optimizer (inside accelerate's wrapper) with the Trainer's model, the run the
    ``WandbCallback`` logs to (``wandb.run``) and the Accelerator's ``GradScaler`` (fp16).

    Clipping: the Trainer clips between the last backward and ``on_pre_optimizer_step``, and no
    callback event lies in between. ``Trainer`` calls ``accelerator.clip_grad_norm_`` on every
    optimizer step (with ``max_norm=inf`` when ``max_grad_norm=0``), which starts with
    ``accelerator.unscale_gradients()``; that method is patched on the instance to measure right
    after it, so the tracked norm is the pre-clip norm at true scale (the one the Trainer logs as
    ``grad_norm``). Where it is not called (DeepSpeed), the step pre-hook measures.

    fp16: the Trainer's default fused AdamW steps through GradScaler overflows itself; the monitor
    reads the overflow flag and loss scale the scaler hands it, so those steps are counted as
    skipped, not judged. bf16 needs no scaler.

    Loss: ``trainer.training_step`` is patched to add up the micro-batch losses it returns (the
    Trainer already divides them for gradient accumulation); their sum is the step's loss.

    Pruning works as with ``watch()`` (``on_escalation="auto"`` prunes inside a W&B sweep): the
    run is marked failed and finished at once; the escalating step's update is skipped, the
    ``WandbCallback`` is taken off the Trainer (its run is over) and
    ``control.should_training_stop`` ends training after the step. ``train()`` returns;
    ``pruned`` holds the ``RunPruned``, ``check_pruned()`` raises it.

    State rides in the checkpoint's optimizer file (``watch()``'s ``save_with_optimizer``);
    ``train(resume_from_checkpoint=...)`` resumes drift tracking exactly.
    """

    def __init__(self, trainer: Trainer, **options: Any) -> None:
        _imports.check("GradientDriftCallback")
        if not isinstance(trainer, Trainer):
            raise TypeError(f"`trainer` must be a transformers.Trainer, got {type(trainer).__name__}.")
        check_options("watch_trainer()", options, _RESERVED)
        self._trainer = trainer
        self._options = dict(options)
        #: The monitor of the current (or last) ``train()``; None before training.
        self.monitor: GradientMonitor | None = None
        self._prune = PruneStop(self._stop)
        self._live = False
        self._restored: dict[str, Any] | None = None
        self._loss: Tensor | None = None
        self._patches: list[InstancePatch] = []  # for the Trainer's lifetime
        self._train_patches: list[InstancePatch] = []  # for one train()
        self._load_hooks: dict[int, RemovableHandle] = {}

    def remove(self) -> None:
        """Unhook everything and take the callback off the Trainer."""
        self._close()
        undo_all(self._patches)
        for handle in self._load_hooks.values():
            handle.remove()
        self._load_hooks.clear()
        if self in self._trainer.callback_handler.callbacks:
            self._trainer.remove_callback(self)

    @property
    def pruned(self) -> RunPruned | None:
        """The ``RunPruned`` that stopped the last ``train()``, or None."""
        return self._prune.pruned

    def check_pruned(self) -> None:
        """Raise the ``RunPruned`` that stopped training, if any (it exits with status 0)."""
        self._prune.check_pruned()

    # ================================================================ events
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Watch the optimizer; restore the state found in a resumed checkpoint."""
        trainer = self._trainer
        if self.monitor is not None and self._restored is None:  # a second train() continues
            self._restored = self.monitor.state_dict()
        optimizer = unwrap_optimizer(trainer.optimizer)
        self._stash_on_load(optimizer)
        scaler = getattr(trainer.accelerator, "scaler", None)
        self.monitor = watch(
            optimizer,
            run=current_run(),
            model=trainer.model,
            scaler=scaler,
            **self._options,
        )
        self._live, self._loss = True, None
        self._prune.reset()
        if self._restored is not None:
            self.monitor.load_state_dict(self._restored)
            self._restored = None
        self._train_patches += [
            InstancePatch(trainer.optimizer, "step", self._prune.wrap),
            InstancePatch(trainer.accelerator, "unscale_gradients", self._unscale_then_measure),
            InstancePatch(trainer, "training_step", self._add_loss),
        ]
        if scaler is not None:
            self._train_patches.append(InstancePatch(scaler, "step", self._prune.wrap))

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._live and self._loss is not None and self.monitor is not None:
            self.monitor.observe_loss(self._loss)
        self._loss = None

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self.pruned is not None:
            control.should_training_stop = True
        return control

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self.pruned is not None:
            control.should_training_stop = True
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._close()

    # ================================================================ patched methods
    def _attach(self) -> None:
        """Catch the monitor state in checkpoints loaded before ``on_train_begin``."""
        self._patches.append(InstancePatch(self._trainer, "create_optimizer", self._create_optimizer))
        if self._trainer.optimizer is not None:
            self._stash_on_load(unwrap_optimizer(self._trainer.optimizer))

    def _create_optimizer(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        optimizer = original(*args, **kwargs)
        self._stash_on_load(unwrap_optimizer(optimizer))
        return optimizer

    def _stash_on_load(self, optimizer: Any) -> None:
        if id(optimizer) not in self._load_hooks:
            self._load_hooks[id(optimizer)] = optimizer.register_load_state_dict_pre_hook(self._on_load)

    def _on_load(self, optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any] | None:
        """Optimizer load pre-hook: before the monitor exists, keep its state for it."""
        if self._live or "gradema" not in state_dict:
            return None  # a live monitor's own hook loads it
        state_dict = dict(state_dict)
        self._restored = state_dict.pop("gradema")
        return state_dict

    def _unscale_then_measure(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if self._live and self.monitor is not None:
            self.monitor.measure()  # at true scale, before the Trainer clips
        return out

    def _add_loss(self, original: Any, *args: Any, **kwargs: Any) -> Any:
        loss = original(*args, **kwargs)
        if isinstance(loss, Tensor) and loss.numel() == 1:
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss
        return loss

    # ================================================================ helpers
    def _stop(self, pruned: RunPruned) -> None:
        """The run is failed and finished: stop sending to it; training stops after the step."""
        if self.monitor is not None:
            self.monitor.sink.enabled = False
        trainer = self._trainer
        for callback in [c for c in trainer.callback_handler.callbacks if isinstance(c, WandbCallback)]:
            trainer.remove_callback(callback)

    def _close(self) -> None:
        undo_all(self._train_patches)
        if self._live and self.monitor is not None:
            self._live = False
            self.monitor.remove()  # never raises an escalation
        self._live = False
        self._loss = None
