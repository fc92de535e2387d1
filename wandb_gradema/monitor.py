"""GradientMonitor: the optimizer step hook, the queue of measured steps and the decision schedule.

Dataflow of one step: ``norms`` measures the gradients (on their device) → the step is queued
→ on decision steps the queue is read back and each step goes through the ``tracker``, the
``detector`` and the ``escalation`` policy → ranks agree → rows and escalations go to the
``WandbSink`` → ``actions`` warns, prunes, raises or calls the user's handler.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import Tensor

from . import _dist, norms
from .actions import EscalationActions
from .aggregate import LogAggregator
from .cadence import LogCadence
from .checkpoint import FORMAT_VERSION, OptimizerStateHooks, upgrade
from .detector import AnomalyDetector, AnomalyReport, Observation
from .errors import EscalationError, RunPruned, warn
from .escalation import EscalationEvent, EscalationPolicy
from .options import OnEscalation, build_options
from .params import WatchedParams
from .pruning import make_penalty
from .readback import PendingStep, StepValues, read_back
from .scaler import ScalerWatch
from .tracker import DriftUpdate, GradientEMATracker
from .wandb_sink import PREFIX, PRUNED_TAG, WandbSink

__all__ = ["GradientMonitor", "OnEscalation", "PRUNED_TAG"]

#: Per-layer norms logged on a telemetry step, largest first (non-finite ones lead).
MAX_TELEMETRY_LAYERS = 128
#: Marks the monitor's step hook on an optimizer (one monitor per optimizer).
_HOOK_MARK = "_gradema_hook"
#: Exceptions that are decisions, never internal errors.
_DECISIONS = (RunPruned, EscalationError)


class GradientMonitor:
    """Watches one optimizer: every ``step()`` measures gradients before the update.

    Per step, on device: per-tensor norms with foreach kernels grouped by (device, dtype), the
    total norm and a health score (``norms.health_score``), queued. Every ``sync_every`` steps
    (a *decision step*, a function of the step count alone, the same on every rank) the queue is
    read back once and each step is judged in order: ``GradientEMATracker`` drift,
    ``AnomalyDetector`` report, ``EscalationPolicy``; ranks agree with one all-reduce; rows
    chosen by the logging cadence are written; escalations are recorded (``events``, summary,
    alert) and acted on: ``"warn"``, ``"prune"`` (confirmed escalations only: fail the W&B run,
    raise ``RunPruned``), ``"raise"`` (``EscalationError``) or a callable. ``"auto"`` prunes
    inside a W&B sweep and warns elsewhere.

    ``state_dict()``, ``last``, ``flush()`` and ``remove()`` may read the queue back at any
    step; they judge what they read but never decide or act: escalations they find are acted
    on at the next decision step (``remove()`` records them without acting). Saving, loading
    and removing never raise an escalation.

    The optimizer stays the same object: the monitor adds a step pre-hook (and, unless
    ``save_with_optimizer=False``, state-dict hooks so its state rides inside
    ``optimizer.state_dict()``). ``remove()`` takes them all off. Param groups added later
    (``add_param_group``) are measured from the next step on.

    Non-finite gradients never raise from the hook: they are counted, reported (escalating at
    once), and never folded into the EMA or the detector's statistics.

    Use ``wandb_gradema.watch(optimizer, ...)``; the options are documented there.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, run: Any = None, **options: Any) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer) or not hasattr(optimizer, "_optimizer_step_pre_hooks"):
            raise TypeError(
                f"watch() expects a torch.optim.Optimizer, got {type(optimizer).__name__}. "
                "Pass the optimizer whose step() runs the update (for Lightning, use the "
                "wandb_gradema.integrations.lightning callback)."
            )
        for hook in optimizer._optimizer_step_pre_hooks.values():
            if getattr(hook, _HOOK_MARK, False):
                raise ValueError(
                    "This optimizer is already watched by a GradientMonitor; call its remove() "
                    "before watching it again."
                )
        opts = build_options(options)
        penalty = make_penalty(opts.sweep_metric, opts.sweep_goal, opts.sweep_penalty)
        self.tracker = GradientEMATracker(decay=opts.ema_decay, eps=opts.eps)
        self.detector = opts.detector if opts.detector is not None else AnomalyDetector(sensitivity=opts.sensitivity)
        self.policy = EscalationPolicy(opts.patience, opts.cooldown_steps, opts.telemetry_steps)
        self.sink = WandbSink(run, prefix=PREFIX if opts.name is None else f"{PREFIX}/{opts.name}")
        self.cadence = LogCadence(opts.log_every)
        self.max_norm = opts.max_norm
        self.max_skipped_steps = opts.max_skipped_steps
        self.events: list[EscalationEvent] = []
        self._distributed = _dist.is_distributed()  # set up before optimizers are built: once
        self.actions = EscalationActions(
            self.sink,
            opts.on_escalation,
            alerts=opts.alerts,
            penalty=penalty,
            distributed=self._distributed,
            summary=self._write_summary,
        )
        # While hooked, optimizer and monitor hold each other (the hook must keep a monitor nobody
        # else holds alive); remove() takes the hooks off, which breaks the cycle.
        self._optimizer = optimizer
        self._watched = WatchedParams(optimizer, opts.model)
        self._sharded_option = opts.sharded
        self.sync_every = opts.sync_every if opts.sync_every is not None else (1 if self._watched.on_cpu else 16)
        self._configure()
        self._aggregator = LogAggregator()
        self._step = 0  # optimizer steps observed
        self._ticks = 0  # optimizer steps attempted (GradScaler-skipped ones too): the schedule
        self._skip_streak = 0
        self._pending_stats: norms.GradStats | None = None
        self._queue: list[PendingStep] = []
        self._undecided_events: list[EscalationEvent] = []
        self._undecided_rows: list[tuple[int, dict[str, Any]]] = []
        self._loss_sum: float | Tensor | None = None
        self._loss_count = 0
        self._last: tuple[Observation, DriftUpdate, AnomalyReport] | None = None
        self._last_logged = -1
        self._internal_errors = 0
        self._errors_written = 0
        # Run eagerly even inside a torch.compile'd function that calls opt.step(): the hook's
        # bookkeeping is Python, and dynamo would break the graph inside it.
        hook = torch.compiler.disable(self._on_step)
        setattr(hook, _HOOK_MARK, True)
        self._handles = [optimizer.register_step_pre_hook(hook)]
        self._state_hooks = (
            OptimizerStateHooks(optimizer, self.state_dict, self.load_state_dict) if opts.save_with_optimizer else None
        )
        self._scaler = ScalerWatch(opts.scaler, optimizer, self._tick_count, self._on_skipped) if opts.scaler else None
        self._guarded(self.sink.attach)  # see the user's logging from their first log() on

    # ================================================================ public API
    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The watched optimizer."""
        return self._optimizer

    @property
    def sharded(self) -> bool:
        """Gradients are sharded across ranks (FSDP): norms combine the ranks' shards."""
        return self._sharded

    @property
    def step(self) -> int:
        """Optimizer steps observed so far (the index the next step will get)."""
        return self._step

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
        return self._aggregator.counters["skipped_steps"]

    @property
    def internal_errors(self) -> int:
        """Errors inside the monitor so far (the first is shown as a warning; training went on)."""
        return self._internal_errors

    @property
    def last(self) -> tuple[Observation, DriftUpdate, AnomalyReport] | None:
        """The latest step: its observation, drift indicators and anomaly report.

        Reads the queue back (a host-device sync on accelerators) without deciding or acting.
        """
        self.flush()
        return self._last

    def observe_loss(self, loss: float | Tensor) -> None:
        """Record the training loss for the coming optimizer step (call before ``step()``).

        Accepts a float or a 0-d (or one-element) tensor; tensors are kept on their device and
        read back with the step's other values, so this never forces a sync by itself. Several
        calls before one step (gradient accumulation) are averaged.
        """
        if isinstance(loss, Tensor):
            if loss.numel() != 1:
                raise ValueError(f"`loss` must be a scalar (one element), got shape {tuple(loss.shape)}.")
            # On CPU reading the value now is free; elsewhere keep it on device until read back.
            value: float | Tensor = loss.item() if self._host else loss.detach().reshape(()).float()
        elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
            value = float(loss)
        else:
            raise TypeError(f"`loss` must be a float or a scalar tensor, got {type(loss).__name__}.")
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        self._loss_count += 1

    def measure(self) -> Tensor:
        """Measure the current gradients now; the coming ``step()`` reuses this measurement.

        Call it where gradients are about to be changed before the step (clipping). Returns the
        total norm as a 0-d tensor (no sync).
        """
        stats = self._pending_stats = self._measure()
        total = stats.total
        return total.clone() if isinstance(total, Tensor) else torch.tensor(total)

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
        total = self.measure()
        stats = self._pending_stats
        assert stats is not None
        norms.clip_grads_(stats.grads, stats.total, max_norm)
        stats.clipped = True
        return total

    def flush(self) -> None:
        """Read back and judge every queued step now (one sync), without deciding or acting."""
        self._guarded(self._judge_queue)

    def remove(self) -> None:
        """Judge what is queued, log the last rows and the summary, and take every hook off.

        Escalations found here (after the last decision step) are recorded, announced and
        warned about, never acted on. Never raises an escalation; always unhooks.
        """
        try:
            self._guarded(self._judge_queue)
            events, self._undecided_events = self._undecided_events, []
            self._guarded(self._record, events)
            for event in events:
                self._guarded(self.actions.found_at_removal, event)
            self._guarded(self._log_last)
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
            "skip_streak": self._skip_streak,
            "cadence": self.cadence.state_dict(),
            "tracker": self.tracker.state_dict(),
            "detector": self.detector.state_dict(),
            "policy": self.policy.state_dict(),
            "aggregator": self._aggregator.state_dict(),
            "events": [asdict(e) for e in self.events],
            "undecided_events": [asdict(e) for e in self._undecided_events],
            "undecided_rows": [[step, dict(row)] for step, row in self._undecided_rows],
            "internal_errors": self._internal_errors,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned (older formats are upgraded; newer ones named).

        Steps queued since the last decision belong to the trajectory being replaced: dropped.
        """
        state, restart_detector = upgrade(state)
        if restart_detector:
            warn("wandb_gradema: state from an older format: the detector's statistics restart.")
        else:
            self.detector.load_state_dict(state["detector"])
        self.tracker.load_state_dict(state["tracker"])
        self.policy.load_state_dict(state["policy"])
        self._aggregator.load_state_dict(state["aggregator"])
        self.cadence.load_state_dict(state["cadence"])
        self._step = int(state["step"])
        self._ticks = int(state["ticks"])
        self._skip_streak = int(state["skip_streak"])
        self.events = [_event(e) for e in state["events"]]
        self._undecided_events = [_event(e) for e in state["undecided_events"]]
        self._undecided_rows = [(int(step), dict(row)) for step, row in state["undecided_rows"]]
        self._internal_errors = self._errors_written = int(state["internal_errors"])
        self._queue, self._pending_stats = [], None
        self._loss_sum, self._loss_count = None, 0

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
                if self._loss_sum is None and isinstance(loss, (Tensor, float)):
                    self._guarded(self.observe_loss, loss)
                self._observe_step()
            return loss

        return observed_closure

    def _observe_step(self) -> None:
        """Queue this step's measurement; on a decision step, judge, agree, record and act."""
        self.cadence.tick()
        self.sink.tick()
        # A fused optimizer stepped by a GradScaler sees scaled gradients and a found_inf flag
        # (torch.amp.GradScaler sets both on the optimizer for the duration of the step).
        optimizer = self.optimizer
        found_inf = getattr(optimizer, "found_inf", None)
        grad_scale = getattr(optimizer, "grad_scale", None)
        stats, reduced = self._guarded(self._take_stats, optimizer) or (None, False)
        if self._sharded and not reduced:  # a collective every rank runs, whatever happened above
            row = stats.row if stats is not None else torch.full((4,), math.nan, device=self._device())
            row = _dist.reduce_sharded_row(row)
            if stats is not None:
                stats.row = row
        self._guarded(self._enqueue, stats, found_inf, grad_scale)
        self._tick()

    def _take_stats(self, optimizer: torch.optim.Optimizer) -> tuple[norms.GradStats, bool]:
        """This step's stats, and whether they are already combined across ranks."""
        if self._watched.refresh(optimizer):  # add_param_group since the last step
            self._configure()
            self._pending_stats = None
        stats, self._pending_stats = self._pending_stats, None
        if stats is not None:  # measured by measure() / clip_grad_norm_(): reduced there
            return stats, True
        return norms.measure(self._watched.params, local=self._sharded, host=self._host, uniform=self._uniform), False

    def _enqueue(self, stats: norms.GradStats | None, found_inf: Tensor | None, grad_scale: Tensor | None) -> None:
        step = self._step
        self._step += 1
        loss = self._take_loss()
        if stats is None:
            return
        if grad_scale is not None:  # measured at the loss scale: bring back to true scale
            stats = norms.unscale(stats, grad_scale)
        if self.max_norm is not None and not stats.clipped:
            norms.clip_grads_(stats.grads, stats.total, self.max_norm)
        inf: float | Tensor | None = None
        if isinstance(found_inf, Tensor):
            inf = found_inf.item() if self._host else found_inf.detach().clone()
        self._queue.append(PendingStep(step, stats.row, loss, self._lr(), stats.norms, stats.index, inf))

    def _on_skipped(self) -> None:
        """A GradScaler skipped the update outside our hook: queue the skip, keep the schedule."""
        self._pending_stats = None
        self._take_loss()
        self._queue.append(PendingStep(self._step, None))
        self._tick()

    def _tick_count(self) -> int:
        return self._ticks

    def _tick(self) -> None:
        self._ticks += 1
        if self._ticks % self.sync_every == 0:
            self._decide()

    # ================================================================ judging and deciding
    def _decide(self) -> None:
        """A decision step: judge the queue, agree across ranks (one all-reduce), record, act."""
        self._guarded(self._judge_queue)
        local, self._undecided_events = self._undecided_events, []
        events = self._agree(local) if self._distributed else local  # a failing collective raises
        self._guarded(self._record, events)
        for event in events:
            self.actions.act(event, self._step - 1)

    def _judge_queue(self) -> None:
        """Read the queue back (one sync) and judge each step; nothing is decided here."""
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        logging = self.sink.run is not None
        for values in read_back(queue):
            if values.row is None:
                event = self._skipped(values.step)
            else:
                self._skip_streak = 0
                event = self._judge(values, logging)
            if event is not None:
                self._undecided_events.append(event)

    def _judge(self, v: StepValues, logging: bool) -> EscalationEvent | None:
        row = v.row
        assert row is not None
        health, active, _ = norms.health_score(v.n_tensors, row.n_active, row.grad_norm, row.max_tensor_norm)
        obs = Observation(
            step=v.step,
            grad_norm=row.grad_norm,
            health=health,
            loss=v.loss,
            lr=v.lr,
            active_share=active,
            n_nonfinite=v.n_tensors - int(row.n_finite),
        )
        drift = self.tracker.update(obs.grad_norm, obs.health)
        report = self.detector.check(obs)
        event = self.policy.update(report)
        self._aggregator.add(obs, drift, report)
        self._last = (obs, drift, report)
        telemetry = self.policy.telemetry_active(obs.step)
        if logging and (event is not None or telemetry or self.cadence.due(obs.step)):
            extra = self._layer_metrics(v) if telemetry or event is not None else None
            metrics = self._aggregator.row(obs, drift, report, escalated=telemetry, event=event is not None, extra=extra)
            self._undecided_rows.append((obs.step, metrics))
            self.cadence.logged(obs.step)
        return event

    def _skipped(self, step: int) -> EscalationEvent | None:
        """Count one skipped step; ``max_skipped_steps`` in a row escalate (critical)."""
        self._aggregator.counters["skipped_steps"] += 1
        self._skip_streak += 1
        if self._skip_streak < self.max_skipped_steps:
            return None
        report = AnomalyReport(
            step=step,
            has_anomaly=True,
            anomaly_types=("skipped_steps",),
            details={
                "skipped_steps": f"{self._skip_streak} optimizer steps in a row skipped by the "
                "GradScaler (inf/NaN gradients at every loss scale)."
            },
            score=math.inf,
            critical=True,
        )
        self._skip_streak = 0
        return self.policy.update(report)

    def _agree(self, events: list[EscalationEvent]) -> list[EscalationEvent]:
        """All ranks escalate together, at the earliest step any rank did (and prune together).

        Ranks then share the same cooldown and telemetry windows; a rank that saw nothing
        records why it escalates anyway.
        """
        confirmed = [e for e in events if e.confirmed]
        first, first_confirmed = _dist.agree(
            events[0].step if events else None, confirmed[0].step if confirmed else None
        )
        agreed = []
        if first is not None:
            event = next((e for e in events if e.step == first), None) or _other_rank(first)
            agreed.append(replace(event, confirmed=True) if first_confirmed == first else event)
            self.policy.adopt(first)
        if first_confirmed is not None and first_confirmed != first:
            event = next((e for e in confirmed if e.step == first_confirmed), None) or _other_rank(first_confirmed)
            agreed.append(replace(event, confirmed=True))
        return agreed

    def _record(self, events: list[EscalationEvent]) -> None:
        """Record decided escalations and write the rows decided with them."""
        self.events.extend(events)
        self._aggregator.counters["escalations"] += len(events)
        for event in events:
            self.actions.announce(event, self.events)
        rows, self._undecided_rows = self._undecided_rows, []
        if rows:
            started = time.perf_counter()
            if self.sink.log_rows(rows):
                self._last_logged = rows[-1][0]
                self.cadence.measured(time.perf_counter() - started, len(rows))
                if self.actions.penalty is not None:  # remember the sweep metric's first finite value
                    self.actions.penalty.observe(self.sink.run)
        if self._internal_errors != self._errors_written:
            self._errors_written = self._internal_errors
            self.sink.write_counters({"internal_errors": self._internal_errors})

    def _layer_metrics(self, v: StepValues) -> dict[str, float]:
        if v.layer_norms is None:
            return {}
        names = self._watched.names
        pairs = [(names[i], value) for i, value in zip(v.layer_index, v.layer_norms) if i < len(names)]
        if len(pairs) > MAX_TELEMETRY_LAYERS:
            pairs.sort(key=lambda kv: -math.inf if not math.isfinite(kv[1]) else -kv[1])
            pairs = pairs[:MAX_TELEMETRY_LAYERS]
        return {f"layers/{name}": value for name, value in pairs}

    def _log_last(self) -> None:
        """With the adaptive cadence, the last step gets its row so charts reach the end.

        (A fixed ``log_every`` is kept exactly, so a resumed run logs what an uninterrupted one
        would.)
        """
        if self.cadence.log_every is not None or self._last is None or self._last[0].step == self._last_logged:
            return
        obs, drift, report = self._last
        metrics = self._aggregator.row(obs, drift, report, escalated=self.policy.telemetry_active(obs.step), event=False)
        if self.sink.log_rows([(obs.step, metrics)]):
            self._last_logged = obs.step

    def _write_summary(self) -> None:
        counters = self._aggregator.counters
        self.sink.write_counters(
            {
                "escalated": self.escalated,
                "steps_observed": counters["steps"],
                "nonfinite_steps": counters["nonfinite_steps"],
                "skipped_steps": counters["skipped_steps"],
                "internal_errors": self._internal_errors,
            }
        )

    # ================================================================ helpers
    def _configure(self) -> None:
        """Derive how to measure from the parameters (again after ``add_param_group``)."""
        watched = self._watched
        sharded = self._sharded_option
        self._sharded = bool(sharded) if sharded is not None else self._distributed and watched.any_sharded
        # On CPU every step is a decision step anyway: finish the stats in Python (cheaper).
        self._host = watched.on_cpu and self.sync_every == 1 and not self._sharded
        self._uniform = watched.uniform

    def _device(self) -> torch.device:
        params = self._watched.params
        return params[0].device if params else torch.device("cpu")

    def _take_loss(self) -> float | Tensor | None:
        if self._loss_sum is None:
            return None
        loss = self._loss_sum / self._loss_count
        self._loss_sum, self._loss_count = None, 0
        return loss

    def _lr(self) -> float | Tensor | None:
        """The largest learning rate of the param groups; tensor LRs stay on their device."""
        lrs = [g.get("lr") for g in self.optimizer.param_groups]
        floats = [float(v) for v in lrs if isinstance(v, (int, float))]
        tensors = [v for v in lrs if isinstance(v, Tensor)]
        if not tensors:
            return max(floats) if floats else None
        if self._host or all(t.device.type == "cpu" for t in tensors):
            return max(floats + [float(t) for t in tensors])
        dev = tensors[0].device  # capturable optimizers: read back with the step's other values
        stacked = torch.stack([t.detach().to(dev).float().reshape(()) for t in tensors]).amax()
        return torch.maximum(stacked, torch.tensor(max(floats), device=dev)) if floats else stacked

    def _measure(self) -> norms.GradStats:
        """Measure the gradients; sharded ones are combined across ranks (one all_gather)."""
        if self._watched.refresh(self.optimizer):
            self._configure()
        stats = norms.measure(self._watched.params, local=self._sharded, host=self._host, uniform=self._uniform)
        if self._sharded:
            stats.row = _dist.reduce_sharded_row(stats.row)  # type: ignore[arg-type]
        return stats

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run monitor internals; an internal error is counted, warned about once, and never
        stops training. Decisions (``RunPruned``, ``EscalationError``) pass through."""
        try:
            return fn(*args)
        except _DECISIONS:
            raise
        except Exception as exc:  # noqa: BLE001
            self._internal_errors += 1
            if self._internal_errors == 1:
                warn(
                    "wandb_gradema: internal error, drift monitoring may be incomplete (shown once; "
                    f"later ones are counted in gradema/internal_errors): {type(exc).__name__}: {exc}\n"
                    f"{traceback.format_exc()}"
                )
            return None


def _event(data: Mapping[str, Any]) -> EscalationEvent:
    """An ``EscalationEvent`` from its ``asdict`` form (tuples come back as lists)."""
    return EscalationEvent(
        **{**data, "reasons": tuple(data["reasons"]), "anomaly_types": tuple(data["anomaly_types"])}
    )


def _other_rank(step: int) -> EscalationEvent:
    return EscalationEvent(
        step=step,
        reasons=(f"Escalation on another rank at step {step}.",),
        anomaly_types=("other_rank",),
        score=math.nan,
        first_anomaly_step=step,
    )
