"""Run specs: a plain dict fully describing one training run, so any run can be reproduced.

The fields mirror the ``spec`` of the shared dev traces (``shared_dev/labels.json``), plus
``clip_via``: how gradients are clipped when ``clip`` is set (``"monitor"``: the script calls
``monitor.clip_grad_norm_(clip)`` before stepping; ``"watch"``: ``watch(opt, max_norm=clip)``).
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
    "faults": [],  # [step, kind, arg]: kind "yshuffle" (arg unused) or "xscale" (arg: factor)
}

SCHEDULES = ("constant", "warmup_const", "warmup_linear", "warmup_cosine", "step")


def make_spec(**overrides: Any) -> Spec:
    """The defaults with ``overrides`` applied; rejects unknown fields and schedules."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"unknown spec fields: {sorted(unknown)}")
    spec = {**DEFAULTS, **overrides}
    if spec["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {spec['schedule']!r}")
    spec["faults"] = [list(f) for f in spec["faults"]]
    return spec


def spec_hash(spec: Spec) -> str:
    """Stable short hash of a spec and ``GENERATOR_VERSION`` (part of the trace cache key)."""
    blob = json.dumps({"v": GENERATOR_VERSION, **spec}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lr_factor(spec: Spec) -> Callable[[int], float]:
    """LR multiplier per step (for ``LambdaLR``).

    ``warmup_linear`` warms up over ``warmup`` steps (the whole run when 0: an LR ramp) and then
    decays linearly to 0; ``warmup_cosine`` decays along a cosine to 0 at the last step.
    """
    steps, warmup, kind = spec["steps"], spec["warmup"], spec["schedule"]
    ramp = warmup if warmup > 0 or kind != "warmup_linear" else steps

    def factor(t: int) -> float:
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
