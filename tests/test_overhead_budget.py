"""The hot path's budget (issue 20): counted operations per step, and speed work deciding nothing.

Wall time is the benchmark's business (``python -m benchmarks.overhead``); here the monitor's
per-step operation counts are held to ``benchmarks/overhead/budget.json`` (deterministic: a
count that grows means the hot path grew), they do not grow with the number of parameter
tensors, and the faster paths decide exactly what the straightforward ones do.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import wandb_gradema
from benchmarks.overhead import budget
from tests.helpers import train_loop
from wandb_gradema.rules._common import median_sorted
from wandb_gradema.rules._window import RollingWindow


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", ["hot", "norun", "deferred"])
def test_per_step_operation_counts_stay_within_the_budget(case: str) -> None:
    counts = budget.count(budget.CASES[case])
    ceilings = budget.load_budget()[case]
    assert not counts.over(ceilings), (counts, ceilings)
    assert counts.package_calls > 10 and counts.torch_ops >= 2  # the counter sees the monitor's work


#: The monitor's plumbing: what it does per step whatever the detector's rules find.
PLUMBING = (
    "monitor.py", "intake.py", "norms.py", "params.py", "readback.py", "decisions.py", "judge.py",
    "guard.py", "wandb_sink.py", "cadence.py", "aggregate.py", "tracker.py",
)  # fmt: skip


def test_per_step_python_work_does_not_grow_with_the_number_of_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """An MLP with 4x the tensors (more, narrower layers) costs the same calls and bytecode in the monitor's
    plumbing (the rules' branches follow the run's values, not its tensors) and the same torch
    operations: no Python loop over parameters per step (the foreach kernels walk them)."""
    from benchmarks.overhead import models

    counts = {}
    for depth in (3, 12):
        dims = [64] + [96] * (depth - 1) + [64]
        spec = models.MODELS["mlp-100k"]
        monkeypatch.setitem(
            models.MODELS, "mlp-100k", models.ModelSpec(**{**spec.__dict__, "build": lambda dims=dims: models.mlp(dims)})
        )
        counts[depth] = budget.count(budget.CASES["hot"], steps=32)
    few, many = counts[3], counts[12]
    plumbing = {depth: sum(c.by_file.get(name, 0.0) for name in PLUMBING) for depth, c in counts.items()}
    assert plumbing[3] > 20 and plumbing[12] == plumbing[3], (few.by_file, many.by_file)
    # ... nor its bytecode: no loop over the tensors inside a function either (``map`` walks them in C)
    code = {depth: sum(c.bytecodes_by_file.get(name, 0.0) for name in PLUMBING) for depth, c in counts.items()}
    # (within less than one instruction per added tensor: ``aggregate.add``'s maxima follow the data)
    assert code[3] > 500 and abs(code[12] - code[3]) < 10, (few.bytecodes_by_file, many.bytecodes_by_file)
    assert many.torch_ops == few.torch_ops, counts


def _straight_mk(values: list[float]) -> int:
    """Mann-Kendall S from its definition: O(n^2) pairs."""
    return sum((b > a) - (b < a) for i, a in enumerate(values) for b in values[i + 1 :])


@pytest.mark.parametrize("trend", [False, True])
def test_rolling_window_matches_the_statistics_rebuilt_from_scratch(trend: bool) -> None:
    """Random streams with ties, repeats and trends: median, quantiles and Mann-Kendall S kept
    incrementally equal the ones recomputed over the window every step (bit for bit)."""
    rng = random.Random(7)
    for size in (1, 2, 5, 13, 32):
        window = RollingWindow(size, trend=trend)
        kept: list[float] = []
        for t in range(6 * size + 20):
            kind = rng.random()
            x = float(rng.randint(0, 3)) if kind < 0.3 else (kept[-1] if kept and kind < 0.4 else rng.gauss(t * 0.01, 1))
            window.push(x)
            kept = (kept + [x])[-size:]
            ordered = sorted(kept)
            assert list(window.values) == kept and window.sorted == ordered
            assert window.median() == median_sorted(ordered)
            pos = 0.75 * (len(ordered) - 1)
            lo = int(pos)
            hi = min(lo + 1, len(ordered) - 1)
            assert window.quantile(0.75) == ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
            if trend:
                assert window.s == _straight_mk(kept)
        restored = RollingWindow(size, trend=trend)
        restored.load(window.state())
        assert (restored.sorted, restored.s) == (window.sorted, window.s)
    assert math.isnan(RollingWindow(3).median())


def _training(sync_every: int, steps: int = 160) -> tuple[list[object], object, dict[str, object]]:
    """A run that learns, then diverges (LR x200 at step 100): the events, the last judged
    step and the detector's statistics."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8, 4, generator=gen)
    xs = [torch.randn(16, 8, generator=gen) for _ in range(16)]
    batches = [(x, torch.tanh(x @ w) + 0.1 * torch.randn(16, 4, generator=gen)) for x in xs]
    monitor = wandb_gradema.watch(opt, sync_every=sync_every, on_escalation="warn")

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i == 100:
            for g in opt.param_groups:
                g["lr"] *= 200
        return batches[i % len(batches)]

    with pytest.warns(wandb_gradema.GrademaWarning):
        train_loop(model, opt, batch, steps, monitor=monitor)
    state = monitor.state_dict()
    last = monitor.last
    monitor.remove()
    return list(monitor.events), last, state["detector"]


def test_host_and_deferred_paths_decide_the_same() -> None:
    """The CPU host path (values read at once, queued as host values) and the deferred path
    (device tensors, one read-back per ``sync_every`` steps) feed the detector the same
    observations: the same escalations at the same steps, the same statistics."""
    host = _training(1)
    deferred = _training(8)
    assert host[0], "the diverging run escalates"
    assert [(e.step, e.anomaly_types, e.confirmed) for e in host[0]] == [
        (e.step, e.anomaly_types, e.confirmed) for e in deferred[0]
    ]
    assert repr(host[1]) == repr(deferred[1])  # repr: NaN compares unequal to itself; floats round-trip
    assert repr(host[2]) == repr(deferred[2])


def test_counts_cli_fails_over_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m benchmarks.overhead --counts-only`` exits 1 when a count is over its ceiling."""
    from benchmarks.overhead import __main__ as cli

    tight = tmp_path / "budget.json"
    tight.write_text(
        '{"cases": {"hot": {"package_calls": 1, "package_c_calls": 1, "torch_ops": 1}}}'
    )
    monkeypatch.setattr(budget, "BUDGET_FILE", tight)
    monkeypatch.setattr(budget, "CASES", {"hot": budget.CASES["hot"]})
    monkeypatch.setattr(budget, "COUNTED_STEPS", 8)
    assert cli.main(["--counts-only"]) == 1


def _detector_lines_per_step(observations: list[wandb_gradema.Observation], window: range) -> float:
    """Python lines executed in the package per ``AnomalyDetector.check`` (and the policy's
    ``update``) over the steps in ``window``, fed every observation before it untraced."""
    from benchmarks.overhead.memory import PACKAGE_DIR

    detector, policy = wandb_gradema.AnomalyDetector(), wandb_gradema.EscalationPolicy()
    lines = 0

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        if not frame.f_code.co_filename.startswith(PACKAGE_DIR):
            return None
        if event == "line":
            lines += 1
        return tracer

    for obs in observations[: window.start]:
        policy.update(detector.check(obs))
    sys.settrace(tracer)
    try:
        for obs in observations[window.start : window.stop]:
            policy.update(detector.check(obs))
    finally:
        sys.settrace(None)
    return lines / len(window)


def _stream(n: int, loss: Callable[[int], float], seed: int = 0) -> list[wandb_gradema.Observation]:
    rng = random.Random(seed)
    return [
        wandb_gradema.Observation(
            step=t, grad_norm=math.exp(rng.gauss(0, 0.3)), loss=loss(t) * math.exp(rng.gauss(0, 0.1)), lr=0.05
        )
        for t in range(n)
    ]


@pytest.mark.parametrize(
    ("name", "loss"),
    [
        ("learns", lambda t: 0.3 + 2.0 * math.exp(-t / 40)),
        # learns, then relapses to its start for good: progress_lost fires (and the relapse
        # test reads the history) on every step from about 330 on
        ("relapses", lambda t: 0.3 + 2.0 * math.exp(-t / 40) if t < 300 else 2.3),
    ],
)
def test_detector_work_per_step_does_not_grow_with_the_run(name: str, loss: Callable[[int], float]) -> None:
    """The detector's Python work per step is the same at step 4,000 as at step 400 (quiet
    steps, and steps where rules fire on every step): every statistic is incremental, no
    window is rebuilt and nothing is kept per step of the run."""
    obs = _stream(4200, loss)
    early = _detector_lines_per_step(obs, range(400, 600))
    late = _detector_lines_per_step(obs, range(4000, 4200))
    assert 30 < late <= 1.02 * early, (early, late)  # the branches taken vary a little with the data


def _lean_or_general(sync_every: int, lean: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[object, ...]:
    """A run through every fork of the per-step intake: a tensor frozen for the first steps (a
    missing gradient), ``clip_grad_norm_`` on some steps (measured ahead), ``add_param_group``
    at step 70, an LR jump at step 100 and a NaN gradient at step 130. ``lean=False`` sends
    every step down the general path. Returns the events, the last judged step, the monitor's
    state and how many steps the lean call queued."""
    from wandb_gradema.intake import StepIntake

    taken = [0]
    original = StepIntake.observe_lean

    def counted(self: StepIntake, step: int, optimizer: torch.optim.Optimizer) -> bool:
        queued = original(self, step, optimizer) if lean else False
        taken[0] += queued
        return queued

    monkeypatch.setattr(StepIntake, "observe_lean", counted)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))
    extra = nn.Parameter(torch.zeros(4))
    model[0].bias.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8, 4, generator=gen)
    xs = [torch.randn(16, 8, generator=gen) for _ in range(16)]
    batches = [(x, torch.tanh(x @ w) + 0.1 * torch.randn(16, 4, generator=gen)) for x in xs]
    monitor = wandb_gradema.watch(opt, model=model, sync_every=sync_every, on_escalation="warn")
    with pytest.warns(wandb_gradema.GrademaWarning):
        for i in range(170):
            if i == 20:
                model[0].bias.requires_grad_(True)
            if i == 70:
                opt.add_param_group({"params": [extra], "lr": 0.02})
            if i == 100:
                for g in opt.param_groups:
                    g["lr"] *= 200
            x, y = batches[i % len(batches)]
            loss = torch.nn.functional.mse_loss(model(x) + extra, y)
            monitor.observe_loss(loss)
            loss.backward()
            if i == 130:
                model[2].weight.grad.fill_(float("nan"))
            if i % 9 == 4:
                monitor.clip_grad_norm_(1e6)
            opt.step()
            opt.zero_grad()
    state = monitor.state_dict()
    last = monitor.last
    monitor.remove()
    return [dataclasses.asdict(e) for e in monitor.events], last, state, taken[0]


@pytest.mark.parametrize("every", [1, 8], ids=["host", "deferred"])
def test_lean_step_decides_what_the_general_path_decides(every: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean per-step call (one foreach kernel, one stack, the step queued) takes the common
    steps of both paths and feeds the judges exactly what the general path does: the same
    escalations (steps, rules, sentences, scores), the same last step, the same statistics and
    counters, bit for bit; the other steps (missing gradient, measured ahead, new param group)
    fall back to the general path."""
    lean = _lean_or_general(every, True, monkeypatch)
    general = _lean_or_general(every, False, monkeypatch)
    assert general[3] == 0 and 100 < lean[3] < 170 - 16, lean[3]  # the forks above took the rest
    events = lean[0]
    assert events and any("nonfinite" in e["anomaly_types"] for e in events), events
    assert repr(events) == repr(general[0])
    assert repr(lean[1]) == repr(general[1])  # repr: NaN compares unequal to itself; floats round-trip
    assert repr(lean[2]) == repr(general[2])


def test_stacked_read_back_gives_what_the_field_by_field_one_gives() -> None:
    """The deferred queue read back in one go (norms and tensor scalars concatenated, one
    transfer) gives exactly the values of the field-by-field read-back: float32 losses, other
    dtypes, float, missing, tensor learning rates of any shape, NaN and Inf norms, averaged
    losses; queues it cannot take (other shapes, device rows, overflow flags) are left to the
    field-by-field one."""
    from wandb_gradema.readback import PendingStep, _read_fields, _read_stacked, read_back

    gen = torch.Generator().manual_seed(0)
    losses: list[Any] = [
        torch.tensor(0.7), torch.tensor(1.3, dtype=torch.float64), torch.tensor(2.5, dtype=torch.bfloat16), 0.25,
        None, torch.tensor([0.9]).reshape(()), torch.tensor(float("nan")),
    ]  # fmt: skip
    lrs: list[Any] = [0.1, torch.tensor(0.01), torch.tensor([0.02]), None, 0.3, torch.tensor(1e-3, dtype=torch.float64), 0.1]
    queue = []
    for i, (loss, lr) in enumerate(zip(losses, lrs)):
        norms = torch.rand(5, generator=gen)
        if i == 3:
            norms[1] = float("inf")
        if i == 4:
            norms[0] = float("nan")
        queue.append(PendingStep(i, None, loss, lr, norms, range(5), param_groups=1 + i % 2))
    stacked = _read_stacked(queue)
    assert stacked is not None and len(stacked) == len(queue)
    assert repr(stacked) == repr(_read_fields(queue)) == repr(read_back(queue))
    assert stacked[1].loss == float(torch.tensor(1.3, dtype=torch.float64).float())  # read as float32, as before
    floats = [PendingStep(i, None, 0.5 * i, 0.1, torch.rand(3, generator=gen), range(3)) for i in range(4)]
    assert repr(_read_stacked(floats)) == repr(_read_fields(floats))
    other_shape = [*queue[:2], PendingStep(9, None, None, 0.1, torch.rand(4, generator=gen), range(4))]
    with_row = [*queue[:2], PendingStep(9, torch.ones(4), None, 0.1, torch.rand(5, generator=gen), range(5))]
    with_flag = [*queue[:2], PendingStep(9, None, None, 0.1, torch.rand(5, generator=gen), range(5), torch.tensor(0.0))]
    for other in (other_shape, with_row, with_flag):
        assert _read_stacked(other) is None
        assert len(read_back(other)) == 3
