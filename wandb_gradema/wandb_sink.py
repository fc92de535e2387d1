"""WandbSink: everything wandb_gradema sends to W&B, behind one guard.

Keys live under ``gradema/`` with ``gradema/step`` (the optimizer step) as their x-axis. Rows go
through the run's ``HistoryWriter`` so the user's own rows are never split or dropped. The sink
also owns what an escalation and a prune write (summary, alert, tag, finishing the run failed),
for the monitor and the framework adapters alike. The sink never imports ``wandb`` itself:
with no ``wandb`` module loaded there can be no run. Any error from W&B is reported once as a
warning and training carries on.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import _dist
from .errors import warn
from .escalation import EscalationEvent
from .history import HistoryWriter

__all__ = ["PREFIX", "PRUNED_TAG", "WandbSink", "current_run"]

PREFIX = "gradema"
#: Tag added to a pruned run.
PRUNED_TAG = "gradema:pruned"

#: Metrics whose W&B summary is an aggregate rather than the last value.
_SUMMARY_AGGREGATES = {
    "norm_drift_max": "max",
    "health_drift_max": "max",
    "score_max": "max",
    "grad_norm_max": "max",
    "health_min": "min",
}

#: The warnings that say there is no run to log to.
_NO_RUN = frozenset({"no-wandb", "no-run"})
#: Seconds between two alerts from one sink.
ALERT_INTERVAL_S = 300.0

#: The chart sections whose metrics are defined on each run: defined once per run, however
#: many monitors come and go (a run takes no new attributes, so they are kept here).
_DEFINED: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def current_run(run: Any = None) -> Any:
    """``run``, or the live ``wandb.run`` when ``run`` is None (None without one)."""
    if run is not None:
        return run
    wandb = sys.modules.get("wandb")
    return getattr(wandb, "run", None) if wandb is not None else None


#: Escalations kept in the summary's ``events`` list (the first and the latest ones).
EVENT_LOG_SIZE = 20


def event_log(events: Sequence[EscalationEvent]) -> list[dict[str, Any]]:
    """Each escalation as a summary entry: step, rules, prune-grade or not, and the reason.

    Why: the history marks escalation steps, but a chart (``wandb-gradema report``) needs each
    one's reason and whether it could prune. Bounded: the first and the latest ones.
    """
    kept = list(events)
    if len(kept) > EVENT_LOG_SIZE:
        kept = kept[: EVENT_LOG_SIZE // 2] + kept[-EVENT_LOG_SIZE // 2 :]
    return [
        {"step": e.step, "types": ",".join(e.anomaly_types), "confirmed": bool(e.confirmed), "reason": e.reason}
        for e in kept
    ]


class WandbSink:
    """Logs gradema rows, summaries, tags and alerts to one W&B run (rank 0 only).

    Args:
        run: the run to log to; None follows ``wandb.run`` (looked up on every call until one
            appears, so ``watch()`` may come before ``wandb.init()``).
        prefix: the chart section, ``"gradema"`` or ``"gradema/<name>"`` for one of several
            watched optimizers.
    """

    def __init__(self, run: Any = None, prefix: str = PREFIX, before_finish: Callable[[], None] | None = None) -> None:
        self._explicit = run
        self._before_finish = before_finish  # the monitor writes its queued steps: see HistoryWriter
        self.prefix = prefix
        self.step_key = f"{prefix}/step"
        self._defined_for: int | None = None  # id() of the run define_metric ran on
        self._history: HistoryWriter | None = None
        self._warned: set[str] = set()
        self._last_alert = -float("inf")
        self.enabled = _dist.is_main_process()
        self.finished = False  # set by finish(): W&B raises on writes to a finished run
        self.closed = False  # set by close(): no more rows, summaries still go through
        self._missing: bool | None = None  # wandb cannot be imported (see _wandb_missing)

    # ------------------------------------------------------------------ run lookup
    @property
    def run(self) -> Any:
        """The live run to log to, or None (no run, a disabled or finished run, not rank 0)."""
        if not self.enabled or self.finished:
            return None
        run = current_run(self._explicit)
        if run is None:
            if self._wandb_missing():
                self._warn_once(
                    "no-wandb",
                    "wandb cannot be imported (is it installed?): gradema keeps tracking drift, "
                    "escalating and pruning (monitor.events, state_dict()) but logs nothing. "
                    "pip install wandb and call wandb.init() to chart it.",
                )
            else:
                self._warn_once(
                    "no-run",
                    "No active W&B run: gradema keeps tracking drift but logs nothing. "
                    "Call wandb.init() before training, or pass run=... to watch().",
                )
            return None
        if getattr(run, "disabled", False):
            self._warn_once(
                "disabled",
                "The W&B run is disabled (WANDB_MODE=disabled): gradema keeps tracking drift "
                "but logs nothing.",
            )
            return None
        if getattr(run, "_is_finished", False) is True:
            self._warn_once(
                "finished",
                "The W&B run was finished while training goes on: gradema keeps tracking drift "
                "(events, counters, state_dict()) but logs nothing more to it.",
            )
            return None
        if id(run) != self._defined_for and not self.closed:
            self._attach(run)
        return run

    def live(self) -> bool:
        """A run takes rows now (``run`` is not None). Without a run, once that was said, only
        ``wandb.run`` is looked at (this runs on every decision step until a run appears)."""
        if self._explicit is None and self._history is None and not self._warned.isdisjoint(_NO_RUN):
            wandb = sys.modules.get("wandb")
            if wandb is None or getattr(wandb, "run", None) is None:
                return False
        return self.run is not None

    @property
    def unattached(self) -> bool:
        """No run is attached yet (rows may start once one appears)."""
        return self._history is None and self.enabled and not self.closed

    def _wandb_missing(self) -> bool:
        """``wandb`` is not loaded and cannot be (looked up once)."""
        if "wandb" in sys.modules and sys.modules["wandb"] is not None:
            return False
        if self._missing is None:
            try:
                self._missing = importlib.util.find_spec("wandb") is None
            except (ImportError, ValueError):  # a blocked import, or sys.modules["wandb"] = None
                self._missing = True
        return self._missing

    def attach(self) -> None:
        """Start watching the run's history now if a run is live (quietly when none is yet).

        Called when the monitor is created, so the user's first ``log()`` is seen.
        """
        if self.enabled and not self.closed:
            run = current_run(self._explicit)
            if run is not None and not getattr(run, "disabled", False) and id(run) != self._defined_for:
                self._attach(run)

    @property
    def sweep_id(self) -> str | None:
        """The sweep the run belongs to, or None."""
        run = self.run
        return getattr(run, "sweep_id", None) or None if run is not None else None

    def _attach(self, run: Any) -> None:
        self._defined_for = id(run)
        if self._history is not None:
            self._history.release(self._before_finish)
        self._history = HistoryWriter.attach(run, self._warn_once, self._failed, self._before_finish)
        try:
            defined = _DEFINED.setdefault(run, set())
        except TypeError:  # a run that cannot be weakly referenced: define every time
            defined = set()
        if self.prefix in defined:
            return
        try:
            run.define_metric(self.step_key, hidden=True)
            run.define_metric(f"{self.prefix}/*", step_metric=self.step_key)
            for key, how in _SUMMARY_AGGREGATES.items():
                run.define_metric(self.key(key), step_metric=self.step_key, summary=how)
            defined.add(self.prefix)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            self._failed("define_metric", exc)

    def key(self, name: str) -> str:
        """The full W&B key of metric ``name``."""
        return f"{self.prefix}/{name}"

    # ------------------------------------------------------------------ rows
    def log_rows(self, rows: Sequence[tuple[int, Mapping[str, Any]]]) -> bool:
        """Write ``(step, metrics)`` rows (unprefixed names); True when a run took them."""
        run = self.run
        if run is None or self._history is None:
            return False
        self._history.write([{self.step_key: step, **{self.key(k): v for k, v in row.items()}} for step, row in rows])
        return True

    def tick(self) -> None:
        """One optimizer step went by (the history writer learns the user's logging style)."""
        if self._history is not None:
            self._history.tick()

    def settle(self, *, final: bool = False) -> None:
        """Commit the monitor's pending row before summaries are written (``final``: the run
        ends, everything waiting is written first); see ``HistoryWriter.settle``."""
        if self._history is not None and self.run is not None:
            try:
                self._history.settle(final=final)
            except Exception as exc:  # noqa: BLE001
                self._failed("log", exc)

    def close(self) -> None:
        """Write the rows still waiting and log no more; summaries still go through."""
        self.closed = True
        if self._history is not None:
            history, self._history = self._history, None
            try:
                history.release(self._before_finish)
            except Exception as exc:  # noqa: BLE001
                self._failed("log", exc)

    # ------------------------------------------------------------------ summaries and alerts
    def update_summary(self, values: Mapping[str, Any]) -> None:
        """Set summary values (shown in the runs table); names are full keys."""
        run = self.run
        if run is None:
            return
        try:
            for key, value in values.items():
                run.summary[key] = value
        except Exception as exc:  # noqa: BLE001
            self._failed("summary", exc)

    def write_counters(self, counters: Mapping[str, Any]) -> None:
        """Summary values under the prefix (``escalated``, ``steps_observed``...)."""
        self.update_summary({self.key(k): v for k, v in counters.items()})

    def announce(self, event: EscalationEvent, events: Sequence[EscalationEvent], *, alert: bool) -> None:
        """An escalation was decided: summary (first and last escalation) and an alert."""
        first = events[0]
        self.write_counters(
            {
                "escalated": True,
                "escalations": len(events),
                "first_escalation_step": first.step,
                "first_escalation_reason": first.reason,
                "last_escalation_step": event.step,
                "last_escalation_reason": event.reason,
                "events": event_log(events),
            }
        )
        if alert:
            self.alert(f"Gradient drift escalated at step {event.step}", event.reason)

    def mark_pruned(self, step: int, event: EscalationEvent, *, alert: bool, what: str = "Run") -> None:
        """The summary block, tag and alert of a pruned run (``finish`` is separate)."""
        self.write_counters(
            {
                "pruned": True,
                "pruned_step": step,
                "prune_reason": event.reason,
                "prune_types": ",".join(event.anomaly_types),
            }
        )
        self.add_tag(PRUNED_TAG)
        if alert:
            self.alert(f"{what} pruned at step {step}", event.reason, level="ERROR", force=True)

    def add_tag(self, tag: str) -> None:
        """Add ``tag`` to the run's tags."""
        run = self.run
        if run is None:
            return
        try:
            tags = tuple(run.tags or ())
            if tag not in tags:
                run.tags = tags + (tag,)
        except Exception as exc:  # noqa: BLE001
            self._failed("tags", exc)

    def alert(self, title: str, text: str, *, level: str = "WARN", force: bool = False) -> bool:
        """Send a W&B alert, at most one per ``ALERT_INTERVAL_S`` unless ``force``."""
        run = self.run
        now = time.monotonic()
        if run is None or (not force and now - self._last_alert < ALERT_INTERVAL_S):
            return False
        try:
            run.alert(title=title[:63], text=text, level=level, wait_duration=ALERT_INTERVAL_S)
            self._last_alert = now
            return True
        except Exception as exc:  # noqa: BLE001
            self._failed("alert", exc)
            return False

    def finish(self, exit_code: int) -> None:
        """Finish the run with ``exit_code`` (non-zero marks it failed in W&B); writes first."""
        run = self.run
        if run is None:
            return
        self.close()
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001
            self._failed("finish", exc)
        self.finished = True

    # ------------------------------------------------------------------ warnings
    def _failed(self, what: str, exc: BaseException) -> None:
        # One warning for every W&B failure: a dead connection fails logs, summaries and alerts
        # alike, and one cause deserves one message.
        self._warn_once(
            "error",
            f"W&B {what} failed ({type(exc).__name__}: {exc}); training continues and gradema "
            "keeps tracking drift (events, counters, state_dict()); this warning is shown once "
            "for any W&B error.",
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message)
