"""Run specs: a plain dict fully describing one training run, so any run can be reproduced.

The fields mirror the ``spec`` of the shared dev traces (``shared_dev/labels.json``), plus
``clip_via``: how gradients are clipped when ``clip`` is set (``"monitor"``: the script calls
``monitor.clip_grad_norm_(clip)`` before stepping; ``"watch"``: ``watch(opt, max_norm=clip)``),
and the fields of the extended suite (``EXTENDED_FIELDS``): fine-tuning from a pretrained state,
unfreezing mid-run, a late LR bug, warm restarts and cyclic schedules. Those are left out of the
hash while they hold their defaults, so the traces of the original suite keep their cache keys.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

#: Bump when training code changes in a way that changes traces: invalidates the cache.
GENERATOR_VERSION = 1

Spec = dict[str, Any]

DEFAULTS: Spec = {
    "task": "digits",  # digits | cancer | regress | charlm
    "model": "mlp",  # mlp | cnn | gru | transformer
    "optimizer": "adam",  # sgd (with momentum) | adam | adamw
    "lr": 1e-3,
    "steps": 300,
    "batch_size": 32,
    "seed": 0,
    "schedule": "constant",  # constant | warmup_const | warmup_linear | warmup_cosine | step
    "warmup": 0,
    "step_every": 100,
    "step_gamma": 0.1,  # > 1 is the "LR bug": the step schedule multiplies the LR
    "momentum": 0.9,
    "weight_decay": 0.0,
    "clip": None,
    "clip_via": "monitor",
    "width": 128,
    "depth": 2,
    "act": "relu",  # relu | tanh | sigmoid (MLP and CNN)
    "bias_init": None,  # constant for every hidden bias (very negative: dead ReLUs)
    "weight_scale": 1.0,  # multiplies every initial weight matrix
    "norm_first": True,  # transformer: pre-LN (True) or post-LN
    "unscaled": False,  # tabular tasks: raw features instead of standardised ones
    "faults": [],  # [step, kind, arg]: "yshuffle" (arg unused), "xscale" (factor), "ynoise" (sd)
    # ---- the extended suite (left out of the hash at these defaults)
    "pretrain_steps": 0,  # > 0: a fine-tune: Adam(pretrain_lr) trains first, then a fresh optimizer
    "pretrain_lr": 1e-3,
    "unfreeze_at": None,  # only the output layer trains until this step, then the rest joins ...
    "unfreeze_lr": None,  # ... as a new param group (``add_param_group``) with this LR
    "bug_at": None,  # the LR is multiplied by ``bug_factor`` from this step on (a late schedule bug)
    "bug_factor": 10.0,
    "cycle_low": 0.0,  # restarts / cyclic schedules: the low point, as a fraction of ``lr``
    "restart_mult": 1,  # cosine_restarts: each period is this many times the previous one
}

#: Fields added with the extended suite: hashed only when they differ from their defaults.
EXTENDED_FIELDS = (
    "pretrain_steps", "pretrain_lr", "unfreeze_at", "unfreeze_lr", "bug_at", "bug_factor",
    "cycle_low", "restart_mult",
)  # fmt: skip

SCHEDULES = (
    "constant", "warmup_const", "warmup_linear", "warmup_cosine", "step",
    "cosine_restarts", "cyclic", "onecycle",
)  # fmt: skip


def make_spec(**overrides: Any) -> Spec:
    """The defaults with ``overrides`` applied; rejects unknown fields and schedules."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown spec fields: {sorted(unknown)}")
    spec = {**DEFAULTS, **overrides}
    if spec["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {spec['schedule']!r}")
    if spec["unfreeze_at"] is not None and (spec["schedule"] != "constant" or spec["unfreeze_lr"] is None):
        raise ValueError("`unfreeze_at` needs `unfreeze_lr` and the constant schedule")
    spec["faults"] = [list(f) for f in spec["faults"]]
    return spec


def spec_hash(spec: Spec) -> str:
    """Stable short hash of a spec and ``GENERATOR_VERSION`` (part of the trace cache key)."""
    kept = {k: v for k, v in spec.items() if k not in EXTENDED_FIELDS or v != DEFAULTS[k]}
    blob = json.dumps({"v": GENERATOR_VERSION, **kept}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lr_factor(spec: Spec) -> Callable[[int], float]:
    """LR multiplier per step (for ``LambdaLR``).

    ``warmup_linear`` warms up over ``warmup`` steps (the whole run when 0: an LR ramp) and then
    decays linearly to 0; ``warmup_cosine`` decays along a cosine to 0 at the last step;
    ``cosine_restarts`` (SGDR) decays along a cosine to ``cycle_low`` over ``step_every`` steps
    and restarts, each period ``restart_mult`` times the previous; ``cyclic`` is triangular
    between ``cycle_low`` and 1 with period ``step_every``; ``onecycle`` rises from 1/25 to 1 over
    30% of the run and decays to ~0 along a cosine. ``bug_at`` multiplies by ``bug_factor`` from
    that step on, on top of any schedule.
    """
    base = _schedule(spec)
    bug_at, bug = spec.get("bug_at"), spec.get("bug_factor", 1.0)
    if bug_at is None:
        return base
    return lambda t: base(t) * (bug if t >= bug_at else 1.0)


def _schedule(spec: Spec) -> Callable[[int], float]:
    steps, warmup, kind = spec["steps"], spec["warmup"], spec["schedule"]
    ramp = warmup if warmup > 0 or kind != "warmup_linear" else steps
    low = spec.get("cycle_low", 0.0)

    def factor(t: int) -> float:
        if kind == "cosine_restarts":
            if t < warmup:
                return (t + 1) / warmup
            t, period = t - warmup, spec["step_every"]
            while t >= period:
                t, period = t - period, period * spec.get("restart_mult", 1)
            return low + (1 - low) * 0.5 * (1.0 + math.cos(math.pi * t / period))
        if kind == "cyclic":
            phase = (t % spec["step_every"]) / spec["step_every"]
            return low + (1 - low) * (1 - abs(2 * phase - 1))
        if kind == "onecycle":
            rise = max(1, int(0.3 * steps))
            if t < rise:
                return 1 / 25 + (1 - 1 / 25) * 0.5 * (1 - math.cos(math.pi * t / rise))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * (t - rise) / max(1, steps - 1 - rise)))
        if kind == "constant":
            return 1.0
        if kind == "step":
            return spec["step_gamma"] ** (t // spec["step_every"])
        if t < ramp:
            return (t + 1) / ramp
        if kind == "warmup_linear":
            return max(0.0, (steps - 1 - t) / max(1, steps - 1 - ramp))
        if kind == "warmup_cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (t - ramp) / max(1, steps - 1 - ramp)))
        return 1.0

    return factor
