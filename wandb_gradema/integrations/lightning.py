"""PyTorch Lightning: one callback watches every optimizer of the LightningModule.

    trainer = L.Trainer(logger=WandbLogger(), callbacks=[GradientDriftCallback()])

Needs ``pip install "wandb_gradema[lightning]"``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .. import watch
from .._validate import check_state_keys
from ..errors import RunPruned
from ..monitor import GradientMonitor
from ._common import InstancePatch, PruneStop, check_options, undo_all, unwrap_optimizer
from ._imports import OptionalImport

with OptionalImport("lightning", extra="lightning") as _imports:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import WandbLogger

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["GradientDriftCallback"]

_Callback: type = pl.Callback if _imports.available else object
_FORMAT_VERSION = 1
_RESERVED = {
    "run": "the WandbLogger's run, else wandb.run",
    "model": "the LightningModule",
    "scaler": "the precision plugin's GradScaler",
    "name": "pass `names=` for several optimizers",
    "save_with_optimizer": "its state rides in the callback's checkpoint entry",
    "max_norm": "clip with Trainer(gradient_clip_val=...); the pre-clip norm is tracked",
}


class GradientDriftCallback(_Callback):
    """Tracks, judges and charts gradient drift of a LightningModule's optimizers in W&B.

    The same monitor as ``wandb_gradema.watch()``, one per optimizer in ``trainer.optimizers``,
    built at fit start with the LightningModule as ``model``, the ``WandbLogger``'s run (else
    ``wandb.run``) and the precision plugin's ``GradScaler`` (``precision="16-mixed"``: the steps
    it skips are counted, never judged). Several optimizers log under ``gradema/<name>/``.

    Where it meets Lightning:

    1. ``on_before_backward``: the loss, divided by the loss scale and multiplied back by
       ``accumulate_grad_batches`` (Lightning divides it); a step's losses are averaged.
    2. ``on_before_optimizer_step`` (after backward and the AMP unscale, before the Trainer's
       gradient clipping): ``monitor.measure()``, so the tracked norm is the pre-clip norm.
    3. ``optimizer.step``, patched on the instance while fitting, turns a prune into a stop (the
       monitor observes the step once Lightning's closure has run backward and clipping).

    Pruning works as with ``watch()`` (``on_escalation="auto"`` prunes inside a W&B sweep): the
    run is marked failed and finished at once; then the escalating step's update is skipped, the
    ``WandbLogger`` is detached (its run is over) and ``trainer.should_stop`` ends the fit after
    the batch (not before ``min_steps``/``min_epochs``). ``fit()`` returns; ``pruned`` holds the
    ``RunPruned`` and ``check_pruned()`` raises it to end the script as ``watch()`` would.

    Fused optimizers (``AdamW(fused=True)``) work with fp16 too: the monitor reads the overflow
    flag and loss scale the GradScaler hands them, so skipped steps are counted, not judged.

    Checkpoints carry the monitors' state under ``state_key``; ``fit(ckpt_path=...)`` resumes
    drift tracking exactly. Strategies that step the optimizer themselves (DeepSpeed) are not
    supported.

    Args:
        names: one W&B section name per optimizer; default ``optimizer_<i>`` when there are
            several, none (plain ``gradema/``) for one.
        **options: any ``wandb_gradema.watch()`` option (``on_escalation``, ``log_every``,
            ``sensitivity``, ``patience``...) except those set here: ``run``, ``model``,
            ``scaler``, ``name``, ``save_with_optimizer`` and ``max_norm``.

    Raises:
        ImportError: ``lightning`` is not installed.
        TypeError, ValueError: an option is unknown, reserved or invalid (as ``watch()``).
    """

    def __init__(self, *, names: Sequence[str] | None = None, **options: Any) -> None:
        _imports.check("GradientDriftCallback")
        if names is not None:
            if isinstance(names, str) or not all(isinstance(n, str) and n and "/" not in n for n in names):
                raise TypeError(
                    f"`names` must be a sequence of non-empty strings without '/', got {names!r}."
                )
            if len(set(names)) != len(names):
                raise ValueError(f"`names` must be unique, got {list(names)!r}.")
        check_options("GradientDriftCallback", options, _RESERVED)
        self._names = tuple(names) if names is not None else None
        self._options = dict(options)
        #: One monitor per optimizer, in ``trainer.optimizers`` order (kept after the fit).
        self.monitors: list[GradientMonitor] = []
        self._prune = PruneStop(self._stop)
        self._restored: list[dict[str, Any]] | None = None
        self._by_optimizer: dict[int, GradientMonitor] = {}
        self._patches: list[InstancePatch] = []
        self._losses: list[Tensor] = []
        self._scaler: Any = None
        self._trainer: pl.Trainer | None = None

    # ================================================================ fit lifecycle
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Watch every optimizer (they exist now; their checkpointed state is loaded later)."""
        if self.monitors and self._restored is None:  # a second fit() continues the first
            self._restored = [m.state_dict() for m in self.monitors]
        optimizers = [unwrap_optimizer(o) for o in trainer.optimizers]
        names = self._section_names(len(optimizers))
        run = _wandb_run(trainer)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        monitors: list[GradientMonitor] = []
        try:
            for optimizer, name in zip(optimizers, names):
                monitors.append(
                    watch(
                        optimizer,
                        run=run,
                        model=pl_module,
                        scaler=scaler,
                        name=name,
                        save_with_optimizer=False,
                        **self._monitor_options(),
                    )
                )
                self._patches.append(InstancePatch(optimizer, "step", self._prune.wrap))
            if scaler is not None and optimizers:
                # The monitor counts the steps the scaler skips; a run of them may prune.
                self._patches.append(InstancePatch(scaler, "step", self._prune.wrap))
        except BaseException:
            undo_all(self._patches)
            for monitor in monitors:
                monitor.remove()
            raise
        self.monitors = monitors
        self._prune.reset()
        self._trainer = trainer
        self._by_optimizer = {id(o): m for o, m in zip(optimizers, monitors)}
        self._scaler = scaler if scaler is not None and scaler.is_enabled() else None
        if self._restored:
            self._load(self._restored)
        self._restored = None

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        """Keep the loss of this backward, at true scale, for the coming optimizer step."""
        if not self._by_optimizer:
            return
        value = loss.detach()
        if self._scaler is not None:
            value = value / _loss_scale(self._scaler)
        if pl_module.automatic_optimization:
            value = value * trainer.accumulate_grad_batches
        self._losses.append(value)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        """Measure now, before the Trainer clips; the optimizer's step reuses the measurement."""
        monitor = self._by_optimizer.get(id(unwrap_optimizer(optimizer)))
        if monitor is None:
            return
        for loss in self._losses:
            monitor.observe_loss(loss)
        self._losses.clear()
        monitor.measure()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    # ================================================================ checkpoints
    @property
    def state_key(self) -> str:
        return self._generate_state_key(names=self._names)

    def state_dict(self) -> dict[str, Any]:
        """The monitors' state, one entry per optimizer, for the Lightning checkpoint."""
        states = [m.state_dict() for m in self.monitors] if self.monitors else list(self._restored or [])
        return {"format_version": _FORMAT_VERSION, "monitors": states}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``state_dict()``; applied when the monitors exist (at fit start)."""
        state = dict(state_dict)
        check_state_keys("GradientDriftCallback", state, ("format_version", "monitors"))
        if state["format_version"] != _FORMAT_VERSION:
            raise ValueError(
                f"GradientDriftCallback state has format_version {state['format_version']!r}; "
                f"this version reads {_FORMAT_VERSION}."
            )
        states = list(state["monitors"])
        if self._by_optimizer:
            self._load(states)
        else:
            self._restored = states

    # ================================================================ pruning
    @property
    def pruned(self) -> RunPruned | None:
        """The ``RunPruned`` that stopped the last fit, or None."""
        return self._prune.pruned

    def check_pruned(self) -> None:
        """Raise the ``RunPruned`` that stopped the fit, if any (it exits with status 0)."""
        self._prune.check_pruned()

    def _stop(self, pruned: RunPruned) -> None:
        """The run is failed and finished (the monitor warned why): stop sending to it, end the fit.

        (The monitor observes ``step(closure)`` once Lightning's closure has run backward, its
        ``on_before_optimizer_step`` hooks and the clipping; the pruned step's update is skipped.)
        """
        for monitor in self.monitors:
            monitor.sink.enabled = False
        trainer = self._trainer
        if trainer is not None:
            trainer.should_stop = True
            trainer.loggers = [lg for lg in trainer.loggers if not isinstance(lg, WandbLogger)]

    # ================================================================ helpers
    def _close(self) -> None:
        undo_all(self._patches)
        live = list(self._by_optimizer.values())
        self._by_optimizer = {}
        for monitor in live:
            monitor.remove()  # never raises an escalation
        self._losses.clear()
        self._trainer = None

    def _load(self, states: list[dict[str, Any]]) -> None:
        if len(states) != len(self.monitors):
            raise ValueError(
                f"The checkpoint holds gradema state for {len(states)} optimizer(s), but the "
                f"LightningModule has {len(self.monitors)}."
            )
        for monitor, state in zip(self.monitors, states):
            monitor.load_state_dict(state)

    def _monitor_options(self) -> dict[str, Any]:
        """The user's options, with a detector of its own per monitor (detectors hold state)."""
        options = dict(self._options)
        if options.get("detector") is not None:
            options["detector"] = copy.deepcopy(options["detector"])
        return options

    def _section_names(self, n: int) -> list[str | None]:
        if self._names is not None:
            if len(self._names) != n:
                raise ValueError(
                    f"`names` has {len(self._names)} name(s), but the LightningModule has {n} optimizer(s)."
                )
            return list(self._names)
        return [None] if n == 1 else [f"optimizer_{i}" for i in range(n)]


def _wandb_run(trainer: pl.Trainer) -> Any:
    """The run of the Trainer's WandbLogger (created now if needed), or None: follow wandb.run."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment
    return None


def _loss_scale(scaler: Any) -> Tensor | float:
    """The GradScaler's current scale, on device when possible.

    ``GradScaler._scale`` is private; ``get_scale()`` is the public fallback, but it reads the
    value back to the host (a host-device sync per backward).
    """
    scale = getattr(scaler, "_scale", None)
    return scale if isinstance(scale, Tensor) else scaler.get_scale()
