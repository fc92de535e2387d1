"""SweepPeers: the sibling judgement wired into one monitor, off the per-step path.

A background thread loads the store's records every ``refresh_s`` seconds, builds the
``Reference`` and swaps it in (one attribute assignment), and writes this run's record when it
has new points (at most every ``write_s`` seconds). The monitor's decision path only feeds
observations to the ``RecordBuilder`` and, on a new point (every few steps), asks the
``SiblingJudge`` against the reference already built: no I/O, no W&B or store call inside
``opt.step()``. A store that fails or hangs never stops training: its errors are swallowed
with one warning, and a hung load only means an older reference.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..errors import warn
from ..escalation import EscalationEvent
from .judge import MIN_SIBLINGS, PATIENCE, SiblingJudge, SiblingVerdict
from .record import RecordBuilder
from .reference import Reference
from .stores import DirectoryStore, SiblingStore, WandbStore

__all__ = ["SIBLINGS_DIR_ENV", "SIBLINGS_ENV", "SweepPeers", "attach_siblings", "auto_peers", "key_config"]

#: Environment variable naming the directory store of the sweep (the offline runner sets it).
SIBLINGS_DIR_ENV = "GRADEMA_SIBLINGS_DIR"
#: ``off`` turns the sweep-aware judgement off.
SIBLINGS_ENV = "GRADEMA_SIBLINGS"
#: The sibling judge's ``patience`` for the default stores (a share of the budget in [0, 1]).
PATIENCE_ENV = "GRADEMA_SIBLINGS_PATIENCE"
_KEY_CONFIG = 24


def key_config(config: Any) -> dict[str, Any]:
    """The run's scalar config values (batch size, LR, ...), at most 24, for the record."""
    try:
        items = dict(config.items()) if hasattr(config, "items") else {}
    except Exception:  # noqa: BLE001 - a config that cannot be read adds nothing
        return {}
    out = {}
    for key, value in items.items():
        if isinstance(value, (int, float, str, bool)) and not str(key).startswith("_"):
            out[str(key)] = value
        if len(out) >= _KEY_CONFIG:
            break
    return out


class SweepPeers:
    """One run's view of its sweep: its record, the siblings' reference, the verdicts.

    Args:
        store: where the sweep's records are (``DirectoryStore``, ``OptunaStore`` or any
            ``SiblingStore``).
        run_id: this run's id in the store.
        config: its key config (plain values).
        min_siblings: see ``SiblingJudge`` (default ``MIN_SIBLINGS``).
        patience: see ``SiblingJudge`` (default ``PATIENCE``: a plateau prunes from 40% of
            the budget its finished siblings ran).
        refresh_s: seconds between loads of the siblings' records.
        write_s: at most one write of this run's record per this many seconds.
        background: False loads once, now, and writes only at ``finish`` (tests, replays).
        live_siblings: compare with siblings still running too (concurrent agents whose
            records the store holds), as far as they got; False: finished siblings only.
    """

    def __init__(
        self,
        store: SiblingStore,
        run_id: str,
        config: Mapping[str, Any] | None = None,
        *,
        min_siblings: int = MIN_SIBLINGS,
        patience: float = PATIENCE,
        refresh_s: float = 30.0,
        write_s: float = 10.0,
        background: bool = True,
        live_siblings: bool = True,
    ) -> None:
        if not isinstance(store, SiblingStore):
            raise TypeError(f"`store` must have load() and save() (a SiblingStore), got {type(store).__name__}.")
        self.store = store
        self.run_id = str(run_id)
        self.builder = RecordBuilder(self.run_id, dict(config or {}))
        self.judge = SiblingJudge(min_siblings=min_siblings, patience=patience)
        self.reference: Reference | None = None
        self.latest: SiblingVerdict | None = None
        self.fired: SiblingVerdict | None = None
        self.live_siblings = live_siblings
        self.refresh_s = refresh_s
        self.write_s = write_s
        self._dirty = False
        self._warned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False
        if background:
            self._thread = threading.Thread(target=self._loop, name="gradema-siblings", daemon=True)
            self._thread.start()
        else:
            self.refresh()

    # ------------------------------------------------------------------ background
    def refresh(self) -> None:
        """Load the records and swap in a new reference (errors: one warning)."""
        try:
            self.reference = Reference(self.store.load(), exclude=self.run_id, live=self.live_siblings)
        except Exception as exc:  # noqa: BLE001 - a failing store never stops training
            self._warn(exc)

    def _loop(self) -> None:
        waited = 0.0
        self.refresh()
        while not self._stop.wait(min(self.write_s, self.refresh_s)):
            waited += min(self.write_s, self.refresh_s)
            if self._dirty:
                self._save()
            if waited >= self.refresh_s:
                waited = 0.0
                self.refresh()

    def _save(self) -> None:
        self._dirty = False
        try:
            self.store.save(self.builder.record)
        except Exception as exc:  # noqa: BLE001 - a failing store never stops training
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            warn(f"wandb_gradema: the sibling store {self.store!r} failed ({exc!r}); runs are judged alone meanwhile.")

    # ------------------------------------------------------------------ the decision path
    def observe(self, step: int, loss: float | None, norm: float, active: float, lr: float | None) -> EscalationEvent | None:
        """Feed one judged step; an escalation (confirmed) the first time the siblings prune."""
        point = self.builder.observe(step, loss, norm, active, lr)
        if point is None:
            return None
        self._dirty = True
        verdict = self.judge.check(point, self.reference)
        self.latest = verdict
        if verdict is None or not verdict.prune or self.fired is not None:
            return None
        self.fired = verdict
        return EscalationEvent(
            step=step,
            reasons=(f"Behind its healthy siblings ({verdict.cause}): {verdict.reason}",),
            anomaly_types=(f"siblings_{verdict.cause}",),
            score=verdict.z,
            first_anomaly_step=self.judge.streak_from if self.judge.streak_from is not None else step,
            confirmed=True,
        )

    def review(self, event: EscalationEvent) -> EscalationEvent:
        """The reverse check: a per-run escalation that healthy siblings showed at the same step
        and recovered from is not prune-grade (confirmed -> unconfirmed, with the reason why)."""
        if not event.confirmed or self.reference is None or event.anomaly_types[:1] == ("siblings_behind",):
            return event
        seen = self.judge.seen_and_recovered(event, self.builder.record.points, self.reference)
        if not seen:
            return event
        names = ", ".join(seen[:6]) + (f" and {len(seen) - 6} more" if len(seen) > 6 else "")
        note = f"Not prune-grade: healthy siblings showed the same at step {event.step} and recovered ({names})."
        return replace(event, confirmed=False, reasons=(*event.reasons, note))

    def chart(self) -> dict[str, float]:
        """The run against its siblings for a logged row: rank (0 best) and z, when judged."""
        v = self.latest
        if v is None:
            return {}
        return {"siblings/rank": v.rank, "siblings/z": v.z if math.isfinite(v.z) else 1e6, "siblings/n": len(v.compared)}

    def summary(self) -> dict[str, Any]:
        """What the run's summary says about the comparison (unprefixed names)."""
        v = self.fired or self.latest
        out: dict[str, Any] = {"siblings_healthy": len(self.reference) if self.reference is not None else 0}
        if v is not None:
            out["siblings_compared"] = ", ".join(v.compared)
            out["siblings_step"] = v.step
        if self.fired is not None:
            out["prune_cause"] = self.fired.cause
        return out

    # ------------------------------------------------------------------ the end
    def finish(self, state: str, final_metric: float | None = None, cause: str = "") -> None:
        """Write the final record (once): ``state`` is ``finished``, ``pruned`` or ``failed``."""
        if self._finished:
            return
        self._finished = True
        self._stop.set()
        record = self.builder.record
        record.state = state
        record.final_metric = final_metric if final_metric is None or math.isfinite(final_metric) else None
        record.cause = cause or (self.fired.cause if self.fired is not None else "")
        self._save()

    def close(self) -> None:
        """Stop the background thread without writing an end state."""
        self._stop.set()


def attach_siblings(monitor: Any, store: SiblingStore, run_id: str | None = None, **kwargs: Any) -> SweepPeers:
    """Judge ``monitor``'s run against the siblings in ``store`` from now on; returns the peers.

    ``run_id`` defaults to the W&B run's id. Other keywords go to ``SweepPeers``.
    """
    run = getattr(monitor.sink, "run", None)
    if run_id is None:
        run_id = getattr(run, "id", None) or os.environ.get("WANDB_RUN_ID")
    if not run_id:
        raise ValueError("`run_id` is needed when the monitor has no W&B run to take it from.")
    config = kwargs.pop("config", None)
    if config is None and run is not None:
        config = key_config(getattr(run, "config", None))
    peers = SweepPeers(store, run_id, config, **kwargs)
    monitor.decisions.peers = peers
    return peers


def auto_peers(sink: Any) -> SweepPeers | None:
    """The default inside a sweep: a directory store when ``GRADEMA_SIBLINGS_DIR`` is set, else
    W&B itself when the run is online (``GRADEMA_SIBLINGS=off`` turns both off)."""
    if os.environ.get(SIBLINGS_ENV, "").lower() in ("off", "0", "false"):
        return None
    from .. import _dist

    if _dist.is_distributed() and not _dist.is_main_process():
        return None  # rank 0 judges; its sibling escalations are agreed on by every rank
    path = os.environ.get(SIBLINGS_DIR_ENV)
    if not path and not os.environ.get("WANDB_SWEEP_ID"):
        return None  # not under a sweep agent: nothing to compare with (and no run lookup)
    run = sink.run
    in_sweep = bool(getattr(run, "sweep_id", None)) if run is not None else bool(os.environ.get("WANDB_SWEEP_ID"))
    run_id = getattr(run, "id", None) if run is not None else None
    run_id = run_id or os.environ.get("WANDB_RUN_ID")
    if not in_sweep or not run_id:
        return None
    config = key_config(getattr(run, "config", None)) if run is not None else {}
    patience = _patience_from_env()
    if path:
        return SweepPeers(DirectoryStore(path), run_id, config, patience=patience)
    if run is None or getattr(run, "offline", True):
        return None
    store = WandbStore(f"{run.entity}/{run.project}/{run.sweep_id}", run=run)
    return SweepPeers(store, run_id, config, refresh_s=120.0, patience=patience)


def _patience_from_env() -> float:
    """``GRADEMA_SIBLINGS_PATIENCE`` as a share in [0, 1] (``PATIENCE`` when unset)."""
    text = os.environ.get(PATIENCE_ENV, "").strip()
    if not text:
        return PATIENCE
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise ValueError(f"`{PATIENCE_ENV}` must be a share of the sweep's budget in [0, 1] (e.g. 0.4), got {text!r}.")
    return value
