"""The hot path's budget: operations per steady-state step, counted (not timed), and held to.

Wall time on a shared machine is noise; the number of Python calls the monitor makes per step
and the number of torch operations it dispatches are not. ``count(case)`` trains the
benchmark's ~100k-parameter MLP with ``watch()`` (fed ``observe_loss`` every step) past every
detector window, then counts, over ``COUNTED_STEPS`` steps and only inside the monitor's work
(its step pre-hook and ``observe_loss``, bracketed by the trainer's probes):

* ``package_calls``: Python function calls in wandb_gradema's own files, and in the code
  ``dataclasses`` generated for its classes (a frozen dataclass's ``__init__``, run from the
  package on the hot path: the package's cost, though in no file of it);
* ``package_c_calls``: calls of built-in (C) functions made from those files (``len``,
  ``math.log``, tensor methods...);
* ``package_bytecodes``: Python bytecode instructions executed in those files (a third pass,
  traced with ``sys.settrace``): work inside a function (a loop over the parameter tensors, a
  comprehension) that the call counts do not see. Bytecode differs between Python versions:
  these ceilings hold only for the version they were counted on;
* ``torch_ops``: torch operations dispatched (a ``TorchDispatchMode``; counted in a second pass,
  so the mode's own Python calls are not counted as the monitor's).

``BUDGET_FILE`` holds the ceiling of each count per case; ``check`` fails a case whose count
exceeds it. Counts are deterministic for a given code and torch version (seeded data, no wall
time on these paths), so a count that grows means the hot path grew.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import wandb_gradema

from .memory import PACKAGE_DIR
from .models import MODELS
from .variants import NEVER, Trainer, open_run

__all__ = ["BUDGET_FILE", "CASES", "Counts", "check", "count", "load_budget", "save_budget"]

BUDGET_FILE = Path(__file__).with_name("budget.json")
#: Steps before counting: past the detector's longest window (two trend windows of losses).
WARMUP_STEPS = 120
COUNTED_STEPS = 64
_TORCH = torch.__version__.split("+")[0]
_PYTHON = ".".join(map(str, sys.version_info[:2]))
#: Headroom written into the budget above the measured counts (``--update-budget``).
HEADROOM = 0.05


@dataclass(frozen=True)
class Case:
    """One configuration whose per-step counts are budgeted.

    Attributes:
        key: its name in the budget file.
        label: what it is, in words.
        options: ``watch()`` options.
        needs_run: an offline W&B run is open (rows are written).
    """

    key: str
    label: str
    options: Mapping[str, Any]
    needs_run: bool = False


CASES: dict[str, Case] = {
    c.key: c
    for c in (
        Case("hot", "CPU host path (sync_every=1), no row logged", {"log_every": NEVER}),
        # The defaults without a W&B run: the adaptive cadence finds a row due on every step
        # (none is written to move it on), so a quiet step must check that a run takes it before
        # building anything for it.
        Case("norun", "CPU host path at defaults (adaptive cadence), no W&B run", {}),
        Case("deferred", "deferred path (sync_every=8), no row logged", {"log_every": NEVER, "sync_every": 8}),
        Case("rows", "CPU host path, a row every step to an offline run", {"log_every": 1}, needs_run=True),
    )
}


@dataclass(frozen=True)
class Counts:
    """Operations per step (means over the counted steps); ``by_file``: the calls (Python and
    built-in) made in each of the package's files, per step (not budgeted: for reading)."""

    package_calls: float
    package_c_calls: float
    torch_ops: float
    by_file: Mapping[str, float] = field(default_factory=dict, compare=False, repr=False)
    package_bytecodes: float = 0.0
    bytecodes_by_file: Mapping[str, float] = field(default_factory=dict, compare=False, repr=False)

    def budgeted(self) -> dict[str, float]:
        """The budgeted counts by name."""
        return {
            "package_calls": self.package_calls,
            "package_c_calls": self.package_c_calls,
            "package_bytecodes": self.package_bytecodes,
            "torch_ops": self.torch_ops,
        }

    def over(self, budget: Mapping[str, float]) -> list[str]:
        """The counts above ``budget``, as sentences (empty: within budget)."""
        return [
            f"{name} {value:.1f} > budget {budget[name]:g}"
            for name, value in self.budgeted().items()
            if name in budget and value > budget[name]
        ]


#: Where the code that ``dataclasses`` generates runs (the ``__init__`` of a frozen dataclass:
#: one ``object.__setattr__`` per field): the package's per-step work, though in no file of it.
GENERATED = "<string>"
GENERATED_NAME = "(generated __init__)"


def _package_file(filename: str) -> str | None:
    """The package file ``filename`` is, relative (generated code: ``GENERATED_NAME``), or None."""
    if filename.startswith(PACKAGE_DIR):
        return filename[len(PACKAGE_DIR) + 1 :]
    return GENERATED_NAME if filename == GENERATED else None


class _CallCounter:
    """``sys.setprofile`` callback counting calls made in the package's files (and per file)."""

    def __init__(self) -> None:
        self.calls = 0
        self.c_calls = 0
        self.by_file: Counter[str] = Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" or event == "c_call":
            name = _package_file(frame.f_code.co_filename)
            if name is not None:
                if event == "call":
                    self.calls += 1
                else:
                    self.c_calls += 1
                self.by_file[name] += 1


class _BytecodeCounter:
    """``sys.settrace`` callback counting the bytecode instructions executed in the package's
    files (and per file); frames elsewhere are not traced."""

    def __init__(self) -> None:
        self.bytecodes = 0
        self.by_file: Counter[str] = Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        name = _package_file(frame.f_code.co_filename)
        if name is None:
            return None
        if event == "call":
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        elif event == "opcode":
            self.bytecodes += 1
            self.by_file[name] += 1
        return self


class _OpCounter(TorchDispatchMode):
    """Counts the torch operations dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        return func(*args, **(kwargs or {}))


class _Probe:
    """Switched on and off by the trainer's probes (``Trainer.profiler``) around the monitor."""

    def __init__(self, on: Callable[[], None], off: Callable[[], None]) -> None:
        self.enable, self.disable = on, off


def count(case: Case, root: Path | None = None, steps: int | None = None) -> Counts:
    """Per-step counts of ``case`` on the ~100k-parameter MLP (CPU, one torch thread); ``root``:
    where an offline run is written (cases that need one count without a run when None)."""
    steps = steps or COUNTED_STEPS
    spec = MODELS["mlp-100k"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = spec.build()
    batches = spec.batches(torch.Generator().manual_seed(0))
    run = open_run(root, f"budget-{case.key}") if case.needs_run and root is not None else None
    t = Trainer(base, spec, batches)
    try:
        monitor = t.bracket(lambda: wandb_gradema.watch(t.optimizer, model=t.model, run=run, **case.options))
        t.monitor = monitor
        t.before_step = monitor.observe_loss
        t.on_close(monitor.remove)
        for _ in range(WARMUP_STEPS):
            t.step()
        calls, ops, code = _CallCounter(), _OpCounter(), _BytecodeCounter()
        probes = (
            _Probe(lambda: sys.setprofile(calls), lambda: sys.setprofile(None)),
            _Probe(ops.__enter__, lambda: ops.__exit__(None, None, None)),
            _Probe(lambda: sys.settrace(code), lambda: sys.settrace(None)),
        )
        for probe in probes:  # one counter at a time: each would count the others' work
            t.profiler = probe  # type: ignore[assignment]
            for _ in range(steps):
                t.step()
        t.profiler = None
    finally:
        t.close()
        if run is not None:
            run.finish()
        torch.set_num_threads(threads)
    by_file = {name: n / steps for name, n in sorted(calls.by_file.items())}
    bytecodes_by_file = {name: n / steps for name, n in sorted(code.by_file.items())}
    return Counts(
        calls.calls / steps, calls.c_calls / steps, ops.ops / steps, by_file, code.bytecodes / steps, bytecodes_by_file
    )


def load_budget(path: Path | None = None) -> dict[str, dict[str, float]]:
    """The stored budget: case -> count name -> ceiling. ``torch_ops`` ceilings hold only for
    the torch version they were counted on (another version may dispatch a call differently),
    ``package_bytecodes`` only for the Python version: with another one they are left out; the
    call counts are the package's own and always hold."""
    doc = json.loads((path or BUDGET_FILE).read_text())
    cases: dict[str, dict[str, float]] = doc["cases"]
    dropped = set()
    if doc.get("torch", _TORCH) != _TORCH:
        dropped.add("torch_ops")
    if doc.get("python", _PYTHON) != _PYTHON:
        dropped.add("package_bytecodes")
    return {key: {k: v for k, v in c.items() if k not in dropped} for key, c in cases.items()}


def save_budget(measured: Mapping[str, Counts], path: Path | None = None) -> None:
    """Write ``measured`` plus ``HEADROOM`` as the new budget."""
    cases = {
        key: {name: math.ceil(value * (1 + HEADROOM)) for name, value in c.budgeted().items()}
        for key, c in measured.items()
    }
    doc = {
        "about": "Per-step operation ceilings of the monitor's hot path (benchmarks/overhead/budget.py); "
        "regenerate with python -m benchmarks.overhead --update-counts after a deliberate change.",
        "torch": _TORCH,
        "python": _PYTHON,
        "cases": cases,
    }
    (path or BUDGET_FILE).write_text(json.dumps(doc, indent=2) + "\n")


def check(measured: Mapping[str, Counts], budget: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every count over its ceiling, as ``case: sentence`` lines (empty: within budget)."""
    return [f"{key}: {line}" for key, c in measured.items() if key in budget for line in c.over(budget[key])]


#: The detector's files: the rules' share of the bytecode, against the monitor's plumbing.
DETECTOR_FILES = ("detector.py", "rules/")


def lines(measured: Mapping[str, Counts], budget: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The counts against their ceilings, one line per case, and where its bytecode runs."""
    out = []
    for key, c in measured.items():
        b = budget.get(key, {})
        parts = [
            f"{name} {value:.1f}" + (f" / {b[name]:g}" if name in b else "") for name, value in c.budgeted().items()
        ]
        verdict = "over" if c.over(b) else "ok" if b else "no budget"
        out.append(f"  [{verdict}] {key} ({CASES[key].label}): " + ", ".join(parts))
        code = c.bytecodes_by_file
        if code:
            rules = sum(n for name, n in code.items() if name.startswith(DETECTOR_FILES))
            top = ", ".join(f"{name} {n:.0f}" for name, n in sorted(code.items(), key=lambda kv: -kv[1])[:6])
            out.append(
                f"      bytecode per step: detector and rules {rules:.0f}, the monitor's plumbing "
                f"{c.package_bytecodes - rules:.0f}; most in {top}"
            )
    return out
