"""A training script for the fault tests: run in a subprocess, killed, restarted, starved of W&B.

An ordinary resumable script: a small MLP, deterministic batches (seeded by step), a
checkpoint (model + optimizer, the monitor's state riding inside) every ``--ckpt-every``
steps, written atomically, and W&B with a fixed run id and ``resume="allow"``. Restarted with
the same arguments, it resumes from its last checkpoint. Faults are injected at fixed points:

* ``--block-at S``: after step S, print ``BLOCKED`` and wait to be SIGKILLed by the test;
* ``--kill-in-prune``: SIGKILL itself when a prune has written the summary and is about to
  finish the W&B run (the sink's ``finish``);
* ``--fault service-killed|disk-full`` at ``--fault-at S``: SIGKILL W&B's service process, or
  make every later write of it fail (its file-size limit set to what it has written:
  what a full or read-only disk does to it);
* ``--no-wandb``: ``wandb`` cannot be imported at all.

Escalations come from a NaN loss (``--nan-loss-at``): critical under any detector, and the
weights stay finite. At the end it writes ``result.json`` beside the checkpoint: the
monitor's ``state_dict()``, its events, the GrademaWarnings it saw, and how the run ended.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

RUN_ID = "faultrun1"


class _NoWandb:
    """A meta-path finder that makes ``import wandb`` fail, as if it were not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "wandb" or name.startswith("wandb."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def service_pids() -> list[int]:
    """Child processes of this one (W&B's service, wandb-core)."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me:
            found.append(int(entry))
    return found


def inject(fault: str) -> None:
    if fault == "service-killed":
        for pid in service_pids():
            os.kill(pid, signal.SIGKILL)
    elif fault == "disk-full":
        import resource

        for pid in service_pids():
            files = [Path(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
            sizes = [p.stat().st_size for p in files if str(p.resolve()).endswith(".wandb")]
            limit = max(sizes)
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
    print(f"FAULT {fault}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ckpt-every", type=int, default=10)
    p.add_argument("--sync-every", type=int, default=1)
    p.add_argument("--nan-loss-at", type=int, nargs="*", default=[])
    p.add_argument("--on-escalation", default="warn")
    p.add_argument("--block-at", type=int, default=None)
    p.add_argument("--kill-in-prune", action="store_true")
    p.add_argument("--fault", choices=["service-killed", "disk-full"], default=None)
    p.add_argument("--fault-at", type=int, default=None)
    p.add_argument("--no-wandb", action="store_true")
    p.add_argument("--user-log", action="store_true", help="the script logs its own loss every step")
    args = p.parse_args(argv)

    if args.no_wandb:
        sys.meta_path.insert(0, _NoWandb())
    import torch

    import wandb_gradema
    from wandb_gradema import GrademaWarning, RunPruned
    from wandb_gradema.wandb_sink import WandbSink

    torch.set_num_threads(1)  # the same arithmetic in every process
    if args.kill_in_prune:
        WandbSink.finish = lambda self, exit_code: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]

    caught: list[str] = []
    warnings.simplefilter("always", GrademaWarning)
    real_showwarning = warnings.showwarning

    def show(message: Any, category: Any, *rest: Any, **kw: Any) -> None:
        if issubclass(category, GrademaWarning):
            caught.append(str(message))
        real_showwarning(message, category, *rest, **kw)

    warnings.showwarning = show

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run = None
    if not args.no_wandb:
        import wandb

        run = wandb.init(project="gradema-faults", id=RUN_ID, resume="allow")
    monitor = wandb_gradema.watch(
        opt, model=model, log_every=1, sync_every=args.sync_every, on_escalation=args.on_escalation,
        telemetry_steps=3, cooldown_steps=5,
    )
    ckpt = args.dir / "ckpt.pt"
    start = 0
    if ckpt.exists():  # watch() first, then load: the monitor's state comes back with the optimizer's
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["step"]
    print(f"START {start}", flush=True)

    ended = "finished"
    try:
        for i in range(start, args.steps):
            if args.fault is not None and i == args.fault_at:
                inject(args.fault)
            g = torch.Generator().manual_seed(1000 + i)
            x = torch.randn(16, 8, generator=g)
            loss = torch.nn.functional.mse_loss(model(x), x.sum(dim=1, keepdim=True) * 0.3)
            monitor.observe_loss(float("nan") if i in args.nan_loss_at else loss)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if run is not None and args.user_log:
                run.log({"train/loss": loss.item()})
            if (i + 1) % args.ckpt_every == 0:
                tmp = ckpt.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": i + 1}, tmp)
                os.replace(tmp, ckpt)  # a kill while saving leaves the previous checkpoint whole
            if i == args.block_at:
                print("BLOCKED", flush=True)
                time.sleep(600)
    except RunPruned:
        ended = "pruned"
    finally:
        monitor.remove()
    if run is not None and ended == "finished":
        try:
            run.finish()
        except Exception as exc:  # noqa: BLE001 - a dead W&B service: the script's own call fails
            ended = f"finish raised {type(exc).__name__}"
    result = {
        "ended": ended,
        "start": start,
        "step": monitor.step,
        "state": monitor.state_dict(),
        "events": [[e.step, list(e.anomaly_types), e.confirmed] for e in monitor.events],
        "warnings": caught,
        "wandb_imported": "wandb" in sys.modules,
    }
    (args.dir / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
