"""GradientMonitor: an optimizer step pre-hook that measures, tracks, judges, logs and acts."""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from . import _dist, norms
from ._validate import check_choice, check_float, check_int, check_state_keys
from .aggregate import LogAggregator
from .detector import AnomalyDetector, AnomalyReport, Observation
from .errors import EscalationError, RunPruned, warn
from .escalation import EscalationEvent, EscalationPolicy
from .sweep_metric import SweepGoal, make_penalty
from .tracker import DriftUpdate, GradientEMATracker
from .wandb_sink import PREFIX, WandbSink

__all__ = ["GradientMonitor", "OnEscalation"]

OnEscalation = Literal["auto", "warn", "prune", "raise"] | Callable[[EscalationEvent], Any]
_ACTIONS = ("auto", "warn", "prune", "raise")
_FORMAT_VERSION = 1
_STATE_KEYS = ("format_version", "step", "skip_streak", "next_log", "tracker", "detector", "policy", "aggregator", "events")
#: Per-layer norms logged on a telemetry step, largest first (non-finite ones lead).
MAX_TELEMETRY_LAYERS = 128
#: Adaptive logging (``log_every=None``): share of training time logging may take, and the
#: longest gap between two rows, in steps.
LOG_BUDGET = 0.01
MAX_LOG_INTERVAL = 100
#: Tag added to a pruned run.
PRUNED_TAG = "gradema:pruned"


@dataclass(slots=True)
class _Pending:
    """One optimizer step waiting for its device values to be read back."""

    step: int
    row: Tensor | list[float]
    loss: float | Tensor | None
    lr: float | None
    n_tensors: int
    layer_norms: Tensor | list[float] | None
    layer_index: Sequence[int] | None
    found_inf: float | Tensor | None = None  # a fused optimizer stepped by a GradScaler


class GradientMonitor:
    """Watches one optimizer: every ``step()`` measures gradients before the update.

    Per step, on device: per-tensor norms with foreach kernels grouped by (device, dtype), the
    total norm and a health score (see ``norms.health_score``). Per decision step, on host: the
    ``GradientEMATracker`` drift indicators, the ``AnomalyDetector`` report and the
    ``EscalationPolicy``. An escalation turns on per-layer telemetry for ``telemetry_steps``
    steps, records why (``events``, the run summary, an alert) and then acts: ``"warn"``,
    ``"prune"`` (fail the W&B run, raise ``RunPruned``), ``"raise"`` (``EscalationError``) or
    a callable. ``"auto"`` prunes inside a W&B sweep and warns elsewhere.

    The optimizer stays the same object: the monitor adds a step pre-hook (and, unless
    ``save_with_optimizer=False``, state-dict hooks so its state rides inside
    ``optimizer.state_dict()``). ``remove()`` takes them all off.

    Host-device syncs: values are read back once per ``sync_every`` steps (1 on CPU), on
    logging steps and on telemetry steps; other steps only queue device tensors.

    Non-finite gradients never raise from the hook: they are counted, reported (escalating at
    once), and never folded into the EMA or the detector's statistics.

    Use ``wandb_gradema.watch(optimizer, ...)``; the arguments are documented there.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        run: Any = None,
        model: torch.nn.Module | None = None,
        scaler: Any = None,
        max_norm: float | None = None,
        log_every: int | None = None,
        sync_every: int | None = None,
        on_escalation: OnEscalation = "auto",
        alerts: bool = True,
        name: str | None = None,
        ema_decay: float = 0.99,
        eps: float = 1e-8,
        sensitivity: float = 1.0,
        patience: int = 3,
        cooldown_steps: int = 100,
        telemetry_steps: int = 50,
        max_skipped_steps: int = 25,
        detector: AnomalyDetector | None = None,
        save_with_optimizer: bool = True,
        sharded: bool | None = None,
        sweep_metric: str | None = None,
        sweep_goal: SweepGoal = "minimize",
        sweep_penalty: float | None = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"watch() expects a torch.optim.Optimizer, got {type(optimizer).__name__}. "
                "Pass the optimizer whose step() runs the update (for Lightning, use the "
                "wandb_gradema.integrations.lightning callback)."
            )
        for hook in getattr(optimizer, "_optimizer_step_pre_hooks", {}).values():
            if isinstance(getattr(hook, "__self__", None), GradientMonitor):
                raise ValueError(
                    "This optimizer is already watched by a GradientMonitor; call its remove() "
                    "before watching it again."
                )
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module or None, got {type(model).__name__}.")
        if scaler is not None and not callable(getattr(scaler, "step", None)):
            raise TypeError(f"`scaler` must be a torch.amp.GradScaler or None, got {type(scaler).__name__}.")
        max_norm = check_float("max_norm", max_norm, low=0.0, low_open=True, allow_none=True)
        log_every = check_int("log_every", log_every, minimum=1, allow_none=True)
        sync_every = check_int("sync_every", sync_every, minimum=1, allow_none=True)
        if not callable(on_escalation):
            check_choice("on_escalation", on_escalation, _ACTIONS)
        if not isinstance(alerts, bool):
            raise TypeError(f"`alerts` must be a bool, got {type(alerts).__name__}.")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"`name` must be a non-empty string without '/', got {name!r}.")
        max_skipped_steps = check_int("max_skipped_steps", max_skipped_steps, minimum=1)
        if sharded is not None and not isinstance(sharded, bool):
            raise TypeError(f"`sharded` must be a bool or None, got {type(sharded).__name__}.")
        if detector is not None and not isinstance(detector, AnomalyDetector):
            raise TypeError(f"`detector` must be an AnomalyDetector or None, got {type(detector).__name__}.")
        if detector is not None and sensitivity != 1.0:
            raise ValueError("Pass `sensitivity` to the AnomalyDetector you give as `detector`, not to watch().")
        tracker = GradientEMATracker(decay=ema_decay, eps=eps)
        policy = EscalationPolicy(patience, cooldown_steps, telemetry_steps)
        detector = detector if detector is not None else AnomalyDetector(sensitivity=sensitivity)
        sweep_metric_penalty = make_penalty(sweep_metric, sweep_goal, sweep_penalty)

        self.optimizer = optimizer
        self.tracker = tracker
        self.detector = detector
        self.policy = policy
        self.sink = WandbSink(run, prefix=PREFIX if name is None else f"{PREFIX}/{name}")
        self.max_norm = max_norm
        self.log_every = log_every
        self.on_escalation = on_escalation
        self.alerts = alerts
        self.max_skipped_steps = max_skipped_steps
        self.events: list[EscalationEvent] = []
        self.pruned: RunPruned | None = None
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._names = _param_names(optimizer, model)
        # torch.distributed is set up before optimizers are built; checked once, not per step.
        self._distributed = _dist.is_distributed()
        if sharded is None:  # FSDP2 (DTensor) and FSDP1 (FlatParameter) shard gradients
            sharded = self._distributed and any(
                type(p).__name__ in ("DTensor", "FlatParameter") for p in self._params
            )
        self.sharded = sharded
        on_cpu = all(p.device.type == "cpu" for p in self._params)
        if sync_every is None:
            sync_every = 1 if on_cpu else 16
        self.sync_every = sync_every
        # On CPU every step is a decision step anyway: finish the stats in Python (cheaper).
        self._host = on_cpu and sync_every == 1 and not sharded
        self._uniform = len({(p.device, p.dtype) for p in self._params}) == 1  # no grouping needed
        self._aggregator = LogAggregator()
        self._step = 0
        self._skip_streak = 0
        self._pending_stats: norms.GradStats | None = None
        self._queue: list[_Pending] = []
        self._loss_sum: float | Tensor | None = None
        self._loss_count = 0
        self._last: tuple[Observation, DriftUpdate, AnomalyReport] | None = None
        self._internal_error_warned = False
        self._scaler = scaler
        self._scaler_step: Callable[..., Any] | None = None  # our wrapper of scaler.step
        self._handles = [optimizer.register_step_pre_hook(self._on_step)]
        if save_with_optimizer:
            self._handles.append(optimizer.register_state_dict_post_hook(self._save_into))
            self._handles.append(optimizer.register_load_state_dict_pre_hook(self._load_from))
        self._sweep_metric = sweep_metric_penalty
        self._next_log = 0  # adaptive logging: the step of the next regular row
        self._last_logged = -1
        self._step_time: float | None = None  # EMA of the wall time between optimizer steps
        self._last_hook_time: float | None = None
        if scaler is not None:
            self._wrap_scaler(scaler)

    # ================================================================ public API
    @property
    def step(self) -> int:
        """Optimizer steps observed so far (the index the next step will get)."""
        return self._step

    @property
    def escalated(self) -> bool:
        """True once any escalation has fired."""
        return bool(self.events)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps a GradScaler skipped (inf/NaN gradients), when ``scaler`` was given."""
        return self._aggregator.counters["skipped_steps"]

    @property
    def last(self) -> tuple[Observation, DriftUpdate, AnomalyReport] | None:
        """The latest processed step: its observation, drift indicators and anomaly report."""
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
            # On CPU reading the value now is free; elsewhere keep it on device until the flush.
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
        returned (0-d tensor, no sync). Use it in place of torch's in scripts that clip.
        """
        max_norm = check_float("max_norm", max_norm, low=0.0, low_open=True)
        total = self.measure()
        stats = self._pending_stats
        assert stats is not None
        norms.clip_grads_(stats.grads, stats.total, max_norm)
        stats.clipped = True
        return total

    def flush(self) -> None:
        """Read back and process every queued step now (one host-device sync)."""
        events = self._guarded(self._flush_queue)
        for event in events or ():
            self._act(event)

    def remove(self) -> None:
        """Flush, log the last step's row and the final summary, and take every hook off."""
        self.flush()
        self._guarded(self._log_last)
        for h in self._handles:
            h.remove()
        self._handles = []
        self._unwrap_scaler()
        self._guarded(self._write_summary)

    close = remove

    def __enter__(self) -> GradientMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume drift tracking exactly, as plain Python values."""
        self.flush()
        return {
            "format_version": _FORMAT_VERSION,
            "step": self._step,
            "skip_streak": self._skip_streak,
            "next_log": self._next_log,
            "tracker": self.tracker.state_dict(),
            "detector": self.detector.state_dict(),
            "policy": self.policy.state_dict(),
            "aggregator": self._aggregator.state_dict(),
            "events": [asdict(e) for e in self.events],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned; rejects missing or unknown keys by name."""
        state = dict(state)
        check_state_keys("GradientMonitor", state, _STATE_KEYS)
        if state["format_version"] != _FORMAT_VERSION:
            raise ValueError(
                f"GradientMonitor state has format_version {state['format_version']!r}; "
                f"this version reads {_FORMAT_VERSION}."
            )
        self.flush()
        self.tracker.load_state_dict(state["tracker"])
        self.detector.load_state_dict(state["detector"])
        self.policy.load_state_dict(state["policy"])
        self._aggregator.load_state_dict(state["aggregator"])
        self._step = int(state["step"])
        self._skip_streak = int(state["skip_streak"])
        self._next_log = int(state["next_log"])
        self.events = [
            EscalationEvent(**{**e, "reasons": tuple(e["reasons"]), "anomaly_types": tuple(e["anomaly_types"])})
            for e in state["events"]
        ]

    # ================================================================ the hook
    def _on_step(self, optimizer: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        """Step pre-hook: measure before the update; decide on decision steps.

        ``step(closure)`` computes its gradients inside the closure, after pre-hooks run: then
        the closure is wrapped and the step is observed right after its first call.
        """
        # torch passes the optimizer itself as args[0]; the closure comes next or by keyword.
        closure = args[1] if len(args) > 1 else kwargs.get("closure")
        if closure is not None:
            wrapped = self._wrap_closure(closure)
            if len(args) > 1:
                return (args[0], wrapped, *args[2:]), kwargs
            return args, {**kwargs, "closure": wrapped}
        self._observe_and_act()
        return None

    def _observe_and_act(self) -> None:
        now = time.perf_counter()
        if self._last_hook_time is not None:  # wall time per step, for the adaptive cadence
            dt = now - self._last_hook_time
            if self._step_time is None:
                self._step_time = dt
            else:  # a pause (evaluation, checkpoint) counts as two steps at most
                self._step_time = 0.8 * self._step_time + 0.2 * min(dt, 2.0 * self._step_time)
        self._last_hook_time = now
        # A fused optimizer stepped by a GradScaler sees scaled gradients and a found_inf flag
        # (torch.amp.GradScaler sets both on the optimizer for the duration of the step).
        found_inf = getattr(self.optimizer, "found_inf", None)
        grad_scale = getattr(self.optimizer, "grad_scale", None)
        events = self._guarded(self._observe_step, found_inf, grad_scale)
        for event in events or ():
            self._act(event)

    def _wrap_closure(self, closure: Callable[[], Any]) -> Callable[[], Any]:
        calls = 0

        def observed_closure() -> Any:
            nonlocal calls
            loss = closure()
            calls += 1
            if calls == 1:  # LBFGS calls again: the step is observed once
                if self._loss_sum is None and isinstance(loss, (Tensor, float)):
                    self._guarded(self.observe_loss, loss)
                self._observe_and_act()
            return loss

        return observed_closure

    def _observe_step(self, found_inf: Tensor | None = None, grad_scale: Tensor | None = None) -> list[EscalationEvent]:
        step = self._step
        self._step += 1
        stats = self._pending_stats
        self._pending_stats = None
        if stats is None:
            stats = self._measure()
        if grad_scale is not None:  # measured at the loss scale: bring back to true scale
            stats = self._unscaled(stats, grad_scale)
        if self.max_norm is not None and not stats.clipped:
            norms.clip_grads_(stats.grads, stats.total, self.max_norm)
        telemetry = self.policy.telemetry_active(step)
        if self._queue and not self.policy.telemetry_active(self._queue[-1].step):
            # Per-layer norms are kept for the newest step only (so an escalation on it can log
            # them) and for telemetry steps: never more than one vector per queued step.
            self._queue[-1].layer_norms = self._queue[-1].layer_index = None
        self._queue.append(
            _Pending(
                step=step,
                row=stats.row,
                loss=self._take_loss(),
                lr=self._lr(),
                n_tensors=stats.n_tensors,
                layer_norms=stats.norms,
                layer_index=stats.index,
                found_inf=(found_inf.item() if self._host else found_inf) if isinstance(found_inf, Tensor) else None,
            )
        )
        if telemetry or len(self._queue) >= self.sync_every or self._log_due(step):
            return self._flush_queue()
        return []

    def _log_due(self, step: int) -> bool:
        """A regular row is due: every ``log_every`` steps, or when the adaptive cadence says."""
        return step % self.log_every == 0 if self.log_every is not None else step >= self._next_log

    def _schedule_next_log(self, step: int, seconds: float) -> None:
        """Adaptive cadence: the next regular row comes ``log_interval(...)`` steps later."""
        if self.log_every is None:
            self._next_log = step + log_interval(seconds, self._step_time)

    def _measure(self) -> norms.GradStats:
        """Measure the gradients; sharded ones are combined across ranks (one all_gather)."""
        stats = norms.measure(self._params, local=self.sharded, host=self._host, uniform=self._uniform)
        if self.sharded:
            stats.row = _dist.reduce_sharded_row(stats.row)  # type: ignore[arg-type]
        return stats

    def _unscaled(self, stats: norms.GradStats, grad_scale: Tensor) -> norms.GradStats:
        """The stats of gradients measured at the loss scale ``grad_scale``, at true scale."""
        row, values = stats.row, stats.norms
        if isinstance(row, list) and isinstance(values, list):  # measured on the host
            inv = 1.0 / float(grad_scale)
            host_row = [row[0] * inv, row[1] * inv, *row[2:]]
            return norms.GradStats(host_row, [v * inv for v in values], stats.index, stats.grads, stats.clipped)
        assert isinstance(row, Tensor) and isinstance(values, Tensor)
        scale = grad_scale.to(row.device).reshape(1).float()
        device_row = torch.cat((row[:2] / scale, row[2:]))
        return norms.GradStats(device_row, values / scale, stats.index, stats.grads, stats.clipped)

    def _take_loss(self) -> float | Tensor | None:
        if self._loss_sum is None:
            return None
        loss = self._loss_sum / self._loss_count
        self._loss_sum, self._loss_count = None, 0
        return loss

    def _lr(self) -> float | None:
        lrs = [g.get("lr") for g in self.optimizer.param_groups]
        vals = [float(v) for v in lrs if isinstance(v, (int, float))]
        if not vals:  # tensor LRs (capturable optimizers) are read at flush time only if cheap
            vals = [float(v) for v in lrs if isinstance(v, Tensor) and v.device.type == "cpu"]
        return max(vals) if vals else None

    def _flush_queue(self) -> list[EscalationEvent]:
        if not self._queue:
            return []
        queue, self._queue = self._queue, []
        rows, losses, found = _read_back(queue)
        events = []
        for p, row, loss, inf in zip(queue, rows, losses, found):
            if inf:  # a fused optimizer's step the GradScaler turned into a no-op
                event = self._skipped()
            else:
                self._skip_streak = 0
                event = self._process(p, row, loss)
            if event is not None:
                events.append(event)
        if self._distributed:
            events = self._agree(events)
        self._add_events(events)
        return events

    def _add_events(self, events: list[EscalationEvent]) -> None:
        """Record escalations: ``events`` and the logged counter."""
        self.events.extend(events)
        self._aggregator.counters["escalations"] += len(events)

    def _process(self, p: _Pending, row: list[float], loss: float | None) -> EscalationEvent | None:
        grad_norm, max_tensor, n_active, n_finite = row
        health, active, _ = norms.health_score(p.n_tensors, n_active, grad_norm, max_tensor)
        obs = Observation(
            step=p.step,
            grad_norm=grad_norm,
            health=health,
            loss=loss,
            lr=p.lr,
            active_share=active,
            n_nonfinite=p.n_tensors - int(n_finite),
        )
        drift = self.tracker.update(obs.grad_norm, obs.health)
        report = self.detector.check(obs)
        return self._record(obs, drift, report, p)

    def _record(
        self, obs: Observation, drift: DriftUpdate, report: AnomalyReport, p: _Pending | None
    ) -> EscalationEvent | None:
        event = self.policy.update(report)
        self._aggregator.add(obs, drift, report)
        self._last = (obs, drift, report)
        telemetry = self.policy.telemetry_active(obs.step)
        if (event is not None or telemetry or self._log_due(obs.step)) and self.sink.run is not None:
            extra = self._layer_metrics(p) if (telemetry or event) and p is not None else None
            started = time.perf_counter()
            self._log_row(obs, drift, report, escalated=telemetry, event=event is not None, extra=extra)
            self._schedule_next_log(obs.step, time.perf_counter() - started)
        return event

    def _log_row(self, obs: Observation, drift: DriftUpdate, report: AnomalyReport, **row_options: Any) -> None:
        row = self._aggregator.row(obs, drift, report, **row_options)
        self.sink.log({self.sink.step_key: obs.step, **{self.sink.key(k): v for k, v in row.items()}})
        self._last_logged = obs.step
        if self._sweep_metric is not None:  # remember the sweep metric's first finite value
            self._sweep_metric.observe(self.sink.run)

    def _log_last(self) -> None:
        """With the adaptive cadence, the last step gets its row so charts reach the end.

        (A fixed ``log_every`` is kept exactly, so a resumed run logs what an uninterrupted one
        would.)
        """
        if self.log_every is not None or self._last is None or self._last[0].step == self._last_logged:
            return
        if self.sink.run is not None:
            obs, drift, report = self._last
            self._log_row(obs, drift, report, escalated=self.policy.telemetry_active(obs.step), event=False)

    def _agree(self, events: list[EscalationEvent]) -> list[EscalationEvent]:
        """All ranks escalate together, at the earliest step any rank did: one all_reduce.

        Ranks then share the same cooldown and telemetry windows, so their decision steps (and
        collectives) stay aligned; a rank that saw nothing records why it escalates anyway.
        """
        step = _dist.agree(events[0].step if events else None)
        if step is None:
            return []
        self.policy.adopt(step)
        mine = [e for e in events if e.step == step]
        if mine:
            return mine[:1]
        return [
            EscalationEvent(
                step=step,
                reasons=(f"Escalation on another rank at step {step}.",),
                anomaly_types=("other_rank",),
                score=math.nan,
                first_anomaly_step=step,
            )
        ]

    def _layer_metrics(self, p: _Pending) -> dict[str, float]:
        if p.layer_norms is None or p.layer_index is None:
            return {}
        values = p.layer_norms if isinstance(p.layer_norms, list) else p.layer_norms.tolist()  # sync: telemetry only
        pairs = [(self._names[i], v) for i, v in zip(p.layer_index, values)]
        if len(pairs) > MAX_TELEMETRY_LAYERS:
            pairs.sort(key=lambda kv: -math.inf if not math.isfinite(kv[1]) else -kv[1])
            pairs = pairs[:MAX_TELEMETRY_LAYERS]
        return {f"layers/{name}": v for name, v in pairs}

    # ================================================================ acting
    def _act(self, event: EscalationEvent) -> None:
        """Record an escalation in W&B, then warn, prune, raise or call the user's handler."""
        self._guarded(self._announce, event)
        action = self.on_escalation
        if callable(action):
            action(event)
            return
        if action == "auto":
            action = "prune" if self._in_sweep() else "warn"
        if action == "warn":
            warn(f"wandb_gradema: gradient drift escalated at step {event.step}: {event.reason}")
        elif action == "raise":
            raise EscalationError(event.step, event.reason)
        else:
            self._prune(event)

    def _in_sweep(self) -> bool:
        """Inside a W&B sweep: the run says so, or (on every rank alike) the agent's env var."""
        if self._distributed:
            return bool(os.environ.get("WANDB_SWEEP_ID"))
        return bool(self._guarded(lambda: self.sink.sweep_id))

    def _announce(self, event: EscalationEvent) -> None:
        first = self.events[0]
        self.sink.update_summary(
            {
                self.sink.key("escalated"): True,
                self.sink.key("escalations"): len(self.events),
                self.sink.key("first_escalation_step"): first.step,
                self.sink.key("first_escalation_reason"): first.reason,
                self.sink.key("last_escalation_step"): event.step,
                self.sink.key("last_escalation_reason"): event.reason,
            }
        )
        if self.alerts:
            self.sink.alert(f"Gradient drift escalated at step {event.step}", event.reason)

    def _prune(self, event: EscalationEvent) -> None:
        stop_step = self._step - 1
        pruned = RunPruned(stop_step, event.reason)
        sink = self.sink
        sink.update_summary(
            {
                sink.key("pruned"): True,
                sink.key("pruned_step"): stop_step,
                sink.key("prune_reason"): event.reason,
                sink.key("prune_types"): ",".join(event.anomaly_types),
            }
        )
        if self._sweep_metric is not None:  # a bounded score instead of bayes imputing 0.0
            self._sweep_metric.record(sink)
        self._write_summary()
        sink.add_tag(PRUNED_TAG)
        if self.alerts:
            sink.alert(f"Run pruned at step {stop_step}", event.reason, level="ERROR", force=True)
        warn(f"wandb_gradema: {pruned}")
        sink.finish(exit_code=1)  # W&B state *failed*; the sink writes nothing after this
        self.pruned = pruned
        raise pruned

    def _write_summary(self) -> None:
        counters = self._aggregator.counters
        self.sink.update_summary(
            {
                self.sink.key("escalated"): self.escalated,
                self.sink.key("steps_observed"): counters["steps"],
                self.sink.key("nonfinite_steps"): counters["nonfinite_steps"],
                self.sink.key("skipped_steps"): counters["skipped_steps"],
            }
        )

    # ================================================================ GradScaler
    def _wrap_scaler(self, scaler: Any) -> None:
        """Count steps the scaler skips: our pre-hook does not fire inside its ``step()``."""
        original = scaler.step

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            before = self._step
            out = original(optimizer, *args, **kwargs)
            if self._scaler_step is step and optimizer is self.optimizer and self._step == before:
                events = self._guarded(self._skipped_now)
                for event in events or ():
                    self._act(event)
            return out

        self._scaler_step = step
        scaler.step = step

    def _unwrap_scaler(self) -> None:
        """Restore ``scaler.step`` if our wrapper is still on top; else just go inert."""
        scaler, ours = self._scaler, self._scaler_step
        self._scaler = self._scaler_step = None
        if scaler is not None and vars(scaler).get("step") is ours:
            del scaler.step  # the class's method shows through again

    def _skipped_now(self) -> list[EscalationEvent]:
        """A step the scaler skipped outside our hook: decide on what is queued, then count it."""
        events = self._flush_queue()
        self._pending_stats = None
        self._take_loss()
        event = self._skipped()
        if event is not None:
            self._add_events([event])
            events.append(event)
        return events

    def _skipped(self) -> EscalationEvent | None:
        """Count one skipped step; ``max_skipped_steps`` in a row escalate."""
        self._aggregator.counters["skipped_steps"] += 1
        self._skip_streak += 1
        if self._skip_streak < self.max_skipped_steps:
            return None
        report = AnomalyReport(
            step=self._step,
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

    # ================================================================ checkpoints
    def _save_into(self, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
        state["gradema"] = self.state_dict()
        return state

    def _load_from(self, optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
        if "gradema" not in state:
            return state
        state = dict(state)
        self.load_state_dict(state.pop("gradema"))
        return state

    # ================================================================ safety net
    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run monitor internals; an internal error warns once and never stops training."""
        try:
            return fn(*args)
        except (RunPruned, EscalationError):
            raise
        except Exception as exc:  # noqa: BLE001
            if not self._internal_error_warned:
                self._internal_error_warned = True
                warn(
                    "wandb_gradema: internal error, drift monitoring may be incomplete "
                    f"(shown once): {type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                )
            return None


def log_interval(log_seconds: float, step_seconds: float | None) -> int:
    """Steps between rows so that logging takes at most ``LOG_BUDGET`` of training time.

    A row that costs ``log_seconds`` is worth one every ``log_seconds / (LOG_BUDGET *
    step_seconds)`` steps, clamped to [1, ``MAX_LOG_INTERVAL``]; 10 until a step time is known.

    Example:
        >>> log_interval(0.0006, 0.005)  # a 0.6 ms row beside 5 ms steps
        12
        >>> log_interval(0.0006, 0.5)  # beside 0.5 s steps: every step
        1
    """
    if step_seconds is None or step_seconds <= 0:
        return 10
    return min(max(math.ceil(log_seconds / (LOG_BUDGET * step_seconds)), 1), MAX_LOG_INTERVAL)


def _read_back(queue: list[_Pending]) -> tuple[list[list[float]], list[float | None], list[bool]]:
    """Host values of queued steps: rows, losses, GradScaler overflow flags.

    Host-device sync: the one read-back for every queued step (rows measured on the host are
    used as they are).
    """
    if all(isinstance(p.row, list) and not isinstance(p.loss, Tensor) for p in queue):  # on the host
        return [p.row for p in queue], [p.loss for p in queue], [bool(p.found_inf) for p in queue]  # type: ignore[misc]
    tensors = [p.row for p in queue if isinstance(p.row, Tensor)]
    dev = tensors[0].device if tensors else torch.device("cpu")
    stacked = iter(torch.stack([t.to(dev) for t in tensors]).tolist() if tensors else [])
    rows = [next(stacked) if isinstance(p.row, Tensor) else p.row for p in queue]
    extra = [t for p in queue for t in (p.loss, p.found_inf) if isinstance(t, Tensor)]
    values = iter(torch.stack([t.to(dev).float().reshape(()) for t in extra]).tolist() if extra else [])
    losses: list[float | None] = []
    found: list[bool] = []
    for p in queue:  # the order of ``extra``: each step's loss, then its flag
        losses.append(next(values) if isinstance(p.loss, Tensor) else p.loss)
        flag = next(values) if isinstance(p.found_inf, Tensor) else p.found_inf
        found.append(bool(flag))
    return rows, losses, found


def _param_names(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None) -> list[str]:
    """A readable name per optimizer parameter: the model's names when given."""
    by_id = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
    names = []
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            names.append(by_id.get(id(p), f"group{gi}.param{pi}"))
    return names
