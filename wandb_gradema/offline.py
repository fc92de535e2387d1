"""Read offline W&B runs back with W&B's own reader (``wandb leet inspect``).

This is what W&B would receive on ``wandb sync``: run state and exit code, summary, tags,
config, every history row and alert. Used by the sweep runner, the drift report and tests.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OfflineRun", "find_runs", "read_run"]


@dataclass
class OfflineRun:
    """One offline run as its transaction log records it.

    Attributes:
        path: the run directory (``.../wandb/offline-run-<time>-<id>``).
        run_id: the W&B run id.
        state: ``"finished"``, ``"failed"``, ``"running"`` (no exit record yet) or as W&B says.
        exit_code: the exit code given to ``finish``, or None.
        summary, tags, config: as W&B would show them (config without ``_wandb``).
        history: every history row, in order (empty unless read with ``history=True``).
        alerts: every alert, ``{"title", "text", "level"}``.
        metrics: every ``define_metric`` record (``name`` or ``glob_name``, ``step_metric``...).
    """

    path: Path
    run_id: str
    state: str
    exit_code: int | None
    summary: dict[str, Any]
    tags: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def column(self, key: str) -> list[Any]:
        """The values of ``key`` over the history rows that have it."""
        return [row[key] for row in self.history if key in row]


_SPECIAL_FLOATS = {"NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"}


def _floats(value: Any) -> Any:
    """W&B writes non-finite floats as strings ("NaN", "Infinity"); read them back as floats."""
    if isinstance(value, str) and value in _SPECIAL_FLOATS:
        return float(value)
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


def find_runs(root: str | Path) -> list[Path]:
    """Every offline run directory under ``root`` (itself included), oldest first."""
    root = Path(root)
    if root.name.startswith("offline-run-") and root.is_dir():
        return [root]
    return sorted((p for p in root.rglob("offline-run-*") if p.is_dir()), key=lambda p: p.name)


def _inspect_command(path: Path, args: tuple[str, ...]) -> list[str]:
    """``wandb leet inspect`` for ``path``: the wandb-core program the CLI dispatches to.

    The ``wandb`` CLI resolves the run file and then runs ``wandb-core leet inspect``; calling
    that program directly, with the same arguments, skips ~2 s of Python start-up per read.
    Falls back to the CLI itself when wandb-core cannot be located.
    """
    run_file = path if path.is_file() else next(iter(sorted(path.glob("run-*.wandb"))), None)
    try:
        from wandb.util import get_core_path

        core = get_core_path()
    except Exception:  # noqa: BLE001 - any failure: the CLI knows best
        core = None
    if core is None or run_file is None:
        return [sys.executable, "-m", "wandb", "leet", "inspect", *args, str(path)]
    return [core, "leet", "inspect", "--no-observability", *args, "--run-file", str(run_file), str(run_file.parent.parent)]


#: The first wandb whose ``leet inspect`` prints JSON (older ones open a terminal UI).
READER_MIN = (0, 31)


@functools.lru_cache(maxsize=1)
def _check_reader() -> None:
    """Fail at once, naming the version, where ``wandb leet inspect --json`` does not exist."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("wandb")
    except PackageNotFoundError as exc:
        raise RuntimeError("reading offline runs needs wandb (pip install 'wandb>=0.31')") from exc
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    if len(parts) == 2 and parts < READER_MIN:
        raise RuntimeError(
            f"reading offline runs needs `wandb leet inspect --json`, which wandb {found} does not have: "
            "pip install 'wandb>=0.31'"
        )


def _inspect(path: Path, *args: str) -> str:
    _check_reader()
    cmd = _inspect_command(path.resolve(), args)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"`wandb leet inspect` failed on {path}: {done.stderr.strip()[-500:]}")
    return done.stdout


def read_run(path: str | Path, *, history: bool = True) -> OfflineRun:
    """Read one offline run directory (or its ``.wandb`` file).

    Args:
        path: the run directory or its ``run-<id>.wandb`` file.
        history: also read every record: history rows, alerts, metric definitions (one more
            CLI call).
    """
    path = Path(path)
    summary = json.loads(_inspect(path, "--summary", "--json"))
    config = {k: v for k, v in (summary.get("config") or {}).items() if k != "_wandb"}
    run = OfflineRun(
        path=path if path.is_dir() else path.parent,
        run_id=summary.get("run_id", ""),
        state=summary.get("state", "unknown"),
        exit_code=summary.get("exit_code"),
        summary=_floats(summary.get("summary") or {}),
        tags=list(summary.get("tags") or []),
        config=config,
    )
    if history:
        for line in _inspect(path, "--json").splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("type") == "history":
                run.history.append(_floats(rec["history"]["item"]))
            elif rec.get("type") == "alert":
                run.alerts.append(rec["alert"])
            elif rec.get("type") == "metric":
                run.metrics.append(rec["metric"])
    return run
