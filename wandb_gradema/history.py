"""HistoryWriter: the monitor's rows in a run's history, without disturbing the user's rows.

W&B's history has one step counter and one pending row: every ``run.log()`` that commits ends
the pending row and advances the counter. The monitor logs from inside ``optimizer.step()``,
in the middle of the user's own logging, so committing blindly would split rows the user
builds in two calls (``commit=False`` then a commit) and push the counter past the ``step=``
the user logs next (W&B then drops that row). One writer per run watches every other
``log()`` call on it (an instance patch of the run's history callback) and writes accordingly:

* nobody else logs, or the user logs without ``step=`` and has nothing pending: each monitor
  row is committed as a row of its own, at once;
* the user has keys pending (``commit=False``): monitor rows wait and are committed right after
  the user's commit, never inside the user's row;
* the user logs with ``step=``: the monitor never moves the counter; its rows are merged into
  the user's rows, one row of each watched optimizer per user row. If the monitor has more
  rows than the user has steps, the waiting rows are combined (latest values, window extremes
  and escalation flags kept) and a warning, once, says how to keep them all.

Until the user's style is known (their first ``log()`` call, or ``UNKNOWN_TICKS`` optimizer
steps) the monitor's rows wait. When the last monitor using the writer is removed, rows still
waiting for a user row keep the observer on the run until they are written, at the latest
just before the run finishes. A run finished by the script while a monitor still watches first
lets each monitor write what it has measured (``before_finish``): no queued step is lost.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._patch import InstancePatch

__all__ = ["HistoryWriter", "combine_rows"]

#: Optimizer steps to wait for the user's first ``log()`` before committing rows as our own.
UNKNOWN_TICKS = 10
#: Monitor rows that may wait for user rows before the oldest are combined.
MAX_WAITING = 64
_ATTR = "_gradema_history"


def combine_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One row standing for several: the latest value of each key, the extremes of window keys.

    ``*_max``, ``escalated`` and ``escalation_event`` keep their maximum and ``*_min`` its
    minimum (NaN wins both), so a spike or an escalation in a combined row stays visible.

    Example:
        >>> combine_rows([{"g/score_max": 3.0, "g/loss": 1.0}, {"g/score_max": 1.0, "g/loss": 0.5}])
        {'g/score_max': 3.0, 'g/loss': 0.5}
    """
    out: dict[str, Any] = {}
    for row in rows:
        for key, value in row.items():
            old = out.get(key)
            if not isinstance(value, (int, float)) or not isinstance(old, (int, float)):
                out[key] = value
            elif key.endswith(("_max", "/escalated", "/escalation_event")):
                out[key] = value if value != value or value > old else old
            elif key.endswith("_min"):
                out[key] = value if value != value or value < old else old
            else:
                out[key] = value
    return out


class HistoryWriter:
    """Writes monitor rows into ``run``'s history in the way that fits the user's logging.

    Get the run's writer with ``HistoryWriter.attach(run, ...)`` and give it back with
    ``release()``; monitors on one run share it.

    Args:
        run: the W&B run.
        warn_once: ``(key, message)`` reporter for the one-time warnings.
        on_error: reports an error of W&B or of the writer itself (training carries on).
    """

    def __init__(
        self,
        run: Any,
        warn_once: Callable[[str, str], None],
        on_error: Callable[[str, BaseException], None],
    ) -> None:
        self.run = run
        self._warn_once = warn_once
        self._on_error = on_error
        self._waiting: deque[dict[str, Any]] = deque()
        self._lock = threading.RLock()
        self._writing = False  # our own log() calls pass through the observer untouched
        self.style = "unknown"  # then "own" (nobody else logs), "implicit" or "explicit"
        self._ticks = 0
        self._user_open = False  # the user has keys in W&B's pending row
        self._merged_keys: set[str] = set()  # keys of ours merged into the pending row
        self._committed_own = 0  # rows we committed ourselves
        self._users = 0
        self._closing = False  # every monitor let go: detach once nothing waits
        self.combined = 0  # rows folded into others because the user logs less often
        self._before_finish_calls: list[Callable[[], None]] = []  # one per monitor still watching
        self._patches: list[InstancePatch] = []
        try:
            self._patches.append(InstancePatch(run, "_partial_history_callback", self._observe))
            self._patches.append(InstancePatch(run, "finish", self._before_finish))
        except Exception as exc:  # noqa: BLE001 - an SDK without these: commit as before
            self._undo()
            self.style = "own"
            on_error("history", exc)

    @classmethod
    def attach(
        cls,
        run: Any,
        warn_once: Callable[[str, str], None],
        on_error: Callable[[str, BaseException], None],
        before_finish: Callable[[], None] | None = None,
    ) -> HistoryWriter:
        """The writer of ``run`` (created on first use); call ``release()`` when done.

        ``before_finish`` is called when the run is finished while this user still watches
        (the monitor writes its queued steps and its summary then).
        """
        writer = vars(run).get(_ATTR) if hasattr(run, "__dict__") else None
        if not isinstance(writer, cls) or writer._closing:
            if isinstance(writer, cls):
                writer._finish()  # a new monitor on this run: the old writer's rows go first
            writer = cls(run, warn_once, on_error)
            try:
                setattr(run, _ATTR, writer)
            except Exception:  # noqa: BLE001 - unshared then; still correct for one monitor
                pass
        writer._users += 1
        if before_finish is not None:
            writer._before_finish_calls.append(before_finish)
        return writer

    def release(self, before_finish: Callable[[], None] | None = None) -> None:
        """One monitor is done: the last one writes what waits and takes the patches off."""
        if before_finish in self._before_finish_calls:
            self._before_finish_calls.remove(before_finish)
        self._users -= 1
        if self._users <= 0:
            self.close()

    # ------------------------------------------------------------------ the monitor's side
    def write(self, rows: list[dict[str, Any]]) -> None:
        """Queue ``rows`` (full W&B keys) and write what can be written now."""
        with self._lock:
            self._waiting.extend(rows)
            self._drain()

    def tick(self) -> None:
        """One optimizer step went by: after ``UNKNOWN_TICKS`` with no user log, rows are ours."""
        if self.style != "unknown":
            return
        self._ticks += 1
        if self._ticks >= UNKNOWN_TICKS:
            with self._lock:
                self.style = "own"
                self._drain()

    def close(self) -> None:
        """No more rows will come: write what can be written, and let go of the run.

        Rows that must wait for the user's next row (``step=`` or an open row) keep the
        observer on the run until they are written, at the latest when the run finishes.
        """
        with self._lock:
            self._closing = True
            if self.style == "unknown":
                self.style = "own"
            self._drain()

    def _finish(self) -> None:
        """The run ends: everything waiting is written now (no user row can follow)."""
        with self._lock:
            for row in list(self._waiting):
                if self._merged_keys & row.keys():  # ours is in the pending row: commit it first
                    self._log({}, commit=True)
                    self._merged_keys = set()
                self._log(row, commit=None)
            self._waiting.clear()
            self._detach()

    # ------------------------------------------------------------------ the user's side
    def _observe(
        self, original: Callable[..., Any], data: dict[str, Any], step: int | None = None, commit: bool | None = None
    ) -> Any:
        """The run's history callback: note what the user's ``log()`` does, then write."""
        if self._writing:
            return original(data, step, commit)
        current = getattr(self.run, "_local_step", None)
        rescued = False
        try:
            rescued = self._behind(step, current)
        except Exception as exc:  # noqa: BLE001
            self._on_error("history", exc)
        if rescued:  # a row of its own at the current step: W&B would have dropped it
            self._log(dict(data), commit=True, step=current)
            out = None
        else:
            out = original(data, step, commit)
        try:
            with self._lock:
                self._after_user_log(step, True if rescued else commit, current, rescued)
                self._drain()
        except Exception as exc:  # noqa: BLE001
            self._on_error("history", exc)
        return out

    def _behind(self, step: int | None, current: Any) -> bool:
        """True when the user's ``step=`` is behind rows we committed: keep the row anyway."""
        if step is None or self._committed_own == 0 or not isinstance(current, int) or step >= current:
            return False
        self._warn_once(
            "history-behind",
            f"W&B: your log(step={step}) came after gradema had committed rows of its own up to "
            f"step {current}; W&B would have dropped it, so it was written at step {current} (and "
            "later rows of yours that are behind as well); gradema writes only into your rows from "
            "now on. To keep your step axis, log your step as a metric "
            "(run.define_metric('my_step'); run.log({'my_step': step, ...})).",
        )
        return True

    def _after_user_log(self, step: int | None, commit: bool | None, current: Any, rescued: bool) -> None:
        if step is not None:
            self.style = "explicit"
        elif self.style in ("unknown", "own"):
            self.style = "implicit"
        committed = (step is None and commit is None) or bool(commit)
        new_row = not rescued and step is not None and (not isinstance(current, int) or step > current)
        if committed or new_row:
            self._merged_keys = set()  # the pending row holding ours was committed
        self._user_open = not committed

    def _before_finish(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls, self._before_finish_calls = self._before_finish_calls, []
        for call in calls:  # the monitors still watching write what they have measured
            try:
                call()
            except Exception as exc:  # noqa: BLE001
                self._on_error("history", exc)
        try:
            self._finish()
        except Exception as exc:  # noqa: BLE001
            self._on_error("history", exc)
        return original(*args, **kwargs)

    # ------------------------------------------------------------------ writing
    def _drain(self) -> None:
        if not self._waiting or self.style == "unknown":
            return
        if self.style == "explicit":
            self._merge_waiting()
        elif not self._user_open:
            while self._waiting:
                self._log(self._waiting.popleft(), commit=None)
                self._committed_own += 1
        if len(self._waiting) > MAX_WAITING:
            self._combine_oldest()
        if self._closing and not self._waiting:
            self._detach()

    def _merge_waiting(self) -> None:
        """Merge waiting rows into the pending (user's) row while their keys are not in it yet."""
        while self._waiting and not (self._merged_keys & self._waiting[0].keys()):
            row = self._waiting.popleft()
            self._log(row, commit=False)  # into the user's row: the counter never moves
            self._merged_keys |= row.keys()

    def _combine_oldest(self) -> None:
        keep = MAX_WAITING // 2
        old = [self._waiting.popleft() for _ in range(len(self._waiting) - keep)]
        self._waiting.appendleft(combine_rows(old))
        self.combined += len(old) - 1
        how = (
            "with step=, so gradema can only merge its rows into yours"
            if self.style == "explicit"
            else "and keeps rows open (commit=False) for long, so gradema's rows wait for your commits"
        )
        self._warn_once(
            "history-combined",
            f"W&B: this script logs its own rows less often than gradema does, {how}; waiting gradema "
            "rows are being combined (latest values, window maxima and escalation flags kept). To keep "
            "every gradema row, log without step= (log your step as a metric with run.define_metric) "
            "or pass log_every=N to watch().",
        )

    def _log(self, row: dict[str, Any], *, commit: bool | None, step: int | None = None) -> None:
        self._writing = True
        try:
            if commit is None:
                self.run.log(row)
            else:
                self.run.log(row, step=step, commit=commit)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            self._on_error("log", exc)
        finally:
            self._writing = False

    def _detach(self) -> None:
        """Take the patches off the run and forget it."""
        self._undo()
        if hasattr(self.run, "__dict__") and vars(self.run).get(_ATTR) is self:
            delattr(self.run, _ATTR)

    def _undo(self) -> None:
        while self._patches:
            self._patches.pop().undo()
