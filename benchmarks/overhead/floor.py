"""``python -m benchmarks.overhead.floor``: what the per-step floor and the monitor's hook are made of.

The overhead table's "foreach floor" is one ``torch._foreach_norm`` over the gradients (after
grouping them by device and dtype), called before ``optimizer.step()``: the least any total-norm
measurement can do. This splits it, and the monitor's own hook, into parts, each timed two ways
on the ~100k-parameter MLP (CPU, one torch thread, as the budget counts):

* **in-step**: inside real training steps, right after ``backward()``, one part per step in
  rotation (so every part meets the caches training leaves, and no part warms them for another);
  the monitor (``watch()`` at defaults, ``observe_loss`` every step) is timed on its own steps,
  whole and split into measuring (``StepIntake.observe_lean``: the norms and the queue) and
  judging (``Decisions.decide``: tracker, detector, policy);
* **warm**: the same part repeated back to back on one step's gradients (the best case).

Medians over the steps; the ratio column is the part's in-step time over the step without the
monitor. Wall time on a shared machine is noisy: read the parts against each other.
"""

from __future__ import annotations

import argparse
import operator
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

import wandb_gradema

from .models import MODELS
from .variants import NEVER, foreach_floor

try:
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype
except ImportError:  # pragma: no cover
    _group_tensors_by_device_and_dtype = None  # type: ignore[assignment]

__all__ = ["Part", "measure_floor", "main"]

Part = tuple[str, Callable[[list[Tensor]], Any]]
_GRAD = operator.attrgetter("grad")


def _parts() -> list[Part]:
    """The floor's pieces; each takes the parameters (and reads their gradients, as the monitor does)."""

    def group(params: list[Tensor]) -> Any:
        grads = list(map(_GRAD, params))
        return _group_tensors_by_device_and_dtype([grads]) if _group_tensors_by_device_and_dtype else None

    def norms(params: list[Tensor]) -> Any:
        grads = list(map(_GRAD, params))
        with torch.no_grad():
            return torch._foreach_norm(grads, 2.0)

    def stacked(params: list[Tensor]) -> Any:
        grads = list(map(_GRAD, params))
        with torch.no_grad():
            return torch.stack(torch._foreach_norm(grads, 2.0))

    def host(params: list[Tensor]) -> Any:
        grads = list(map(_GRAD, params))
        with torch.no_grad():
            return torch.stack(torch._foreach_norm(grads, 2.0)).tolist()

    def floats(params: list[Tensor]) -> Any:
        grads = list(map(_GRAD, params))
        with torch.no_grad():
            return list(map(float, torch._foreach_norm(grads, 2.0)))

    def one_norm(params: list[Tensor]) -> Any:
        grads = list(map(_GRAD, params))  # one kernel over one tensor of the same size
        with torch.no_grad():
            return torch.linalg.vector_norm(max(grads, key=Tensor.numel))

    return [
        ("group by device and dtype", group),
        ("_foreach_norm", norms),
        ("_foreach_norm + stack", stacked),
        ("_foreach_norm + stack + tolist (the host path's norms)", host),
        ("_foreach_norm + float() per tensor (not used)", floats),
        ("the benchmark's floor (group + _foreach_norm)", foreach_floor),
        ("vector_norm of one tensor (the largest)", one_norm),
    ]


def _timed(obj: Any, name: str, into: list[int]) -> None:
    """Wrap ``obj.name`` on the instance to add its time (ns) to ``into``."""
    original = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter_ns()
        try:
            return original(*args, **kwargs)
        finally:
            into.append(time.perf_counter_ns() - t0)

    setattr(obj, name, wrapper)


def measure_floor(steps: int = 150, warmup: int = 150, warm_reps: int = 2000) -> list[tuple[str, float, float]]:
    """``(part, in-step µs, warm µs)`` per part (median), then the monitor's and the bare step's."""
    spec = MODELS["mlp-100k"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = spec.build()
    batches = spec.batches(torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    hook_ns: list[int] = []
    t0 = [0]
    start = opt.register_step_pre_hook(lambda *_: t0.__setitem__(0, time.perf_counter_ns()))
    monitor = wandb_gradema.watch(opt, log_every=NEVER)
    stop = opt.register_step_pre_hook(lambda *_: hook_ns.append(time.perf_counter_ns() - t0[0]))
    parts = _parts()
    cold: list[list[int]] = [[] for _ in parts]
    observe_ns: list[int] = []
    decide_ns: list[int] = []
    step_ns: list[int] = []  # whole steps without the monitor's hook time (the bare step)
    try:
        rotation = len(parts) + 1
        for i in range(warmup + steps * rotation):
            x, y = batches[i % len(batches)]
            s0 = time.perf_counter_ns()
            loss = spec.loss(model, x, y)
            loss.backward()
            k = i % rotation
            monitor_step = i >= warmup and k == len(parts)
            if monitor_step:
                _timed(monitor.intake, "observe_lean", observe_ns)
                _timed(monitor.decisions, "decide", decide_ns)
            elif i >= warmup:
                p0 = time.perf_counter_ns()
                parts[k][1](params)
                cold[k].append(time.perf_counter_ns() - p0)
            monitor.observe_loss(loss)
            before = len(hook_ns)
            opt.step()
            opt.zero_grad()
            if monitor_step:
                del monitor.intake.observe_lean, monitor.decisions.decide
            elif i >= warmup and len(hook_ns) > before:
                step_ns.append(time.perf_counter_ns() - s0 - hook_ns[-1] - cold[k][-1])
        loss = spec.loss(model, *batches[0])
        loss.backward()
        warm = [_warm(fn, params, warm_reps) for _, fn in parts]
        warm_hook = _warm(lambda _: monitor._on_step(opt, (opt,), {}), params, warm_reps // 4)
        disable = torch.compiler.disable(lambda *a: None)
        warm_wrap = _warm(lambda _: disable(opt, (opt,), {}), params, warm_reps) - _warm(lambda _: None, params, warm_reps)
    finally:
        start.remove()
        stop.remove()
        monitor.remove()
        torch.set_num_threads(threads)
    med = [statistics.median(c) / 1e3 for c in cold]
    monitor_hook = statistics.median(hook_ns[warmup:]) / 1e3 if len(hook_ns) > warmup else float("nan")
    rows = [(name, m, w) for (name, _), m, w in zip(parts, med, warm)]
    rows += [
        ("monitor hook: measure and queue (observe_lean)", statistics.median(observe_ns) / 1e3, float("nan")),
        ("monitor hook: judge (decide: tracker, detector, policy)", statistics.median(decide_ns) / 1e3, float("nan")),
        ("monitor hook, whole (watch() at defaults)", monitor_hook, warm_hook),
        ("torch.compiler.disable wrapper around the hook", float("nan"), warm_wrap),
        ("the step without the monitor (forward, backward, AdamW)", statistics.median(step_ns) / 1e3, float("nan")),
    ]
    return rows


def _warm(fn: Callable[[list[Tensor]], Any], params: list[Tensor], reps: int) -> float:
    """µs per call of ``fn`` repeated back to back (the best of 5 blocks)."""
    for _ in range(reps // 10):
        fn(params)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(reps):
            fn(params)
        best = min(best, (time.perf_counter_ns() - t0) / reps / 1e3)
    return best


def table(rows: Sequence[tuple[str, float, float]]) -> str:
    """The parts as a text table with each one's share of the bare step."""
    bare = rows[-1][1]
    out = [f"  {'part':58} {'in-step µs':>10} {'warm µs':>8} {'x bare':>7}"]
    for name, cold, warm in rows:
        share = f"{1 + cold / bare:.3f}" if cold == cold and name != rows[-1][0] else ""
        c = f"{cold:10.1f}" if cold == cold else f"{'':10}"
        w = f"{warm:8.1f}" if warm == warm else f"{'':8}"
        out.append(f"  {name:58} {c} {w} {share:>7}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead.floor", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="in-step samples per part")
    args = parser.parse_args(argv)
    rows = measure_floor(steps=args.steps)
    print("The per-step floor and the monitor's hook, in parts (mlp-100k, CPU, 1 torch thread; medians):")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
