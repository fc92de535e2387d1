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
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from . import _dist
from .actions import EscalationActions
from .checkpoint import event_from_state
from .escalation import EscalationEvent, EscalationPolicy
from .guard import InternalErrors
from .intake import StepIntake
from .judge import Row, StepJudge
from .readback import read_back
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

    def decide(self, stop_step: int, ticks: int | None = None) -> None:
        """A decision step: judge the queue, agree across ranks (one all-reduce), record, act.

        ``stop_step`` is the step a prune reports as the one training stopped at; ``ticks`` (the
        optimizer steps seen) is checked equal on every rank in the same all-reduce.
        """
        self.guard(self.judge_queue)
        local, self.undecided_events = self.undecided_events, []
        if self.distributed:  # outside the guard: a failing collective raises (swallowed, it would hang the others)
            events = _dist.agree_events(local, ticks)
            for event in events:  # the same cooldown and telemetry windows on every rank
                self.policy.adopt(event.step, confirmed=event.confirmed)
        else:
            events = local
        self.guard(self.record, events)
        for event in events:
            self.actions.act(event, stop_step)

    def read(self) -> None:
        """Outside a decision step: judge the queue and write the rows, decide nothing."""
        self.guard(self.judge_queue)
        self.guard(self.write_rows)

    def judge_queue(self) -> None:
        """Read the queue back (one sync) and judge each step; nothing is decided here."""
        queue = self.intake.take_queue()
        if not queue:
            return
        logging = self.sink.run is not None
        names = self.intake.watched.names
        for values in read_back(queue):
            event, row = self.judge.judge(values, names, logging=logging)
            if event is not None:
                self.undecided_events.append(event)
            if row is not None:
                self.undecided_rows.append(row)

    def record(self, events: list[EscalationEvent]) -> None:
        """Record decided escalations and write the rows decided with them."""
        self.events.extend(events)
        self.judge.aggregator.counters["escalations"] += len(events)
        for event in events:
            self.actions.announce(event, self.events)
        self.write_rows()
        errors = self.guard.unwritten()
        if errors is not None:
            self.sink.write_counters({"internal_errors": errors})

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
