"""HistoryWriter: the monitor's rows in a run's history, without moving the user's rows.

W&B's history has one step counter (``_step``) and one pending row: a ``run.log()`` that
commits ends the pending row and advances the counter, ``step=`` ahead of the counter opens a
new row there, ``step=`` behind it is dropped. The monitor logs from inside
``optimizer.step()``, in the middle of the user's own logging: had it committed rows of its
own, every later user row would sit at another ``_step`` (or be dropped). So, one writer per
run (shared by the monitors on it, kept in a module registry: a run takes no new attributes):

* while the user logs (any style: ``step=``, plain, ``commit=False``), the monitor never moves
  the counter. A monitor row goes into the user's pending row when that row is not behind it
  (its ``_step`` is at least the monitor row's ``gradema/step``), else into the next row the
  user opens (added to that ``log()`` call itself), one row of each watched optimizer per user
  row. Every ``gradema/*`` key is charted against ``gradema/step`` (``define_metric``), which
  names the optimizer step of the values beside the user's. If the user logs less often than
  the monitor, waiting rows are combined (latest values, window extremes and escalation flags
  kept) and a warning, once, says how to keep them all;
* nobody else logs (none in the first ``UNKNOWN_TICKS`` optimizer steps): the monitor writes
  rows of its own at ``_step`` = its optimizer step (``step=``, left pending), so ``step=``
  logging that starts late at the optimizer step lands where it would have without us. A user
  ``step=`` behind rows we wrote is moved (every later one by the same offset) and warned once.

The user's calls are seen through the run's history callback (the one private hook: checked
before use; without it the writer falls back to merging into the user's rows only, latest
values winning, and warns once naming the wandb version). The end of the run is seen through
W&B's own teardown hooks (``finish()``, ``wandb.finish()`` and the end of a ``with
wandb.init()`` block alike) and an ``atexit`` hook (a script that ends without ``finish()``):
each monitor still watching writes every row and then its summary (a row committed after a
summary value would overwrite it); at exit the run is then finished with the exit code W&B's own
exit hooks recorded (W&B's exit hook does not wait for what was just logged). Writes are serialised by a lock; each thread knows its own writes.
"""

from __future__ import annotations

import atexit
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ._patch import InstancePatch

__all__ = ["HistoryWriter", "combine_rows"]

#: Optimizer steps to wait for the user's first ``log()`` before writing rows of our own.
UNKNOWN_TICKS = 10
#: Monitor rows that may wait for user rows before the oldest are combined.
MAX_WAITING = 64
#: The writer of each live run, by ``id(run)`` (dropped when the run is finished or collected).
_WRITERS: dict[int, HistoryWriter] = {}
_REGISTRY_LOCK = threading.Lock()
#: Runs whose teardown hook is installed (once per run, however many writers come and go).
_HOOKED: weakref.WeakSet[Any] = weakref.WeakSet()
#: The run's history callback (private: the one way to see the user's log() calls; checked).
_CALLBACK = "_partial_history_callback"
#: The run's teardown hook list (private: run by finish(), wandb.finish() and a with block; checked).
_TEARDOWN = "_teardown_hooks"


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


def _wandb_version() -> str:
    return str(getattr(sys.modules.get("wandb"), "__version__", "unknown"))


def _row_step(row: dict[str, Any]) -> int | None:
    """The optimizer step of a monitor row (its ``*/step`` key)."""
    for key, value in row.items():
        if key.endswith("/step") and isinstance(value, int):
            return value
    return None


def _section(row: dict[str, Any]) -> str:
    """The chart section of a monitor row (``gradema`` or ``gradema/<name>``)."""
    return next((k[: -len("/step")] for k in row if k.endswith("/step")), "")


def _special(row: dict[str, Any]) -> bool:
    """An escalation's row or a telemetry row (per-layer norms): never folded into others."""
    return any(
        (k.endswith("/escalation_event") and v == 1) or "/layers/" in k for k, v in row.items()
    )


def _event(row: dict[str, Any]) -> bool:
    """The row of the step an escalation fired on."""
    return any(k.endswith("/escalation_event") and v == 1 for k, v in row.items())


def _at_exit() -> None:
    """The interpreter exits (a script that never called ``finish()``): write what waits, then
    finish the run as W&B would (its exit code from W&B's own exit hooks)."""
    with _REGISTRY_LOCK:
        writers = list(_WRITERS.values())
    for writer in writers:
        writer.run_ends()
        # W&B's own exit hook ends the run in its service without waiting for what was just
        # logged; finish() waits for it, with the exit code W&B's exit hooks recorded.
        try:
            if getattr(writer.run, "_is_finished", False) is not True:
                writer.run.finish()
        except Exception:  # noqa: BLE001 - a dead service: nothing more to do
            pass


def _at_teardown(key: int) -> None:
    """W&B's teardown hook of one run (``finish()``, ``wandb.finish()``, a ``with`` block's end)."""
    writer = _WRITERS.get(key)
    if writer is not None:
        writer.run_ends()


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
        self._local = threading.local()  # .writing: this thread is inside one of our log() calls
        self.style = "unknown"  # then "own" (nobody else logs) or "user" (the user logs)
        self._ticks = 0
        self._counter = self._read_counter(run)  # W&B's step of the next log()
        self._open = False  # W&B holds a pending row (not committed yet)
        self._user_row = False  # ... and the user has keys in it
        self._pending_keys: set[str] = set()  # keys of ours in the pending row
        self._own_rows = 0  # rows we opened ourselves
        self._offset = 0  # added to the user's step= once their steps fell behind our rows
        self._merged_on_open = False  # our rows rode in the user's current call
        self._users = 0
        self._closing = False  # every monitor let go: detach once nothing waits
        self._ended = False
        self.combined = 0  # rows folded into others because the user logs less often
        self.merge_only = False  # no history callback on this SDK: latest values win
        self._before_finish_calls: list[Callable[[], None]] = []  # one per monitor still watching
        self._patches: list[InstancePatch] = []
        if callable(getattr(run, _CALLBACK, None)):
            try:
                self._patches.append(InstancePatch(run, _CALLBACK, self._observe))
            except Exception as exc:  # noqa: BLE001
                on_error("history", exc)
        if not self._patches:
            self.merge_only = True
            warn_once(
                "history-fallback",
                f"W&B: wandb {_wandb_version()} has no history callback gradema can observe, so it "
                "cannot tell where your rows go; it writes its rows into yours only (commit=False, "
                "the latest values of a step win) and never moves your _step. Install a supported "
                "wandb (see the README) to keep every gradema row.",
            )

    @staticmethod
    def _read_counter(run: Any) -> int:
        """W&B's current step: the public ``run.step``, else what the run started at."""
        for read in (lambda: run.step, lambda: run._local_step, lambda: run.starting_step):
            try:
                value = read()
            except Exception:  # noqa: BLE001 - the next way of reading it
                continue
            if isinstance(value, int):
                return value
        return 0

    @classmethod
    def of(cls, run: Any) -> HistoryWriter | None:
        """The writer currently attached to ``run``, or None."""
        return _WRITERS.get(id(run))

    @classmethod
    def attach(
        cls,
        run: Any,
        warn_once: Callable[[str, str], None],
        on_error: Callable[[str, BaseException], None],
        before_finish: Callable[[], None] | None = None,
    ) -> HistoryWriter:
        """The writer of ``run`` (created on first use); call ``release()`` when done.

        ``before_finish`` is called when the run ends while this user still watches
        (the monitor writes its queued steps and its summary then).
        """
        with _REGISTRY_LOCK:
            writer = _WRITERS.get(id(run))
            if writer is None or writer.run is not run or writer._ended:
                writer = cls(run, warn_once, on_error)
                _WRITERS[id(run)] = writer
                atexit.unregister(_at_exit)  # on top of W&B's own exit hook: ours runs first
                atexit.register(_at_exit)
                _install_teardown(run, warn_once)
            with writer._lock:
                writer._closing = False
                writer._users += 1
                if before_finish is not None:
                    writer._before_finish_calls.append(before_finish)
        return writer

    def release(self, before_finish: Callable[[], None] | None = None) -> None:
        """One monitor is done: the last one writes what it can and lets go of the run."""
        with self._lock:
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
        with self._lock:
            self._ticks += 1
            if self._ticks >= UNKNOWN_TICKS and self.style == "unknown":
                self.style = "own"
                self._drain()

    def close(self) -> None:
        """No more rows will come: write what can be written, and let go of the run.

        Rows that must wait for the user's next row keep the observer on the run until they
        are written, at the latest when the run ends.
        """
        with self._lock:
            self._closing = True
            if self.style == "unknown":
                self.style = "own"
            self._drain()

    def run_ends(self) -> None:
        """The run is being finished (or the interpreter exits): every monitor still watching
        writes what it has measured, then everything waiting is written; the writer detaches."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            calls, self._before_finish_calls = self._before_finish_calls, []
        for call in calls:
            try:
                call()
            except Exception as exc:  # noqa: BLE001
                self._on_error("history", exc)
        try:
            self.settle(final=True)
        except Exception as exc:  # noqa: BLE001
            self._on_error("history", exc)
        finally:
            self._detach()

    def settle(self, *, final: bool) -> None:
        """Commit the pending row when it is ours alone (``final``: the run ends, so first write
        everything waiting and commit whatever is pending). Summaries are written after this:
        W&B lets a history row committed later overwrite a summary value of the same key."""
        with self._lock:
            if final:
                self._write_all()
            if self._open and (final or not self._user_row):
                self._commit()

    def _write_all(self) -> None:
        with self._lock:
            if self.merge_only:
                self._drain()
                return
            if self._waiting and self._open:
                self._merge_into_pending(any_step=True)
            while self._waiting:
                self._write_own(self._waiting.popleft())

    def _commit(self) -> None:
        self._local.writing = True
        try:
            self.run.log({}, commit=True)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            self._on_error("log", exc)
            return
        finally:
            self._local.writing = False
        self._counter += 1
        self._open = self._user_row = False
        self._pending_keys = set()

    # ------------------------------------------------------------------ the user's side
    def _observe(
        self, original: Callable[..., Any], data: dict[str, Any], step: int | None = None, commit: bool | None = None
    ) -> Any:
        """The run's history callback: place ours beside the user's ``log()``, then pass it on."""
        if getattr(self._local, "writing", False):
            return original(data, step, commit)
        with self._lock:
            try:
                data, step = self._before_user_log(data, step)
            except Exception as exc:  # noqa: BLE001 - the user's row goes through untouched
                self._on_error("history", exc)
            out = original(data, step, commit)
            try:
                self._advance(step, commit, user=True)
                self._drain()
            except Exception as exc:  # noqa: BLE001
                self._on_error("history", exc)
        return out

    def _before_user_log(self, data: dict[str, Any], step: int | None) -> tuple[dict[str, Any], int | None]:
        """The user's call as it goes to W&B: their step moved if our rows got ahead of it, and
        our waiting rows added when the call opens a new row."""
        if self.style != "user":
            if self._own_rows and step is None:
                self._warn_once(
                    "history-late",
                    f"W&B: your first log() came after gradema had written {self._own_rows} rows of its "
                    f"own (it waits {UNKNOWN_TICKS} optimizer steps for yours), so your rows start at "
                    f"_step {self._counter}; gradema writes only into your rows from now on. Log "
                    "something before training starts (or log with step=) to keep _step exactly as "
                    "without gradema.",
                )
            self.style = "user"
        if step is not None:
            asked = step
            step += self._offset
            if step < self._counter and self._own_rows:
                self._offset += self._counter - step
                step = self._counter
                self._warn_once(
                    "history-behind",
                    f"W&B: your log(step={asked}) came after gradema had written rows of its own up to "
                    f"step {self._counter}; W&B would have dropped it, so it and every later step= of "
                    f"yours are moved by {self._offset}. To keep your step axis, log your step as a "
                    "metric (run.define_metric('my_step'); run.log({'my_step': step, ...})), or log "
                    "something before training starts.",
                )
        dropped = step is not None and step < self._counter
        opens = not dropped and (step is not None and step > self._counter or not self._open)
        if opens and self._waiting:
            merged: dict[str, Any] = {}
            while self._waiting and not (self._waiting[0].keys() & (merged.keys() | data.keys())):
                merged.update(self._waiting.popleft())
            if merged:
                data = {**data, **merged}
                self._pending_keys = set(merged)
                self._open = False  # a fresh row: see _advance
                self._merged_on_open = True
        return data, step

    def _advance(self, step: int | None, commit: bool | None, *, user: bool) -> None:
        """W&B's own bookkeeping of one ``log()`` call (``Run._log``): the counter, the pending row."""
        dropped = step is not None and step < self._counter  # W&B drops the data, not the commit
        if step is not None and step > self._counter:
            self._counter = step
            self._open = False
        if not self._open and not self._merged_on_open:
            self._pending_keys = set()  # a new row
            self._user_row = False
        if user and not dropped:
            self._user_row = True
        self._merged_on_open = False
        if (step is None and commit is None) or commit:
            self._counter += 1
            self._open = False
            self._user_row = False
            self._pending_keys = set()
        elif not dropped:
            self._open = True

    # ------------------------------------------------------------------ writing
    def _drain(self) -> None:
        if not self._waiting:
            if self._closing:
                self._detach()
            return
        if self.merge_only:
            while self._waiting:
                self._log(self._waiting.popleft(), commit=False)
        elif self.style == "own":
            while self._waiting:
                self._write_own(self._waiting.popleft())
        elif self.style == "user" and self._open:
            self._merge_into_pending(any_step=False)
        if len(self._waiting) > MAX_WAITING:
            self._combine_oldest()
        if self._closing and not self._waiting and not self._ended:
            self._detach()

    def _merge_into_pending(self, *, any_step: bool) -> None:
        """Waiting rows into the pending row while their keys are free and the row is not behind
        them (a row of step s never goes into the user's row of an earlier step)."""
        while self._waiting and not (self._pending_keys & self._waiting[0].keys()):
            row_step = _row_step(self._waiting[0])
            if not any_step and row_step is not None and self._counter < row_step:
                break
            row = self._waiting.popleft()
            self._log(row, commit=False)
            self._pending_keys |= row.keys()

    def _write_own(self, row: dict[str, Any]) -> None:
        """A row of our own at ``_step`` = its optimizer step (or the next free step), left
        pending so that a user ``step=`` at that step joins it."""
        target = max(_row_step(row) or 0, self._counter)
        if self._open and target == self._counter and self._pending_keys & row.keys():
            target += 1
        self._log(row, commit=False, step=target)
        self._own_rows += 1

    def _combine_oldest(self) -> None:
        """Fold the oldest waiting rows into one per chart section, at the place of the latest
        of them; escalation and telemetry rows (per-layer norms) are kept whole (telemetry rows
        only while they are not most of what waits: the queue must shrink)."""
        keep = MAX_WAITING // 2
        old = [self._waiting.popleft() for _ in range(len(self._waiting) - keep)]
        special = _special if sum(map(_special, old)) < len(old) // 2 else _event
        ordinary: dict[str, list[dict[str, Any]]] = {}
        for row in old:
            if not special(row):
                ordinary.setdefault(_section(row), []).append(row)
        last = {id(rows[-1]): section for section, rows in ordinary.items()}
        out = []
        for row in old:
            if special(row):
                out.append(row)
            elif id(row) in last:
                out.append(combine_rows(ordinary[last[id(row)]]))
        self._waiting.extendleft(reversed(out))
        self.combined += len(old) - len(out)
        self._warn_once(
            "history-combined",
            "W&B: this script logs its own rows less often than gradema does; gradema never moves "
            "your rows, so its rows go into yours, and the waiting ones are being combined (latest "
            "values and window maxima; escalation and telemetry rows kept whole). To keep every gradema row, log a row "
            "per optimizer step, or pass log_every=N to watch() with N your logging interval.",
        )

    def _log(self, row: dict[str, Any], *, commit: bool, step: int | None = None) -> None:
        self._local.writing = True
        try:
            self.run.log(row, step=step, commit=commit)
        except Exception as exc:  # noqa: BLE001 - W&B must never stop training
            self._on_error("log", exc)
            return
        finally:
            self._local.writing = False
        if step is not None and step > self._counter:
            self._counter = step
            self._open = False
        if not self._open:  # a new row
            self._pending_keys = set()
            self._user_row = False
        self._open = True
        self._pending_keys |= row.keys()

    def _detach(self) -> None:
        """Take the patch off the run and forget it."""
        while self._patches:
            self._patches.pop().undo()
        with _REGISTRY_LOCK:
            if _WRITERS.get(id(self.run)) is self:
                del _WRITERS[id(self.run)]


def _install_teardown(run: Any, warn_once: Callable[[str, str], None]) -> None:
    """W&B's teardown hook (run before the run is marked finished), once per run.

    ``finish()``, ``wandb.finish()`` and the end of a ``with wandb.init()`` block all run it.
    Without it (another wandb), ``finish()`` is wrapped instead and a ``with`` block's end is
    caught only by the exit hook; warned once.
    """
    if run in _HOOKED:
        return
    key = id(run)
    weakref.finalize(run, _WRITERS.pop, key, None).atexit = False  # at exit our own hook needs it
    try:
        from wandb.sdk.wandb_run import TeardownHook, TeardownStage

        hooks = getattr(run, _TEARDOWN)
        if not isinstance(hooks, list):
            raise TypeError("no teardown hook list")
        hooks.append(TeardownHook(call=lambda: _at_teardown(key), stage=TeardownStage.EARLY))
    except Exception:  # noqa: BLE001 - an SDK without teardown hooks

        def finish(original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            _at_teardown(key)
            return original(*args, **kwargs)

        try:
            InstancePatch(run, "finish", finish)
        except Exception:  # noqa: BLE001
            pass
        warn_once(
            "history-teardown",
            f"W&B: wandb {_wandb_version()} has no teardown hooks gradema can use: rows measured "
            "after the last decision step reach the run on finish() or at exit, but not at the end "
            "of a `with wandb.init()` block; call monitor.remove() before it ends.",
        )
    _HOOKED.add(run)
