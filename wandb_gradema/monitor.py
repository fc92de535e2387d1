"""GradientMonitor: the optimizer step hook and the decision schedule.

Dataflow of one step: ``intake`` measures the gradients (``norms``, on their device) and queues
the step → every ``sync_every`` steps (``decisions``) the queue is read back (``readback``) and
``judge`` runs each step through the tracker, the detector and the escalation policy → ranks
agree (``_dist``) → rows and escalations go to the ``WandbSink`` → ``actions`` warns, prunes,
raises or calls the user's handler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, SupportsIndex

import torch
from torch import Tensor

from . import _dist, norms
from ._patch import weak_method
from .actions import EscalationActions
from .cadence import LogCadence
from .checkpoint import (
    FORMAT_VERSION,
    HOOK_MARK,
    STATE_KEY,
    DCPStateful,
    OptimizerStateHooks,
    is_watched,
    loaded_state,
    remember_loads,
    upgrade,
)
from .decisions import Decisions
from .detector import AnomalyDetector, AnomalyReport, Observation
from .errors import RunPruned, warn
from .escalation import EscalationEvent, EscalationPolicy
from .guard import InternalErrors
from .intake import StepIntake
from .judge import StepJudge
from .options import OnEscalation, build_options
from .params import check_materialized
from .pruning import make_penalty
from .scaler import ScalerWatch
from .tracker import DriftUpdate, GradientEMATracker
from .wandb_sink import PREFIX, PRUNED_TAG, WandbSink
from .wrappers import not_an_optimizer

__all__ = ["GradientMonitor", "OnEscalation", "PRUNED_TAG"]

_HOOK_MARK = HOOK_MARK
remember_loads()  # opt.load_state_dict(ck) before watch(opt) resumes too (see checkpoint.py)


class GradientMonitor:
    """Watches one optimizer: every ``step()`` measures gradients before the update.

    Per step, on device: per-tensor norms (foreach kernels grouped by device and dtype), the
    total norm and the health counts, queued. Every ``sync_every`` steps (a *decision step*: a
    function of the step count alone, the same on every rank) the queue is read back once and
    each step is judged in order (drift, anomaly report, escalation policy); ranks agree with
    one all-reduce; the rows the logging cadence picked are written; escalations are recorded
    (``events``, summary, alert) and acted on: ``"warn"``, ``"prune"`` (confirmed escalations
    only: fail the W&B run, raise ``RunPruned``), ``"raise"`` (``EscalationError``) or a
    callable. ``"auto"`` prunes inside a W&B sweep and warns elsewhere.

    ``state_dict()``, ``last``, ``flush()`` and ``remove()`` may read the queue back at any
    step: they judge what they read and write its rows, but never decide or act; escalations
    they find are acted on at the next decision step (``remove()`` records them without
    acting). Saving, loading and removing never raise an escalation.

    The optimizer stays the same object: the monitor adds a step pre-hook (and, unless
    ``save_with_optimizer=False``, state-dict hooks so its state rides inside
    ``optimizer.state_dict()``); ``remove()`` takes them all off. Param groups added later
    (``add_param_group``) are measured from the next step on.

    Non-finite gradients never raise from the hook: they are counted, reported (escalating at
    once), and never folded into the EMA or the detector's statistics.

    Use ``wandb_gradema.watch(optimizer, ...)``; the options are documented there.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, run: Any = None, **options: Any) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer) or not hasattr(optimizer, "_optimizer_step_pre_hooks"):
            raise not_an_optimizer(optimizer)
        if is_watched(optimizer):
            raise ValueError(
                "This optimizer is already watched by a GradientMonitor; call its remove() before watching it again."
            )
        opts = build_options(options)
        check_materialized(optimizer, opts.model)
        penalty = make_penalty(opts.sweep_metric, opts.sweep_goal, opts.sweep_penalty)
        self.detector = opts.detector if opts.detector is not None else AnomalyDetector(sensitivity=opts.sensitivity)
        self.tracker = GradientEMATracker(decay=opts.ema_decay, eps=opts.eps)
        self.policy = EscalationPolicy(opts.patience, opts.cooldown_steps, opts.telemetry_steps)
        self.cadence = LogCadence(opts.log_every)
        self.intake = StepIntake(
            optimizer, opts.model, sync_every=opts.sync_every, sharded=opts.sharded, max_norm=opts.max_norm
        )
        watched = self.intake.watched
        self.judge = StepJudge(
            self.tracker, self.detector, self.policy, self.cadence, opts.max_skipped_steps,
            params_finite=lambda: norms.all_finite(watched.params),
        )  # fmt: skip
        self.sink = WandbSink(
            run, prefix=PREFIX if opts.name is None else f"{PREFIX}/{opts.name}",
            before_finish=weak_method(self._before_run_finish),
        )
        distributed = _dist.is_distributed()  # set up before optimizers are built: once
        self.actions = EscalationActions(
            self.sink, opts.on_escalation, alerts=opts.alerts, penalty=penalty,
            distributed=distributed, summary=weak_method(self._write_summary),
        )
        self._guarded = InternalErrors()
        self.decisions = Decisions(
            self.intake, self.judge, self.policy, self.sink, self.actions, self._guarded, distributed=distributed
        )
        self.decisions.peers = self._guarded(_sibling_peers, self.sink)  # sweep-aware judgement, if set up
        # While hooked, optimizer and monitor hold each other (the hook must keep alive a monitor
        # nobody else holds); remove() takes the hooks off, which breaks the cycle.
        self.optimizer = optimizer
        self._step = 0  # optimizer steps observed
        self._ticks = 0  # optimizer steps attempted (GradScaler-skipped ones too): the schedule
        # Run eagerly even inside a torch.compile'd function that calls opt.step(): the hook's
        # bookkeeping is Python, and dynamo would break the graph inside it.
        hook = torch.compiler.disable(self._on_step)
        setattr(hook, _HOOK_MARK, True)
        self._handles = [optimizer.register_step_pre_hook(hook)]
        self._state_hooks = (
            OptimizerStateHooks(optimizer, self.state_dict, self.load_state_dict) if opts.save_with_optimizer else None
        )
        self._scaler = ScalerWatch(opts.scaler, optimizer, self._tick_count, self._on_skipped) if opts.scaler else None
        self._resume_from_loaded(optimizer, opts.save_with_optimizer)
        self._guarded(self.sink.attach)  # see the user's logging from their first log() on

    # ================================================================ public API
    @property
    def step(self) -> int:
        """Optimizer steps observed so far (the index the next step will get)."""
        return self._step

    @property
    def sync_every(self) -> int:
        """Steps between decision steps (read-backs): 1 on CPU, 16 on accelerators by default."""
        return self.intake.sync_every

    @property
    def sharded(self) -> bool:
        """Gradients are sharded across ranks (FSDP): norms combine the ranks' shards."""
        return self.intake.sharded

    @property
    def events(self) -> list[EscalationEvent]:
        """The decided escalations, in order."""
        return self.decisions.events

    @property
    def escalated(self) -> bool:
        """True once any escalation has been decided."""
        return bool(self.events)

    @property
    def pruned(self) -> RunPruned | None:
        """The ``RunPruned`` this monitor raised, or None."""
        return self.actions.pruned

    @property
    def on_escalation(self) -> OnEscalation:
        """What an escalation does (see ``watch()``)."""
        return self.actions.on_escalation

    @property
    def alerts(self) -> bool:
        """Whether W&B alerts are sent."""
        return self.actions.alerts

    @property
    def log_every(self) -> int | None:
        """Steps between logged rows, or None for the adaptive cadence."""
        return self.cadence.log_every

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps a GradScaler skipped (inf/NaN gradients), when ``scaler`` was given."""
        return self.judge.aggregator.counters["skipped_steps"]

    @property
    def internal_errors(self) -> int:
        """Errors inside the monitor so far (the first was shown as a warning; training went on)."""
        return self._guarded.count

    @property
    def last(self) -> tuple[Observation, DriftUpdate, AnomalyReport] | None:
        """The latest step: its observation, drift indicators and anomaly report.

        Reads the queue back (a host-device sync on accelerators) without deciding or acting.
        """
        self.flush()
        return self.judge.last

    def observe_loss(self, loss: float | Tensor) -> None:
        """Record the training loss for the coming optimizer step (call before ``step()``).

        Accepts a float or a 0-d (or one-element) tensor; tensors are kept on their device and
        read back with the step's other values, so this never forces a sync by itself. Several
        calls before one step (gradient accumulation) are averaged.
        """
        self.intake.observe_loss(loss)

    def measure(self) -> Tensor:
        """Measure the current gradients now; the coming ``step()`` reuses this measurement.

        Call it where gradients are about to be changed before the step (clipping). Returns the
        total norm as a 0-d tensor (no sync).
        """
        return _norm_tensor(self.intake.measure(self.optimizer).total)

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Drop-in for ``torch.nn.utils.clip_grad_norm_`` over the optimizer's parameters.

        Measures and clips in one pass; the monitor tracks the pre-clip norm, which is also
        returned (0-d tensor, no sync). With a ``scaler`` whose gradients are still scaled,
        they are unscaled first (``scaler.unscale_``), as before any clipping under AMP.
        Non-finite norms leave the gradients as they are (see ``norms.clip_grads_``).
        """
        from ._validate import check_float

        max_norm = check_float("max_norm", max_norm, low=0.0, low_open=True)
        if self._scaler is not None:
            self._scaler.unscale(self.optimizer)
        stats = self.intake.measure(self.optimizer)
        total = _norm_tensor(stats.total)
        self.intake.clip_(stats, max_norm)
        return total

    def flush(self) -> None:
        """Read back and judge every queued step now (one sync) and write the rows the logging
        cadence picked, without deciding or acting."""
        self.decisions.read()

    def remove(self) -> None:
        """Judge what is queued, log the last rows and the summary, and take every hook off.

        Escalations found here (after the last decision step) are recorded, announced and
        warned about, never acted on. Never raises an escalation; always unhooks.
        """
        try:
            self.decisions.at_removal()
            self._guarded(self._finish_peers)
            self._guarded(self.sink.settle)  # the last row committed before the summary
            self._guarded(self._write_summary)
        finally:
            for h in self._handles:
                h.remove()
            self._handles = []
            if self._state_hooks is not None:
                self._state_hooks.remove()
            if self._scaler is not None:
                self._scaler.undo()
            self.sink.close()

    close = remove

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        """Copying or pickling a monitor is refused with what to do instead (``copy``,
        ``deepcopy`` and ``pickle`` all come here): it is bound to one optimizer's hooks and one
        W&B run, and a copy would watch nothing. (torch copies an optimizer without its hooks.)"""
        raise TypeError(
            "A GradientMonitor cannot be copied or pickled: it is bound to one optimizer's hooks and one "
            "W&B run. Save monitor.state_dict() instead (it also rides inside optimizer.state_dict()); to "
            "watch a copy of the optimizer, call wandb_gradema.watch() on the copy and load that state "
            "with load_state_dict()."
        )

    def __enter__(self) -> GradientMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume drift tracking exactly, as plain Python values.

        Reads the queue back without deciding: steps judged but not yet decided travel with it.
        """
        self.flush()
        return {
            "format_version": FORMAT_VERSION,
            "step": self._step,
            "ticks": self._ticks,
            **self.judge.state_dict(),
            **self.decisions.state_dict(),
            "internal_errors": self._guarded.count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (older formats are upgraded; newer ones named).

        An optimizer's state dict that carries the monitor's entry is accepted too.

        Steps queued since the last decision belong to the trajectory being replaced: dropped.
        """
        if isinstance(state, Mapping) and STATE_KEY in state and "format_version" not in state:
            state = state[STATE_KEY]  # monitor.load_state_dict(ck["optimizer"])
        state, restart_detector = upgrade(state)
        if restart_detector:
            warn("wandb_gradema: state from an older format: the detector's statistics restart.")
        self.judge.load_state_dict(state, detector=not restart_detector)
        self._step = int(state["step"])
        self._ticks = int(state["ticks"])
        self.decisions.load_state_dict(state)
        self._guarded.restore(int(state["internal_errors"]))
        self.intake.reset()

    def _resume_from_loaded(self, optimizer: Any, carried: bool) -> None:
        """Resume from the monitor state a checkpoint loaded before ``watch()`` carried.

        Without one, say so: a loaded optimizer with a monitor starting at step 0 is a silent
        restart of drift tracking, and the fix depends on where the state was saved.
        """
        loaded, state = loaded_state(optimizer)
        if not loaded:
            return
        if state is not None:
            try:
                self.load_state_dict(state)
            except (TypeError, ValueError, KeyError) as exc:
                warn(
                    f"wandb_gradema: the optimizer's checkpoint carries a monitor state that cannot be "
                    f"restored ({exc}); drift tracking starts at step 0."
                )
            return
        if carried:
            warn(
                "wandb_gradema: this optimizer was loaded from a checkpoint without the monitor's state "
                "(saved from an unwatched optimizer, or with save_with_optimizer=False): drift tracking "
                "starts at step 0. If you saved the state beside the optimizer, restore it with "
                "monitor.load_state_dict(...); a checkpoint saved while watched carries it inside "
                "optimizer.state_dict() and resumes by itself."
            )

    def stateful(self) -> DCPStateful:
        """This monitor as an entry of a ``torch.distributed.checkpoint`` state dict (FSDP).

        DCP's ``get_optimizer_state_dict`` keeps only ``state`` and ``param_groups``, so the
        monitor's state does not ride in a sharded optimizer checkpoint; save it beside:
        ``dcp.save({..., "gradema": monitor.stateful()})``, and the same in ``dcp.load``.
        """
        return DCPStateful(self.state_dict, self.load_state_dict)

    # ================================================================ the hook
    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        """Step pre-hook: measure before the update; decide on decision steps.

        ``step(closure)`` computes its gradients inside the closure, after pre-hooks run: then
        the closure is wrapped and the step is observed right after its first call.
        """
        closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args[0] is the optimizer
        if closure is not None:
            wrapped = self._wrap_closure(closure)
            if len(args) > 1:
                return (args[0], wrapped, *args[2:]), kwargs
            return args, {**kwargs, "closure": wrapped}
        self._observe_step()
        return None

    def _wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        calls = 0

        def observed_closure() -> Any:
            nonlocal calls
            loss = closure()
            calls += 1
            if calls == 1:  # LBFGS calls again: the step is observed once
                if not self.intake.has_loss and isinstance(loss, (Tensor, float)):
                    self._guarded(self.intake.observe_loss, loss)
                self._observe_step()
            return loss

        return observed_closure

    def _observe_step(self) -> None:
        """Queue this step's measurement; on a decision step, judge, agree, record and act."""
        self.cadence.tick()
        self.sink.tick()
        optimizer = self.optimizer
        # A fused optimizer stepped by a GradScaler sees scaled gradients and a found_inf flag
        # (torch.amp.GradScaler sets both on the optimizer for the duration of the step).
        found_inf = getattr(optimizer, "found_inf", None)
        grad_scale = getattr(optimizer, "grad_scale", None)
        intake = self.intake
        step = self._step
        self._step += 1
        if intake.lean and found_inf is None and grad_scale is None:  # the common step: one lean call
            queued = self._guarded(intake.observe_lean, step, optimizer)
            if queued is not False:  # queued (True), or failed (None): its loss goes with it
                if queued is None:
                    intake.take_loss()
                self._tick()
                return
        if not intake.sharded:  # measure and queue in one guarded call (every step: kept lean)
            out = self._guarded(intake.observe, step, optimizer, found_inf, grad_scale)
            if out is True or not intake.sharded:
                if out is not True:
                    intake.take_loss()  # the measurement failed: its loss goes with it
                self._tick()
                return
            # Sharded parameters arrived (add_param_group) while measuring: combine as every rank does.
            stats, combined = out or None, False
        else:
            stats, combined = self._guarded(intake.local_stats, optimizer) or (None, False)
        if not combined:
            intake.combine(stats)  # a collective every rank runs: outside the guard
        if stats is None:
            intake.take_loss()
        else:
            self._guarded(intake.enqueue, step, stats, optimizer, found_inf, grad_scale)
        self._tick()

    def _on_skipped(self) -> None:
        """A GradScaler skipped the update outside our hook: queue the skip, keep the schedule."""
        self.intake.skipped(self._step)
        self._tick()

    def _tick_count(self) -> int:
        return self._ticks

    def _tick(self) -> None:
        self._ticks += 1
        if self._ticks % self.intake.sync_every == 0:
            self.decisions.decide(stop_step=self._step - 1, ticks=self._ticks)

    # ================================================================ summary
    def _before_run_finish(self) -> None:
        """The script finishes the run while this monitor watches: the queued steps' rows and the
        summary go in first (escalations among them wait for the next decision step)."""
        self.decisions.read()
        self._guarded(self._finish_peers)
        self._guarded(functools.partial(self.sink.settle, final=True))  # every row before the summary
        self._guarded(self._write_summary)

    def _finish_peers(self) -> None:
        """The run ends unpruned: its sibling record says *finished*, with the sweep metric."""
        peers = self.decisions.peers
        if peers is None or self.pruned is not None:
            return
        metric = None
        penalty, run = self.actions.penalty, self.sink.run
        if penalty is not None and run is not None:
            value = run.summary.get(penalty.metric)
            metric = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        peers.finish("finished", metric)

    def _write_summary(self) -> None:
        counters = self.judge.aggregator.counters
        self.sink.write_counters(
            {
                "escalated": self.escalated,
                "steps_observed": counters["steps"],
                "nonfinite_steps": counters["nonfinite_steps"],
                "skipped_steps": counters["skipped_steps"],
                "internal_errors": self._guarded.count,
                **(self.decisions.peers.summary() if self.decisions.peers is not None else {}),
            }
        )


def _sibling_peers(sink: WandbSink) -> Any:
    """The sweep-aware judgement when the sweep set it up (``GRADEMA_SIBLINGS_DIR``), else None."""
    from .siblings.peers import auto_peers

    return auto_peers(sink)


def _norm_tensor(total: Tensor | float) -> Tensor:
    """The measured total norm as a 0-d tensor of the caller's own (no sync)."""
    return total.clone() if isinstance(total, Tensor) else torch.tensor(total)
