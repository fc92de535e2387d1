"""``python -m benchmarks.soak [--steps N] [--windows K] [--sync-every S] [--no-tracemalloc] [--keep]``.

A long run: a tiny model trained for ``--steps`` steps (100,000 by default), watched with
``log_every=1`` (a W&B row every step) into an offline run. After each of ``--windows`` equal
windows it measures, with the garbage collector run first: time per step over the window;
live Python allocations (tracemalloc: in all, made in wandb_gradema's files, made in wandb's
files); Python objects tracked by the garbage collector; what the monitor holds (its object
walk: bytes, container items, tensor elements, from ``benchmarks.overhead.memory``); monitor
rows waiting in the history writer; the resident memory of this process and of W&B's service
process. It prints one row per window and, from the second window on (the first includes
warm-up), the growth of each: a leak grows with steps, a flat run does not. Exit status 1 if a
growth check fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import wandb_gradema
from wandb_gradema.history import HistoryWriter

from .overhead.memory import PACKAGE_DIR, footprint

#: Growth from the second window to the last that still counts as flat.
MAX_GROWTH = {
    "gradema KiB": 16.0,  # a float kept per step would be ~2,300 KiB over 100,000 steps
    "wandb KiB": 64.0,  # W&B's SDK holds no per-row backlog in this process
    "monitor items": 16,
    "monitor tensors": 0,
    "waiting rows": 0,
}
#: Objects the garbage collector tracks, per 1,000 steps: torch's own ``record_function`` (in every
#: ``optimizer.step()`` and ``zero_grad()``) leaves a few weak references behind now and then.
MAX_OBJECTS_PER_1000_STEPS = 50
#: Time per step may vary with the machine; a leak in time grows steadily.
MAX_TIME_RATIO = 1.3


@dataclass
class Window:
    end: int
    us_per_step: float
    traced_kib: float
    gradema_kib: float
    wandb_kib: float
    objects: int
    monitor_kib: float
    monitor_items: int
    monitor_tensors: int
    waiting_rows: int
    rss_mib: float
    service_rss_mib: float


def _rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process from /proc (NaN where there is none)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (read from /proc; none where there is no /proc)."""
    found: list[int] = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _model_and_batches() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A small MLP on a learnable task with noise: the loss falls, then plateaus."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16))
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 16, generator=gen) / 4
    batches = []
    for _ in range(8):
        x = torch.randn(32, 16, generator=gen)
        batches.append((x, torch.tanh(x @ w) + 0.1 * torch.randn(32, 16, generator=gen)))
    return model, batches


def _bytes_in(snapshot: tracemalloc.Snapshot, directory: str) -> float:
    flt = tracemalloc.Filter(True, directory + "/*")
    return sum(s.size for s in snapshot.filter_traces([flt]).statistics("filename")) / 1024


def soak(steps: int, windows: int, *, sync_every: int | None, trace: bool, wandb_dir: Path) -> tuple[list[Window], int]:
    """Train and measure; returns the windows and the number of escalations."""
    import wandb

    torch.set_num_threads(1)
    model, batches = _model_and_batches()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = wandb.init(project="gradema-soak", mode="offline", dir=str(wandb_dir))
    wandb_files = str(Path(wandb.__file__).resolve().parent)
    if trace:
        tracemalloc.start(1)
    monitor = wandb_gradema.watch(opt, model=model, log_every=1, sync_every=sync_every)
    service = child_pids(os.getpid())
    per_window = steps // windows
    out: list[Window] = []
    types: list[Counter[str]] = []  # object types by count, after the first window and at the end
    done = 0
    for _ in range(windows):
        started = time.perf_counter()
        for i in range(done, done + per_window):
            x, y = batches[i % len(batches)]
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            monitor.observe_loss(loss)
            opt.step()
            opt.zero_grad()
        elapsed = time.perf_counter() - started
        done += per_window
        monitor.flush()
        gc.collect()
        snap = tracemalloc.take_snapshot() if trace else None
        fp = footprint(monitor)
        writer = HistoryWriter.of(run)
        out.append(
            Window(
                end=done,
                us_per_step=elapsed / per_window * 1e6,
                traced_kib=tracemalloc.get_traced_memory()[0] / 1024 if trace else float("nan"),
                gradema_kib=_bytes_in(snap, PACKAGE_DIR) if snap else float("nan"),
                wandb_kib=_bytes_in(snap, wandb_files) if snap else float("nan"),
                objects=len(gc.get_objects()),
                monitor_kib=fp.python_bytes / 1024,
                monitor_items=fp.container_items,
                monitor_tensors=fp.tensor_elements,
                waiting_rows=len(writer._waiting) if isinstance(writer, HistoryWriter) else 0,
                rss_mib=_rss_mib(),
                service_rss_mib=sum(_rss_mib(pid) for pid in service) if service else float("nan"),
            )
        )
        _print_row(out[-1], done - per_window)
        if len(out) in (1, windows):
            types.append(Counter(type(o).__name__ for o in gc.get_objects()))
    escalations = len(monitor.events)
    monitor.remove()
    if trace:
        tracemalloc.stop()
    run.finish()
    grown = (types[-1] - types[0]).most_common(5)
    print("object types that grew the most after the first window: "
          + (", ".join(f"{name} +{n}" for name, n in grown) or "none"))
    return out, escalations


HEADER = (
    f"{'steps':>15} {'us/step':>8} {'traced KiB':>11} {'gradema KiB':>12} {'wandb KiB':>10} {'gc objects':>11} "
    f"{'monitor KiB':>12} {'items':>6} {'tensors':>8} {'waiting':>8} {'RSS MiB':>8} {'service MiB':>12}"
)


def _print_row(w: Window, start: int) -> None:
    span = f"{start:,}-{w.end:,}"
    print(
        f"{span:>15} {w.us_per_step:8.0f} {w.traced_kib:11.0f} {w.gradema_kib:12.1f} {w.wandb_kib:10.1f} "
        f"{w.objects:11,d} {w.monitor_kib:12.1f} {w.monitor_items:6d} {w.monitor_tensors:8d} {w.waiting_rows:8d} "
        f"{w.rss_mib:8.1f} {w.service_rss_mib:12.1f}",
        flush=True,
    )


def growth(windows: Sequence[Window]) -> dict[str, float]:
    """How much each measure grew from the second window (after warm-up) to the last; for the
    time per step, the median of the later half of the windows over that of the earlier half
    (warm-up left out): on a shared machine single windows are noisy."""
    a, b = windows[1], windows[-1]
    times = [w.us_per_step for w in windows[1:]]
    half = len(times) // 2
    return {
        "us/step ratio": statistics.median(times[-half:]) / statistics.median(times[:half]),
        "traced KiB": b.traced_kib - a.traced_kib,
        "gradema KiB": b.gradema_kib - a.gradema_kib,
        "wandb KiB": b.wandb_kib - a.wandb_kib,
        "gc objects": b.objects - a.objects,
        "monitor KiB": b.monitor_kib - a.monitor_kib,
        "monitor items": b.monitor_items - a.monitor_items,
        "monitor tensors": b.monitor_tensors - a.monitor_tensors,
        "waiting rows": b.waiting_rows - a.waiting_rows,
        "RSS MiB": b.rss_mib - a.rss_mib,
        "service MiB": b.service_rss_mib - a.service_rss_mib,
    }


def failures(g: dict[str, float], *, steps: int, traced: bool) -> list[str]:
    """The growth checks that failed (empty: flat); ``steps`` from the second window to the last."""
    bad = [f"{k} grew by {g[k]:g} (at most {limit})" for k, limit in MAX_GROWTH.items()
           if (traced or not k.endswith(" KiB")) and g[k] > limit]
    allowed = MAX_OBJECTS_PER_1000_STEPS * steps / 1000
    if g["gc objects"] > allowed:
        bad.append(f"gc objects grew by {g['gc objects']:g} (at most {allowed:g})")
    if g["us/step ratio"] > MAX_TIME_RATIO:
        bad.append(f"time per step grew {g['us/step ratio']:.2f}x (at most {MAX_TIME_RATIO}x)")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="training steps (default 100,000)")
    parser.add_argument("--windows", type=int, default=10, help="measurement windows (default 10)")
    parser.add_argument("--sync-every", type=int, default=None, help="the monitor's sync_every (default: 1 on CPU)")
    parser.add_argument("--no-tracemalloc", action="store_true", help="time without tracemalloc's overhead")
    parser.add_argument("--keep", action="store_true", help="keep the offline W&B run (it is ~1 KiB a step)")
    args = parser.parse_args(argv)
    if args.windows < 3 or args.steps < args.windows:
        parser.error("--windows must be at least 3 and --steps at least --windows")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    warnings.filterwarnings("ignore", module="wandb")
    trace = not args.no_tracemalloc
    print(f"soak: {args.steps:,} steps, log_every=1, offline W&B, torch {torch.__version__}, "
          f"tracemalloc {'on' if trace else 'off'}, sync_every {args.sync_every or 'default'}")
    print(HEADER)
    tmp = Path(tempfile.mkdtemp(prefix="gradema-soak-"))
    windows, escalations = soak(args.steps, args.windows, sync_every=args.sync_every, trace=trace, wandb_dir=tmp)
    if args.keep:
        print(f"offline run kept under {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    g = growth(windows)
    print(f"\ngrowth from {windows[0].end:,} to {windows[-1].end:,} steps (escalations: {escalations}):")
    print("  " + ", ".join(f"{k} {v:+.3g}" if k != "us/step ratio" else f"{k} {v:.3f}" for k, v in g.items()))
    bad = failures(g, steps=windows[-1].end - windows[1].end, traced=trace)
    print("flat" if not bad else "NOT FLAT: " + "; ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
