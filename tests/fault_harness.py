"""Runs ``fault_train.py`` in subprocesses and reads back what they left: results and W&B runs."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.soak import child_pids
from wandb_gradema.offline import OfflineRun, find_runs, read_run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("fault_train.py")
TIMEOUT_S = 120
#: The escalations of the reference run: NaN losses (critical under any detector).
NAN_AT = ("15", "27", "50")
_KEEP: list[tempfile.TemporaryDirectory[str]] = []


@dataclass
class Finished:
    """One process of the script: its exit status, output and result (None if it was killed)."""

    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None


def _env(workdir: Path) -> dict[str, str]:
    """A fresh script's environment: none of this process's W&B variables (``WANDB_SERVICE``
    would connect the script to this process's W&B service, which still knows the run ids of
    earlier tests), offline W&B in ``workdir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline", WANDB_DIR=str(workdir), WANDB_SILENT="true", WANDB_CONSOLE="off",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    return env


def _command(workdir: Path, args: tuple[str, ...]) -> list[str]:
    return [sys.executable, str(SCRIPT), "--dir", str(workdir), *args]


def _result(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    path.unlink()  # the next process of the same script writes its own
    return result


def run_script(workdir: Path, *args: str) -> Finished:
    """Run the script to its end."""
    workdir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        _command(workdir, args), env=_env(workdir), capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    return Finished(done.returncode, done.stdout, done.stderr, _result(workdir))


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return
        time.sleep(0.05)
    raise TimeoutError(f"processes {pids} still alive after {timeout} s")


def run_until_killed(workdir: Path, *args: str) -> Finished:
    """Run the script with ``--block-at``: SIGKILL it once it says BLOCKED (the training process
    only, as the OOM killer would), then wait for W&B's service to notice and exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        _command(workdir, args), env=_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + TIMEOUT_S
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("BLOCKED") or time.monotonic() > deadline:
            break
    service = child_pids(proc.pid)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=TIMEOUT_S)
    _wait_gone(service, 30.0)
    return Finished(proc.returncode, "".join(lines) + out, err, _result(workdir))


def wandb_runs(workdir: Path) -> list[OfflineRun]:
    """The offline W&B runs the processes wrote, in order (one per process)."""
    return [read_run(path) for path in find_runs(workdir)]


def gradema_rows(run: OfflineRun) -> dict[int, dict[str, Any]]:
    """The monitor's history rows by ``gradema/step`` (asserting each step appears once)."""
    rows = [{k: v for k, v in r.items() if k.startswith("gradema/")} for r in run.history if "gradema/step" in r]
    steps = [int(r["gradema/step"]) for r in rows]
    assert steps == sorted(set(steps)), f"gradema/step repeats or goes back: {steps}"
    return dict(zip(steps, rows))




@functools.cache
def uninterrupted(sync_every: int) -> tuple[Finished, OfflineRun]:
    """The reference: the script run once to its end with ``NAN_AT``, no fault (cached)."""
    tmp = tempfile.TemporaryDirectory(prefix="gradema-uninterrupted-")
    _KEEP.append(tmp)
    workdir = Path(tmp.name)
    done = run_script(workdir, "--sync-every", str(sync_every), "--nan-loss-at", *NAN_AT, "--user-log")
    assert done.returncode == 0 and done.result is not None, done.stderr[-3000:]
    (run,) = wandb_runs(workdir)
    return done, run
