"""Decisions: the queue judged, the ranks agreed, escalations recorded and acted on.

A decision step (every ``sync_every`` optimizer steps, the same on every rank) reads the queue
back once, judges each step in order (``StepJudge``), agrees across ranks with one
all-reduce (``_dist``), records the escalations (``events``, W&B summary and alert), writes
the rows the logging cadence picked and acts (``EscalationActions``). Reading back at any other
time (``read``: ``state_dict()``, ``last``, ``flush()``) judges and writes the rows without
deciding: escalations it finds wait for the next decision step. (Writing the rows there keeps a
checkpoint clean: everything judged before it is in the run, so a run resumed from it logs
exactly what follows.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, cast

from . import _dist
from .actions import EscalationActions
from .checkpoint import event_from_state
from .errors import RunPruned, warn
from .escalation import EscalationEvent, EscalationPolicy
from .guard import InternalErrors
from .intake import StepIntake
from .judge import Row, StepJudge
from .readback import StepValues, read_back
from .wandb_sink import WandbSink

__all__ = ["Decisions"]


class Decisions:
    """The escalations and rows of one monitor, from judged to decided to acted on.

    ``events`` are the decided escalations; escalations judged since the last decision step
    wait in ``undecided_events`` (they travel in the monitor's state), rows in
    ``undecided_rows`` until they are written (at the decision step, or any earlier read).
    """

    def __init__(
        self,
        intake: StepIntake,
        judge: StepJudge,
        policy: EscalationPolicy,
        sink: WandbSink,
        actions: EscalationActions,
        guard: InternalErrors,
        *,
        distributed: bool,
    ) -> None:
        self.intake, self.judge, self.policy = intake, judge, policy
        self.sink, self.actions, self.guard = sink, actions, guard
        self.distributed = distributed
        self.events: list[EscalationEvent] = []
        self.undecided_events: list[EscalationEvent] = []
        self.undecided_rows: list[Row] = []
        self.last_logged = -1
        #: The sweep-aware judgement (``wandb_gradema.siblings.SweepPeers``), or None.
        self.peers: Any = None

    def decide(self, stop_step: int, ticks: int | None = None) -> None:
        """A decision step: judge the queue, agree across ranks (one all-reduce), record, act.

        ``stop_step`` is the step a prune reports as the one training stopped at; ``ticks`` (the
        optimizer steps seen) is checked equal on every rank in the same all-reduce.
        """
        self.guard(self.judge_queue)
        local = self.undecided_events
        if local:
            self.undecided_events = []
            if self.peers is not None:  # what healthy siblings showed and recovered from is not prune-grade
                local = [self.guard(self.peers.review, e) or e for e in local]
        if self.distributed:  # outside the guard: a failing collective raises (swallowed, it would hang the others)
            events = _dist.agree_events(local, ticks)
            for event in events:  # the same cooldown and telemetry windows on every rank
                self.policy.adopt(event.step, confirmed=event.confirmed)
        else:
            events = local
        if events or self.undecided_rows or self.guard.count != self.guard.written:
            self.guard(self.record, events)  # (a step with nothing to record costs nothing here)
        for event in events:
            try:
                self.actions.act(event, stop_step)
            except RunPruned:
                if self.peers is not None:  # the sweep's record of this run: pruned, and why
                    self.guard(self.peers.finish, "pruned", None, event.anomaly_types[0] if event.anomaly_types else "")
                raise
        if self.judge.params_nonfinite_since >= 0:  # (``params_notice``'s own first test: most steps skip it)
            self.guard(self.params_notice)

    def read(self) -> None:
        """Outside a decision step: judge the queue and write the rows, decide nothing."""
        self.guard(self.judge_queue)
        self.guard(self.write_rows)

    def judge_queue(self) -> None:
        """Read the queue back (one sync) and judge each step; nothing is decided here."""
        intake = self.intake
        queue = intake.queue
        if not queue:
            return
        intake.queue = []  # ``take_queue``, inlined (every step on the host path)
        names = intake.watched.names
        sink = self.sink
        # The run is looked up only when a row is due (W&B lookups cost more than judging), and
        # once per queue until one is attached (attach, or warn once; no run: no rows).
        logging: bool | Callable[[], bool] = sink.live() if sink.unattached else sink.live
        # The host path's one step of host values needs no read-back (``read_back``'s first case)
        steps = cast("list[StepValues]", queue) if len(queue) == 1 and type(queue[0]) is StepValues else read_back(queue)
        for values in steps:
            event, row = self.judge.judge(values, names, logging=logging)
            if event is not None:
                self.undecided_events.append(event)
            if self.peers is not None and values.row is not None and self.judge.last is not None:
                event = self._against_siblings(values.step, row)
                if event is not None:
                    self.undecided_events.append(event)
            if row is not None:
                self.undecided_rows.append(row)

    def _against_siblings(self, step: int, row: Row | None) -> EscalationEvent | None:
        """Feed the judged step to the sibling judgement (no I/O); its chart values join the row."""
        inputs = self.judge.last_inputs()
        if inputs is None or inputs[0] != step:
            return None
        event: EscalationEvent | None = self.peers.observe(*inputs)
        if row is not None:
            row[1].update(self.peers.chart())
        return event

    def record(self, events: list[EscalationEvent]) -> None:
        """Record decided escalations and write the rows decided with them."""
        self.events.extend(events)
        self.judge.aggregator.counters["escalations"] += len(events)
        self._record_nonfinite(events)
        for event in events:
            self.actions.announce(event, self.events)
        self.write_rows()
        errors = self.guard.unwritten()
        if errors is not None:
            self.sink.write_counters({"internal_errors": errors})

    def _record_nonfinite(self, events: list[EscalationEvent]) -> None:
        """The summary of a non-finite incident: where it began (``nonfinite_step``,
        ``nonfinite_source``; the latest incident's)."""
        unrecorded = self.judge.unrecorded
        for event in events:
            source = unrecorded.pop(event.step, None)
            if source is not None:  # the first step of a non-finite incident (the latest wins)
                self.sink.write_counters({"nonfinite_step": event.step, "nonfinite_source": source})

    def params_notice(self) -> None:
        """Once the weights are non-finite (``StepJudge.params_nonfinite_since``): say so once, in
        the summary and (unless ``on_escalation`` is the user's callable) a warning, instead of a
        new escalation every ``cooldown_steps``."""
        since = self.judge.params_nonfinite_since
        if since < 0 or self.judge.params_told:
            return
        self.judge.params_told = True
        self.sink.write_counters({"params_nonfinite_since": since})
        if callable(self.actions.on_escalation):
            return  # the user's handler decides what to say (it had the incident's event)
        warn(
            f"wandb_gradema: parameters non-finite since step {since}: every step since has had a "
            "non-finite loss or gradient and the weights themselves are now NaN/Inf, so training "
            "cannot recover (restore a checkpoint from before it). Later non-finite steps are counted "
            "(gradema/nonfinite_steps), not escalated again."
        )

    def write_rows(self) -> None:
        """Write the rows judged so far (the logging cadence picked them)."""
        rows, self.undecided_rows = self.undecided_rows, []
        if not rows:
            return
        started = time.perf_counter()
        if self.sink.log_rows(rows):
            self.last_logged = rows[-1][0]
            self.judge.cadence.measured(time.perf_counter() - started, len(rows))
            if self.actions.penalty is not None:  # remember the sweep metric's first finite value
                self.actions.penalty.observe(self.sink.run)

    def at_removal(self) -> None:
        """The end of watching: judge what is queued, record and report what it finds without
        acting on it, and log the last row."""
        self.guard(self.judge_queue)
        events, self.undecided_events = self.undecided_events, []
        self.guard(self.record, events)
        for event in events:
            self.guard(self.actions.found_at_removal, event)
        self.guard(self.params_notice)
        self.guard(self.log_last)

    def log_last(self) -> None:
        """With the adaptive cadence, the last step gets its row so charts reach the end.

        (A fixed ``log_every`` is kept exactly, so a resumed run logs what an uninterrupted one
        would.)
        """
        last = self.judge.last
        if self.judge.cadence.log_every is not None or last is None or last[0].step == self.last_logged:
            return
        row = self.judge.last_row()
        if row is not None and self.sink.log_rows([row]):
            self.last_logged = row[0]

    def state_dict(self) -> dict[str, Any]:
        """Decided events and what waits for the next decision step, as plain values."""
        return {
            "events": [asdict(e) for e in self.events],
            "undecided_events": [asdict(e) for e in self.undecided_events],
            "undecided_rows": [[step, dict(row)] for step, row in self.undecided_rows],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.events = [event_from_state(e) for e in state["events"]]
        self.undecided_events = [event_from_state(e) for e in state["undecided_events"]]
        self.undecided_rows = [(int(step), dict(row)) for step, row in state["undecided_rows"]]
