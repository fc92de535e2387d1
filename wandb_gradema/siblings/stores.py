"""Where a sweep's sibling records live: one small interface, stores where sweeps already are.

``WandbStore``: each run's record in its W&B summary (rewritten now and then while it runs,
at its end for good), the sweep's runs read through the public API (a sweep spread over machines and agents, nothing to set up).
``DirectoryStore``: one JSON file per run in a shared directory (the offline runner's default;
any agents that share a filesystem). Writes go to a temporary file in the same directory, then
``os.replace``: a reader sees the old record or the new one, never half of one, and concurrent
writers of different runs never touch each other's files. ``OptunaStore``: the records ride in
the trials' user attributes, in the study's own storage (how Optuna runs distributed).

Stores may be slow or fail: ``SweepPeers`` calls them only from a background thread and at the
end of a run, and swallows their errors.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .record import SiblingRecord

__all__ = ["SUMMARY_KEY", "TRIAL_ATTR", "DirectoryStore", "OptunaStore", "SiblingStore", "WandbStore"]

#: The Optuna trial user attribute holding a trial's sibling record.
TRIAL_ATTR = "gradema_sibling"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@runtime_checkable
class SiblingStore(Protocol):
    """What the sweep-aware judgement needs from a store."""

    def load(self) -> list[SiblingRecord]:
        """Every readable record of the sweep (unreadable ones are skipped)."""
        ...

    def save(self, record: SiblingRecord) -> None:
        """Write (replace) one run's record."""
        ...


class DirectoryStore:
    """Records as ``DIR/<run_id>.json``, written atomically; safe for concurrent writers.

    Args:
        path: the sweep's directory (created on the first save).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise TypeError(f"`path` must be a directory path, got {path!r}.")
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.path)!r})"

    def load(self) -> list[SiblingRecord]:
        records: list[SiblingRecord] = []
        if not self.path.is_dir():
            return records
        for file in sorted(self.path.glob("*.json")):
            try:
                records.append(SiblingRecord.from_json(json.loads(file.read_text())))
            except (OSError, ValueError, TypeError, KeyError, IndexError):
                continue  # being replaced, or not ours
        return records

    def save(self, record: SiblingRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / f"{_SAFE.sub('_', record.run_id)}.json"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record.to_json(), f, separators=(",", ":"))
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class OptunaStore:
    """Records in the trials' user attribute ``TRIAL_ATTR``, in the study's storage.

    The trial's own state wins over the record's: a COMPLETE trial is *finished* with its
    value as the final metric, PRUNED is *pruned*, FAIL is *failed*.

    Args:
        study: the ``optuna.Study``.
        trial: the trial this process runs (the one ``save`` writes to); None to only read.
    """

    def __init__(self, study: Any, trial: Any = None) -> None:
        if not hasattr(study, "get_trials"):
            raise TypeError(f"`study` must be an optuna.Study, got {type(study).__name__}.")
        self.study = study
        self.trial = trial

    def load(self) -> list[SiblingRecord]:
        import optuna

        states = {
            optuna.trial.TrialState.COMPLETE: "finished",
            optuna.trial.TrialState.PRUNED: "pruned",
            optuna.trial.TrialState.FAIL: "failed",
        }
        records = []
        for frozen in self.study.get_trials(deepcopy=False):
            body = frozen.user_attrs.get(TRIAL_ATTR)
            if body is None:
                continue
            try:
                record = SiblingRecord.from_json(body)
            except (ValueError, TypeError, KeyError, IndexError):
                continue
            if frozen.state in states:
                if record.state != "pruned":
                    record.state = states[frozen.state]
                if frozen.state == optuna.trial.TrialState.COMPLETE and frozen.values and len(frozen.values) == 1:
                    record.final_metric = float(frozen.values[0])
            records.append(record)
        return records

    def save(self, record: SiblingRecord) -> None:
        if self.trial is None:
            raise RuntimeError("OptunaStore without a trial only reads.")
        self.trial.set_user_attr(TRIAL_ATTR, record.to_json())


#: The summary key a run's sibling record is written under (as JSON text).
SUMMARY_KEY = "gradema/sibling_record"
#: W&B run states and the record state they give a record (gradema's own prune wins).
_WANDB_STATES = {"finished": "finished", "failed": "failed", "crashed": "failed", "killed": "failed"}


class WandbStore:
    """Records from W&B itself: each run keeps its record in its summary (``SUMMARY_KEY``),
    and ``load`` reads the sweep's runs through the public API.

    Only the sweep's run list and summaries are fetched (``wandb.Api(timeout=...).sweep(path)``,
    then ``.runs``, each run's ``.id``, ``.state`` and ``.summary``): one request, no history
    scan. ``SweepPeers`` calls ``load`` from its background thread only, and caches the result
    between refreshes. A W&B *failed* run whose record says *pruned* stays pruned. A running run
    rewrites its record at most every ``running_every_s`` seconds (W&B sends summaries of live
    runs to the server as they change), so agents on other machines see it as far as it got.

    Args:
        sweep_path: ``ENTITY/PROJECT/SWEEP_ID``.
        run: this process's run (``save`` writes into its summary); None to only read.
        api: a ``wandb.Api`` (default: one made on first use with ``timeout``).
        timeout: seconds for the API's requests.
        running_every_s: at most one write of a running record per this many seconds (the end
            is always written); None writes ends only.
    """

    def __init__(
        self,
        sweep_path: str,
        run: Any = None,
        api: Any = None,
        timeout: int = 20,
        running_every_s: float | None = 60.0,
    ) -> None:
        if not isinstance(sweep_path, str) or sweep_path.count("/") != 2 or not all(sweep_path.split("/")):
            raise ValueError(f"`sweep_path` must be ENTITY/PROJECT/SWEEP_ID, got {sweep_path!r}.")
        if running_every_s is not None and not (isinstance(running_every_s, (int, float)) and running_every_s >= 0):
            raise ValueError(f"`running_every_s` must be a number of seconds >= 0 or None, got {running_every_s!r}.")
        self.sweep_path = sweep_path
        self.run = run
        self.api = api
        self.timeout = timeout
        self.running_every_s = running_every_s
        self._last_running: float | None = None

    def __repr__(self) -> str:
        return f"WandbStore({self.sweep_path!r})"

    def load(self) -> list[SiblingRecord]:
        if self.api is None:
            import wandb

            self.api = wandb.Api(timeout=self.timeout)
        records = []
        for run in self.api.sweep(self.sweep_path).runs:
            try:
                body = run.summary.get(SUMMARY_KEY)
                record = SiblingRecord.from_json(json.loads(body) if isinstance(body, str) else body)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                continue
            state = str(run.state)
            if state == "running":
                records.append(record)  # as far as it got (its own record says if it was pruned)
                continue
            ended = _WANDB_STATES.get(state)
            if ended is None:
                continue  # pending, preempting...: no record of its own yet
            if record.state != "pruned":
                record.state = ended
            records.append(record)
        return records

    def save(self, record: SiblingRecord) -> None:
        if self.run is None:
            return
        if record.state == "running":
            now = time.monotonic()
            every = self.running_every_s
            if every is None or (self._last_running is not None and now - self._last_running < every):
                return
            self._last_running = now
        self.run.summary[SUMMARY_KEY] = json.dumps(record.to_json(), separators=(",", ":"))
