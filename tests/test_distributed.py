"""torch.distributed on CPU (2 gloo processes): same norms, same decisions, rank 0 logs.

Workers write what they saw to JSON files; the test process asserts on them.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import wandb_gradema

pytestmark = pytest.mark.ddp

WORLD = 2


def _init(rank: int, tmp: Path) -> None:
    torch.set_num_threads(1)
    os.environ["WANDB_DIR"] = str(tmp)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),  # collectives out of step fail fast, not in 30 min
    )


def _finish() -> None:
    """Leave the process group together: a rank tearing gloo down while the other is still in
    its last collective aborts that one ("terminate called without an active exception")."""
    dist.barrier()
    dist.destroy_process_group()


def _spawn(fn, *args, timeout: float = 180.0) -> None:
    """``mp.spawn`` with a deadline: a hang (ranks out of step) fails the test instead of CI."""
    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"ranks did not finish within {timeout:.0f} s: a collective out of step")


def _ddp_worker(rank: int, tmp: Path) -> None:
    _init(rank, tmp)
    import wandb

    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    config = {"gradema": {"log_every": 3, "patience": 4}}  # e.g. from a sweep: rank 0 has the run
    run = wandb.init(project="ddp", mode="offline", dir=str(tmp), config=config) if rank == 0 else None
    monitor = wandb_gradema.watch(opt, model=model, on_escalation="raise")
    norms, raised = [], None
    try:
        for step in range(10):
            g = torch.Generator().manual_seed(100 * rank + step)  # each rank its own batch
            x = torch.randn(16, 8, generator=g)
            loss = model(x).pow(2).mean()
            monitor.observe_loss(loss)  # per-rank losses differ: decisions must still agree
            loss.backward()
            if rank == 1 and step == 6:
                model.module[0].weight.grad.fill_(float("nan"))  # after the all-reduce: rank 1 only
            opt.step()
            opt.zero_grad()
            norms.append(monitor.last[0].grad_norm)
    except wandb_gradema.EscalationError as exc:
        raised = exc.step
    if run is not None:
        run.finish()
    (tmp / f"ddp{rank}.json").write_text(
        json.dumps({"norms": norms, "raised": raised, "events": [e.step for e in monitor.events],
                    "types": [list(e.anomaly_types) for e in monitor.events],
                    "options": [monitor.log_every, monitor.policy.patience]})
    )
    _finish()


def test_ddp_ranks_share_norms_and_decide_together_and_only_rank0_logs(tmp_path: Path) -> None:
    _spawn(_ddp_worker, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"ddp{r}.json").read_text()) for r in range(WORLD))
    assert len(r0["norms"]) == 6 and r0["norms"] == pytest.approx(r1["norms"], rel=1e-6)
    assert r0["raised"] == r1["raised"] == 6  # rank 0 saw no NaN, yet stops at the same step
    assert r1["types"] == [["nonfinite"]] and r0["types"] == [["other_rank"]]
    assert r0["options"] == r1["options"] == [3, 4]  # rank 0's run config reached rank 1
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # rank 0 only


def _sharded_worker(rank: int, tmp: Path) -> None:
    _init(rank, tmp)
    torch.manual_seed(0)
    full = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(4)]
    for p in full:
        p.grad = torch.randn_like(p)
    mine = full[rank::WORLD]  # each rank holds (and steps) half of the parameters
    opt = torch.optim.SGD(mine, lr=0.1)
    monitor = wandb_gradema.watch(opt, sharded=True)
    opt.step()
    local = wandb_gradema.watch(torch.optim.SGD([p for p in mine], lr=0.0), sharded=False)
    local.optimizer.step()
    expected = torch.nn.utils.get_total_norm([p.grad for p in full]).item()
    out = {"sharded": monitor.last[0].grad_norm, "local": local.last[0].grad_norm, "expected": expected}
    fsdp = _fsdp_norm(rank)
    if fsdp is not None:
        out["fsdp"] = fsdp
    out["fsdp1"] = _fsdp1_orig_params_norm(rank)
    (tmp / f"shard{rank}.json").write_text(json.dumps(out))
    _finish()


def _fsdp_norm(rank: int) -> dict | None:
    """FSDP2 on CPU/gloo where this torch supports it: the tracked norm is the full model's."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        return None
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    reference.load_state_dict(model.state_dict())
    try:
        fully_shard(model)
    except Exception as exc:  # noqa: BLE001 - report why FSDP did not run here
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = wandb_gradema.watch(opt)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(rank))
    model(x).pow(2).mean().backward()
    opt.step()
    xs = [torch.randn(6, 8, generator=torch.Generator().manual_seed(r)) for r in range(WORLD)]
    sum(reference(xi).pow(2).mean() for xi in xs).div(WORLD).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()]).item()
    return {"tracked": monitor.last[0].grad_norm, "expected": expected, "auto_sharded": monitor.sharded}


def _fsdp1_orig_params_norm(rank: int) -> dict:
    """FSDP1 with ``use_orig_params=True``: the optimizer holds views into the local shard
    (some empty on a rank); detected as sharded, the tracked norm is the full model's."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    reference = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    reference.load_state_dict(model.state_dict())
    try:
        wrapped = FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))
    except Exception as exc:  # noqa: BLE001 - report why FSDP1 did not run here
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    monitor = wandb_gradema.watch(opt)
    wrapped(torch.randn(6, 8, generator=torch.Generator().manual_seed(rank))).pow(2).mean().backward()
    opt.step()
    xs = [torch.randn(6, 8, generator=torch.Generator().manual_seed(r)) for r in range(WORLD)]
    sum(reference(xi).pow(2).mean() for xi in xs).div(WORLD).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()]).item()
    return {"tracked": monitor.last[0].grad_norm, "expected": expected, "auto_sharded": monitor.sharded}


def test_sharded_gradients_give_the_global_norm(tmp_path: Path) -> None:
    _spawn(_sharded_worker, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"shard{r}.json").read_text()) for r in range(WORLD))
    for r in (r0, r1):
        assert r["sharded"] == pytest.approx(r["expected"], rel=1e-5)
        assert r["local"] < r["expected"]  # without the reduction a rank sees only its shard
    if "skipped" not in r0["fsdp1"]:
        for r in (r0, r1):
            assert r["fsdp1"]["auto_sharded"] is True
            assert r["fsdp1"]["tracked"] == pytest.approx(r["fsdp1"]["expected"], rel=1e-5)
    if "fsdp" in r0:
        if "skipped" in r0["fsdp"]:
            pytest.skip(f"FSDP2 does not run on CPU/gloo here: {r0['fsdp']['skipped']}")
        for r in (r0, r1):
            assert r["fsdp"]["auto_sharded"] is True
            assert r["fsdp"]["tracked"] == pytest.approx(r["fsdp"]["expected"], rel=1e-5)


FIELD_STEPS = 60
NAN_RANK1_AT = 45


def _field_worker(rank: int, tmp: Path, sync_every: int) -> None:
    """A DDP script as users write it: ranks differ in everything but the gradients.

    Rank 0 alone has a W&B run (so only its adaptive cadence runs, on its own wall clock),
    saves checkpoints (``opt.state_dict()``) and reads ``monitor.last``, and sleeps now and
    then; every rank unfreezes a layer with ``add_param_group`` at step 30; rank 1 alone sees
    a NaN at step 45. The ranks must stop at the same step, on the same escalation.
    """
    _init(rank, tmp)
    import wandb

    torch.manual_seed(0)
    body = torch.nn.Linear(8, 16)
    model = torch.nn.Sequential(body, torch.nn.ReLU(), torch.nn.Linear(16, 1))
    for p in body.parameters():
        p.requires_grad_(False)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    run = wandb.init(project="ddp", mode="offline", dir=str(tmp)) if rank == 0 else None
    monitor = wandb_gradema.watch(opt, model=model, sync_every=sync_every, on_escalation="raise")
    stopped, event_step, types, norms = None, None, [], []
    step = -1
    try:
        for step in range(FIELD_STEPS):
            if step == 30:  # unfreeze on every rank (DDP then needs the new parameters' grads)
                for p in body.parameters():
                    p.requires_grad_(True)
                opt.add_param_group({"params": list(body.parameters()), "lr": 1e-4})
            g = torch.Generator().manual_seed(100 * rank + step)
            x = torch.randn(16, 8, generator=g)
            loss = ddp(x).pow(2).mean()
            monitor.observe_loss(loss)
            loss.backward()
            if rank == 1 and step == NAN_RANK1_AT:
                model[2].weight.grad.fill_(float("nan"))  # after the all-reduce: rank 1 only
            opt.step()
            opt.zero_grad()
            if rank == 0:
                if step % 10 == 3:
                    torch.save(opt.state_dict(), tmp / "ckpt.pt")  # reads back: never decides
                if step % 7 == 0:
                    norms.append(monitor.last[0].grad_norm)
                if step % 9 == 0:
                    time.sleep(0.03)  # rank 0's wall clock drifts from rank 1's
    except wandb_gradema.EscalationError as exc:
        stopped, event_step = step, exc.step
        types = [list(e.anomaly_types) for e in monitor.events]
    n_params = len(monitor.intake.watched.params)
    monitor.remove()
    if run is not None:
        run.finish()
    (tmp / f"field{rank}.json").write_text(json.dumps(
        {"stopped": stopped, "event": event_step, "types": types, "n_params": n_params, "norms": norms}
    ))
    _finish()


@pytest.mark.parametrize("sync_every", [1, 8], ids=["host", "deferred"])
def test_ranks_that_differ_like_real_ranks_stop_together(tmp_path: Path, sync_every: int) -> None:
    _spawn(_field_worker, tmp_path, sync_every)
    r0, r1 = (json.loads((tmp_path / f"field{r}.json").read_text()) for r in range(WORLD))
    decision = NAN_RANK1_AT if sync_every == 1 else (NAN_RANK1_AT // sync_every + 1) * sync_every - 1
    assert r0["stopped"] == r1["stopped"] == decision  # the same step on every rank
    assert r0["event"] == r1["event"] == NAN_RANK1_AT
    assert r1["types"] == [["nonfinite"]] and r0["types"] == [["other_rank"]]
    assert r0["n_params"] == r1["n_params"] == 4  # the unfrozen layer is measured too
    assert r0["norms"] and all(n > 0 for n in r0["norms"])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1


def _ticks_worker(rank: int, tmp: Path) -> None:
    _init(rank, tmp)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor = wandb_gradema.watch(opt, sync_every=4)
    if rank == 1:  # a checkpoint of a later step loaded on this rank only
        state = monitor.state_dict()
        state["ticks"] += 4
        state["step"] += 4
        monitor.load_state_dict(state)
    outcome = "no error"
    try:
        for _ in range(4):
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
    except wandb_gradema.GrademaError as exc:
        outcome = str(exc)
    (tmp / f"ticks{rank}.json").write_text(json.dumps(outcome))
    _finish()


def test_ranks_that_disagree_on_the_step_count_stop_with_a_clear_error(tmp_path: Path) -> None:
    """The decision all-reduce carries each rank's tick count: ranks out of step are named, not
    left to pair the monitor's collective with another one."""
    _spawn(_ticks_worker, tmp_path)
    for rank in range(WORLD):
        outcome = json.loads((tmp_path / f"ticks{rank}.json").read_text())
        assert "ranks disagree on the optimizer step count" in outcome and "between 4 and 8" in outcome
