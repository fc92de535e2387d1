"""W&B's own agent loops count a pruned run as a success, however many come in a row.

Both agents are driven for real (``wandb/wandb_agent.py`` for ``wandb agent``,
``wandb/agents/pyagent.py`` for ``wandb.agent(function=...)``); only their three calls to the
W&B server are answered by ``FakeSweepServer``, which hands out one run at a time as the
server does. Each test has a contrast run where the runs fail the ordinary way (an
``Exception``, exit status 1): there the agent shuts itself down after 3 (its flapping rule),
which shows the harness is faithful and that the prune's clean end is what keeps a sweep alive.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
import wandb.apis.public.sweeps as server_api
from wandb import wandb_agent
from wandb.agents import pyagent

import wandb_gradema
from wandb_gradema import RunPruned
from wandb_gradema.offline import find_runs, read_run

ERRORS_PY = Path(wandb_gradema.__file__).with_name("errors.py")
N_RUNS = 20


class FakeSweepServer:
    """Stands in for the W&B server: registers the agent, hands out ``runs`` one at a time."""

    def __init__(self, runs: list[dict[str, Any]], program: str = "") -> None:
        self.pending = list(runs)
        self.issued: list[str] = []
        self.program = program

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(wandb, "Api", lambda *a, **k: object())
        monkeypatch.setattr(server_api, "_register_agent", lambda *a, **k: {"id": "agent-1"})
        monkeypatch.setattr(server_api, "_sweep_with_runs", lambda *a, **k: {})  # default command
        monkeypatch.setattr(server_api, "_agent_heartbeat", self.heartbeat)

    def heartbeat(self, api: Any, agent_id: str, metrics: dict, run_states: dict) -> list[dict[str, Any]]:
        if run_states or not self.pending:  # a run is still queued or running
            return []
        run_id = f"run{len(self.issued):03d}"
        self.issued.append(run_id)
        return [{"type": "run", "run_id": run_id, "program": self.program, "args": self.pending.pop(0)}]


@pytest.fixture
def thread_escapes(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseException]]:
    """What escapes a thread: recorded instead of reported (Python's default hook is silent
    for ``SystemExit``; pytest's would warn)."""
    escaped: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_type))
    return escaped


@pytest.fixture
def fast_agents(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The agents poll every 5 s; make them poll quickly. Tear W&B down after (sweep settings)."""
    monkeypatch.setattr(wandb_agent.Agent, "POLL_INTERVAL", 0.05)
    monkeypatch.setattr(pyagent.Agent, "HEARTBEAT_SLEEP_SECONDS", 0.02)
    yield
    for var in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH"):  # the CLI agent leaves them
        os.environ.pop(var, None)
    wandb.teardown()


# ---------------------------------------------------------------------------- wandb agent (CLI)
def _cli_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> tuple[Any, FakeSweepServer, Path]:
    """Run ``N_RUNS`` runs of a program that ends as a pruned run ends (or raises)."""
    ran = tmp_path / "ran.txt"
    program = tmp_path / "program.py"
    program.write_text(
        textwrap.dedent(
            f"""
            # Ends exactly as a pruned training script ends: wandb_gradema.RunPruned uncaught.
            # errors.py is loaded by path so that 20 runs do not import torch 20 times.
            import importlib.util, os, sys
            spec = importlib.util.spec_from_file_location("gradema_errors", {str(ERRORS_PY)!r})
            errors = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(errors)
            with open({str(ran)!r}, "a") as f:
                f.write(os.environ["WANDB_RUN_ID"] + "\\n")
            if "--mode=prune" in sys.argv:
                raise errors.RunPruned(7, "Non-finite gradient norm (nan) at step 7.")
            raise RuntimeError("diverged")
            """
        )
    )
    server = FakeSweepServer([{"mode": {"value": mode}}] * N_RUNS, program=str(program))
    server.install(monkeypatch)
    # The agent runs `/usr/bin/env python ...`: this interpreter first on PATH.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    agent = wandb_agent.Agent(object(), multiprocessing.Queue(), sweep_id="sweep123", count=N_RUNS)
    agent.run()
    return agent, server, ran


@pytest.mark.skipif(sys.platform == "win32", reason="the agent's POSIX process handling")
def test_cli_agent_runs_twenty_pruned_runs_in_a_row(tmp_path, monkeypatch, fast_agents) -> None:
    agent, server, ran = _cli_agent(tmp_path, monkeypatch, "prune")
    assert len(ran.read_text().split()) == N_RUNS == len(server.issued)
    assert (agent._finished, agent._failed, agent._consecutive_failed_runs) == (N_RUNS, 0, 0)
    assert not agent.is_failing()


@pytest.mark.skipif(sys.platform == "win32", reason="the agent's POSIX process handling")
def test_cli_agent_contrast_three_ordinary_failures_shut_it_down(tmp_path, monkeypatch, fast_agents) -> None:
    agent, server, ran = _cli_agent(tmp_path, monkeypatch, "error")
    assert len(ran.read_text().split()) == 3 and agent._failed == 3  # is_flapping: 3 in 60 s


# ---------------------------------------------------------------------------- wandb.agent(function=...)
def _nan_training(
    *, steps: int = 30, nan_at: int | None = 5, log: Callable[[int], None] | None = None
) -> None:
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, on_escalation="prune")
    try:
        for step in range(steps):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            if step == nan_at:
                model.weight.grad.fill_(math.nan)
            opt.step()
            if log is not None:
                log(step)
    finally:
        monitor.remove()


def _pyagent(
    monkeypatch: pytest.MonkeyPatch, function: Callable[[], None], runs: list[dict[str, Any]]
) -> Any:
    server = FakeSweepServer(runs)
    server.install(monkeypatch)
    agent = pyagent.Agent("sweep123", function=function, count=len(runs))
    agent.run()
    return agent


@pytest.mark.filterwarnings("ignore::wandb_gradema.GrademaWarning")
def test_function_agent_runs_twenty_pruned_runs_in_a_row(monkeypatch, fast_agents, thread_escapes) -> None:
    calls = []

    def train() -> None:
        calls.append(os.environ["WANDB_RUN_ID"])
        _nan_training()

    agent = _pyagent(monkeypatch, train, [{"lr": {"value": 0.01}}] * N_RUNS)
    assert len(calls) == N_RUNS and agent._exceptions == {}
    assert set(agent._run_status.values()) == {pyagent.RunStatus.DONE}
    # What left each run's thread: the prune, a SystemExit, never an Exception.
    assert thread_escapes == [RunPruned] * N_RUNS
    assert not any(issubclass(e, Exception) for e in thread_escapes)


def test_function_agent_contrast_three_exceptions_shut_it_down(
    monkeypatch, fast_agents, thread_escapes
) -> None:
    calls = []

    def train() -> None:
        calls.append(1)
        raise RuntimeError("diverged")

    agent = _pyagent(monkeypatch, train, [{"lr": {"value": 0.01}}] * N_RUNS)
    assert len(calls) == 3 and len(agent._exceptions) == 3  # flapping: 3 in 60 s


@pytest.mark.filterwarnings("ignore::wandb_gradema.GrademaWarning")
def test_function_agent_pruned_run_is_failed_in_wandb_and_the_next_run_goes_on(
    tmp_path, monkeypatch, fast_agents, thread_escapes
) -> None:
    """The pyagent's thread, a real offline run: the prune fails the W&B run, the function's
    ``finally:`` runs, nothing counts as an error, and the next run trains normally."""
    ended: list[str] = []

    def train() -> None:
        run = wandb.init(project="gradema-tests")  # picks the sweep up as under wandb.agent
        try:
            _nan_training(
                nan_at=5 if run.config["lr"] > 1 else None, log=lambda s: run.log({"loss": float(s)})
            )
        finally:
            ended.append(f"{run.id}:{run.sweep_id}")
        run.finish()

    agent = _pyagent(monkeypatch, train, [{"lr": {"value": 4.0}}, {"lr": {"value": 0.01}}])
    assert ended == ["run000:sweep123", "run001:sweep123"] and agent._exceptions == {}
    assert thread_escapes == [RunPruned]
    runs = {r.run_id: r for r in (read_run(p, history=False) for p in find_runs(tmp_path))}
    assert (runs["run000"].state, runs["run000"].exit_code) == ("failed", 1)
    assert runs["run000"].summary["gradema/pruned_step"] == 5 and runs["run000"].config["lr"] == 4
    assert runs["run001"].state == "finished" and "gradema/pruned" not in runs["run001"].summary
