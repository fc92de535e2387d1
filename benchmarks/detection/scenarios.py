"""The benchmark's scenarios: families of runs by failure mechanism, split into dev and test.

Each family lists concrete configs (variants). Variants alternate between the splits (even
index: ``dev``, odd: ``test``) and get split-specific seeds, so the test split holds different
seeds *and* different configs of the same mechanisms. The family prefix says what the scenario
is meant to produce (``h``ealthy, ``d``iverged, ``c``ollapsed); the label is always computed from
the trajectory (``labels.py``), never taken from the name.
"""

from __future__ import annotations

from typing import Any

from .spec import Spec, make_spec

SPLITS = ("dev", "test")
TEST_SEED_OFFSET = 100
#: ``holdout``: every variant of both splits again, with seeds no other split uses. Nothing was
#: tuned on it: it judges whether the defaults generalise beyond the runs they were chosen on.
HOLDOUT_SEED_OFFSET = 1000

CNN: dict[str, Any] = {"model": "cnn"}
CANCER: dict[str, Any] = {"task": "cancer", "width": 32}
REG: dict[str, Any] = {"task": "regress", "width": 64}
GRU: dict[str, Any] = {"task": "charlm", "model": "gru", "width": 64, "depth": 1, "batch_size": 16}
TF: dict[str, Any] = {"task": "charlm", "model": "transformer", "width": 64, "depth": 2, "batch_size": 16}
SGD: dict[str, Any] = {"optimizer": "sgd"}
RAMP: dict[str, Any] = {"schedule": "warmup_linear", "warmup": 0}  # LR rises linearly all run


def _bug(at: int) -> dict[str, Any]:
    """The "LR bug": a step schedule that multiplies the LR by 10 at step ``at``."""
    return {"schedule": "step", "step_every": at, "step_gamma": 10.0}


def _cos(warmup: int) -> dict[str, Any]:
    return {"schedule": "warmup_cosine", "warmup": warmup}


FAMILIES: dict[str, list[dict[str, Any]]] = {
    # ---------------------------------------------------------------- healthy, incl. the traps
    "h_mlp_adam": [
        {"lr": 1e-3},
        {"lr": 2e-3, "width": 64},
        {"lr": 5e-4, "width": 256},
        {"lr": 1e-3, "depth": 3, "width": 96},
    ],
    "h_mlp_sgd": [
        {**SGD, "lr": 0.05},
        {**SGD, "lr": 0.1, "width": 64},
        {**SGD, "lr": 0.03, "batch_size": 16},
        {**SGD, "lr": 0.08, "depth": 3},
    ],
    "h_mlp_small_batch": [
        {"optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "weight_decay": 0.01, **_cos(50)},
        {"optimizer": "adamw", "lr": 2e-3, "batch_size": 8, "weight_decay": 0.05, **_cos(30)},
        {"lr": 1e-3, "batch_size": 4, "schedule": "warmup_linear", "warmup": 40},
        {"optimizer": "adamw", "lr": 5e-4, "batch_size": 8, "schedule": "warmup_const", "warmup": 60},
    ],
    "h_mlp_corrupt": [
        {**SGD, "lr": 0.05, "faults": [[80, "yshuffle", 0], [81, "yshuffle", 0], [160, "yshuffle", 0]]},
        {"lr": 1e-3, "faults": [[100, "xscale", 10.0], [101, "xscale", 10.0]]},
        {**SGD, "lr": 0.05, "faults": [[120, "xscale", 20.0]]},
        {
            "lr": 2e-3,
            "faults": [[90, "yshuffle", 0], [91, "yshuffle", 0], [92, "yshuffle", 0], [200, "yshuffle", 0]],
        },
    ],
    "h_cnn": [
        {**CNN, **SGD, "lr": 0.05, "batch_size": 16, **_cos(40)},
        {**CNN, "lr": 1e-3, "batch_size": 8},
        {**CNN, **SGD, "lr": 0.03, "schedule": "step", "step_every": 150},
        {**CNN, "lr": 5e-4, "batch_size": 16, **_cos(30)},
    ],
    "h_cancer": [
        {**CANCER, **SGD, "lr": 0.01, "batch_size": 16, "schedule": "step", "step_every": 150},
        {**CANCER, "lr": 3e-3, "batch_size": 8},
        {**CANCER, **SGD, "lr": 0.02, **_cos(30)},
        {**CANCER, "optimizer": "adamw", "lr": 1e-3, "batch_size": 4, "weight_decay": 0.01},
    ],
    "h_reg": [
        {**REG, "lr": 3e-3, "batch_size": 16, **_cos(30)},
        {**REG, **SGD, "lr": 0.02, "schedule": "step", "step_every": 100, "step_gamma": 0.3},
        {**REG, "lr": 1e-3, "batch_size": 8},
        {**REG, **SGD, "lr": 0.05, "clip": 1.0, "schedule": "warmup_const", "warmup": 50},
    ],
    "h_gru": [
        {**GRU, "lr": 5e-3, "clip": 1.0, **_cos(30)},
        {**GRU, "lr": 3e-3, "clip": 0.5, "clip_via": "watch"},
        {**GRU, "lr": 1e-2, "clip": 1.0, "batch_size": 8, "schedule": "step", "step_every": 150},
        {
            **GRU,
            "optimizer": "adamw",
            "lr": 4e-3,
            "clip": 1.0,
            "clip_via": "watch",
            "schedule": "warmup_linear",
            "warmup": 50,
        },
    ],
    "h_tf": [
        {**TF, "lr": 3e-3, "batch_size": 8, **_cos(50)},
        {**TF, "optimizer": "adamw", "lr": 2e-3, "schedule": "warmup_const", "warmup": 40},
        {**TF, "lr": 1e-3},
        {**TF, "lr": 3e-3, "clip": 1.0, "clip_via": "watch", **_cos(30)},
    ],
    "h_clip": [
        {**SGD, "lr": 0.2, "clip": 1.0},
        {**SGD, "lr": 0.3, "clip": 0.5, "clip_via": "watch"},
        {**CNN, **SGD, "lr": 0.1, "clip": 1.0},
        {**REG, **SGD, "lr": 0.1, "clip": 0.5, "clip_via": "watch"},
    ],
    # ---------------------------------------------------------------- diverged
    "d_lr_high": [
        {**SGD, "lr": 0.5},
        {**SGD, "lr": 0.8},
        {**SGD, "lr": 1.0, "width": 64},
        {**SGD, "lr": 0.6, "batch_size": 16},
        {**CNN, **SGD, "lr": 0.3},
        {**REG, **SGD, "lr": 0.3},
        {**CANCER, **SGD, "lr": 3.0},
        {**CANCER, **SGD, "lr": 2.0, "batch_size": 16},
        {**REG, **SGD, "lr": 2.0},  # NaN within a few steps
        {**SGD, "lr": 5.0, "width": 64},
    ],
    "d_lr_ramp": [
        {**SGD, "lr": 2.0, **RAMP},
        {**CNN, **SGD, "lr": 0.5, **RAMP},
        {**CANCER, **SGD, "lr": 5.0, **RAMP},
        {**TF, **SGD, "lr": 5.0, **RAMP},
        {**REG, **SGD, "lr": 1.0, **RAMP},
        {**GRU, **SGD, "lr": 10.0, **RAMP},
        {**CNN, **SGD, "lr": 0.8, **RAMP},
        {**SGD, "lr": 3.0, "width": 64, **RAMP},
        {"optimizer": "adamw", "lr": 0.3, **RAMP},
        {**GRU, **SGD, "lr": 5.0, **RAMP},
    ],
    "d_lr_bug": [
        {**SGD, "lr": 0.05, **_bug(100)},
        {"lr": 2e-3, **_bug(100)},
        {**GRU, **SGD, "lr": 1.0, **_bug(150)},
        {**CNN, **SGD, "lr": 0.03, **_bug(120)},
        {**REG, **SGD, "lr": 0.03, **_bug(150)},
        {**CANCER, **SGD, "lr": 0.1, **_bug(100)},
        {**TF, "lr": 0.01, **_bug(150)},
        {**SGD, "lr": 0.1, **_bug(200)},
        {**CANCER, "lr": 0.01, **_bug(100)},
        {**TF, **SGD, "lr": 0.3, **_bug(150)},
    ],
    "d_warmup_too_high": [
        {**REG, **SGD, "lr": 0.25, "schedule": "warmup_const", "warmup": 150},
        {**SGD, "lr": 1.0, "schedule": "warmup_const", "warmup": 100},
        {**CNN, **SGD, "lr": 0.5, **_cos(100)},
        {**TF, **SGD, "lr": 3.0, "schedule": "warmup_const", "warmup": 100},
        {**REG, **SGD, "lr": 0.5, "schedule": "warmup_const", "warmup": 100},
        {**SGD, "lr": 1.5, "width": 64, "schedule": "warmup_const", "warmup": 80},
    ],
    "d_huge_wd": [
        {"optimizer": "adamw", "lr": 0.01, "weight_decay": 500.0},
        {"optimizer": "adamw", "lr": 0.02, "weight_decay": 300.0},
    ],
    # ---------------------------------------------------------------- collapsed
    "c_dead_relu": [
        {"bias_init": -5.0},
        {**SGD, "lr": 0.05, "bias_init": -4.0},
        {**CNN, "bias_init": -5.0},
        {"optimizer": "adamw", "bias_init": -6.0, "width": 64},
    ],
    "c_wd_huge": [
        {**SGD, "lr": 0.1, "weight_decay": 5.0},
        {**SGD, "lr": 0.2, "weight_decay": 3.0},
        {**CNN, **SGD, "lr": 0.05, "weight_decay": 10.0},
        {**CANCER, **SGD, "lr": 0.1, "weight_decay": 10.0},
    ],
    "c_lr_tiny": [
        {**SGD, "lr": 1e-5},
        {**TF, "lr": 1e-6},
        {**CNN, **SGD, "lr": 1e-5},
        {**GRU, "lr": 1e-6},
    ],
    "c_adam_lr_high": [
        {**GRU, "lr": 0.5},
        {**TF, "lr": 0.2},
        {**TF, "lr": 0.05, "norm_first": False},
        {**GRU, "lr": 0.6, "width": 96},
    ],
    "c_vanish": [
        {**SGD, "lr": 0.01, "act": "sigmoid", "depth": 8, "width": 64},
        {**SGD, "lr": 0.01, "act": "tanh", "depth": 10, "width": 64, "weight_scale": 0.3},
        {"lr": 1e-3, "act": "sigmoid", "depth": 10, "width": 64},
        {**SGD, "lr": 0.05, "act": "sigmoid", "depth": 6, "width": 128, "weight_scale": 0.5},
    ],
}

#: A handful of unambiguous dev scenarios for CI: (family, variant index).
QUICK = (
    ("h_mlp_adam", 0),
    ("h_clip", 0),
    ("h_cancer", 0),
    ("d_lr_high", 0),
    ("d_lr_high", 8),
    ("c_dead_relu", 0),
)


def _seed(split: str, variant: int) -> int:
    return variant + (TEST_SEED_OFFSET if split == "test" else 0)


def scenarios(split: str) -> list[tuple[str, Spec]]:
    """The named specs of ``split``: ``dev``, ``test``, ``holdout`` or ``quick`` (dev variants, for CI)."""
    if split == "quick":
        return [(f"{fam}-{i}", make_spec(**FAMILIES[fam][i], seed=_seed("dev", i))) for fam, i in QUICK]
    if split == "holdout":
        return [
            (f"{fam}-{i}", make_spec(**cfg, seed=HOLDOUT_SEED_OFFSET + i))
            for fam, variants in FAMILIES.items()
            for i, cfg in enumerate(variants)
        ]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS + ('holdout', 'quick')}")
    parity = SPLITS.index(split)
    return [
        (f"{fam}-{i}", make_spec(**cfg, seed=_seed(split, i)))
        for fam, variants in FAMILIES.items()
        for i, cfg in enumerate(variants)
        if i % 2 == parity
    ]
