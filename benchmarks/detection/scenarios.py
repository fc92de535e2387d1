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
#: ``holdout2``: every variant once more, with seeds of its own. Added before the second tuning
#: pass (the first holdout had been looked at once): looked at once, at the end of that pass.
HOLDOUT2_SEED_OFFSET = 3000
#: ``holdout3``: again, for the fixes that the look at ``holdout2`` called for; looked at once.
HOLDOUT3_SEED_OFFSET = 5000
#: ``holdout4``: again, made before the third tuning pass (``holdout3`` had been looked at once):
#: looked at once, at the end of that pass.
HOLDOUT4_SEED_OFFSET = 7000
#: The extended suite (``EXTENDED``) has splits of its own, named with this prefix.
EXTENDED_PREFIX = "ext-"
EXTENDED_SPLITS = ("ext-dev", "ext-test", "ext-holdout", "ext-holdout2", "ext-holdout3", "ext-holdout4")
EXTENDED_HOLDOUT_SEED_OFFSET = 2000
EXTENDED_HOLDOUT2_SEED_OFFSET = 4000
EXTENDED_HOLDOUT3_SEED_OFFSET = 6000
EXTENDED_HOLDOUT4_SEED_OFFSET = 8000
#: The blow-up suite (``BLOWUP``, issue 18): a dev split to tune on and holdouts never tuned on.
#: ``blowup-holdout`` was looked at once, at the end of the first pass; ``blowup-holdout2`` was
#: made before the second pass (the noise-aware spike bar) and is looked at once, at its end.
BLOWUP_PREFIX = "blowup-"
#: ``blowup-holdout3`` was made before the warm-up norm excursions (``norm_spike``), after the one
#: look at ``blowup-holdout2``: looked at once, at the end. ``blowup-holdout4`` was made (with the
#: later blow-ups, ``h_late_burst`` and ``d_late_blowup``) before the third pass (blow-ups after
#: the warm-up, the label of a run that stops far short of its task): looked at once, at its end.
BLOWUP_SPLITS = ("blowup-dev", "blowup-holdout", "blowup-holdout2", "blowup-holdout3", "blowup-holdout4")
BLOWUP_SEEDS = {
    "blowup-dev": 9000,
    "blowup-holdout": 9500,
    "blowup-holdout2": 9700,
    "blowup-holdout3": 9900,
    "blowup-holdout4": 10100,
}
#: Every holdout: every variant, with seeds no other split uses.
HOLDOUT_SEEDS = {
    "holdout": HOLDOUT_SEED_OFFSET,
    "holdout2": HOLDOUT2_SEED_OFFSET,
    "ext-holdout": EXTENDED_HOLDOUT_SEED_OFFSET,
    "ext-holdout2": EXTENDED_HOLDOUT2_SEED_OFFSET,
    "holdout3": HOLDOUT3_SEED_OFFSET,
    "ext-holdout3": EXTENDED_HOLDOUT3_SEED_OFFSET,
    "holdout4": HOLDOUT4_SEED_OFFSET,
    "ext-holdout4": EXTENDED_HOLDOUT4_SEED_OFFSET,
}

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


def _holdout(families: dict[str, list[dict[str, Any]]], offset: int) -> list[tuple[str, Spec]]:
    """Every variant of ``families``, seeded ``offset + index``."""
    return [
        (f"{fam}-{i}", make_spec(**cfg, seed=offset + i))
        for fam, variants in families.items()
        for i, cfg in enumerate(variants)
    ]


def _seed(split: str, variant: int) -> int:
    return variant + (TEST_SEED_OFFSET if split == "test" else 0)


def scenarios(split: str) -> list[tuple[str, Spec]]:
    """The named specs of ``split``: ``dev``, ``test``, ``holdout``, ``holdout2``, ``holdout3``,
    ``holdout4`` or ``quick`` (dev variants, for CI); ``ext-dev``, ``ext-test``, ``ext-holdout``,
    ``ext-holdout2``, ``ext-holdout3``, ``ext-holdout4`` for the extended suite; ``blowup-dev``,
    ``blowup-holdout``, ``blowup-holdout2``, ``blowup-holdout3``, ``blowup-holdout4`` for the blow-up suite."""
    if split.startswith(EXTENDED_PREFIX):
        return _extended(split)
    if split.startswith(BLOWUP_PREFIX):
        if split not in BLOWUP_SEEDS:
            raise ValueError(f"unknown split {split!r}; expected one of {BLOWUP_SPLITS}")
        return _holdout(BLOWUP, BLOWUP_SEEDS[split])
    if split == "quick":
        return [(f"{fam}-{i}", make_spec(**FAMILIES[fam][i], seed=_seed("dev", i))) for fam, i in QUICK]
    if split in HOLDOUT_SEEDS:
        return _holdout(FAMILIES, HOLDOUT_SEEDS[split])
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS + (*HOLDOUT_SEEDS, 'quick')}")
    parity = SPLITS.index(split)
    return [
        (f"{fam}-{i}", make_spec(**cfg, seed=_seed(split, i)))
        for fam, variants in FAMILIES.items()
        for i, cfg in enumerate(variants)
        if i % 2 == parity
    ]


# ==================================================================== the extended suite
# Runs people sweep beyond 300 steps from scratch: tiny noisy batches, long schedules with late
# bursts of corrupted batches, fine-tunes, late learners, warm restarts and cyclic LRs, late
# failures. Same scheme: even variants in ``ext-dev``, odd ones in ``ext-test`` (seed + 100),
# every variant in ``ext-holdout`` to ``ext-holdout4`` with seeds nothing else uses.
SUM16: dict[str, Any] = {"task": "sum16", "width": 64}
SINE16: dict[str, Any] = {"task": "sine16", "width": 64}
SIGN16: dict[str, Any] = {"task": "sign16", "width": 64}
PARITY: dict[str, Any] = {"task": "parity", "width": 128}
TANH6: dict[str, Any] = {"task": "regress", "width": 64, "depth": 6, "act": "tanh"}


def _burst(kind: str, at: int, n: int, arg: float = 0.0) -> dict[str, Any]:
    """``n`` corrupted batches in a row from step ``at``."""
    return {"faults": [[at + i, kind, arg] for i in range(n)]}


def _ft(steps: int, **kw: Any) -> dict[str, Any]:
    """A fine-tune: ``steps`` of Adam pretraining first."""
    return {"pretrain_steps": steps, **kw}


EXTENDED: dict[str, list[dict[str, Any]]] = {
    # ---------------------------------------------------------------- healthy
    "h_noisy_reg": [  # the plain loops: MSE over 2-8 examples, Adam or SGD, clipped or not
        {**SUM16, "lr": 1e-3, "batch_size": 8, "steps": 400},
        {**SUM16, "lr": 3e-4, "batch_size": 4, "steps": 500},
        {**SINE16, "lr": 1e-3, "batch_size": 8, "steps": 500},
        {**SINE16, "lr": 3e-4, "batch_size": 2, "steps": 800},
        {**SUM16, **SGD, "momentum": 0.0, "lr": 0.01, "batch_size": 8, "clip": 1.0, "steps": 400},
        {**SINE16, "lr": 1e-3, "batch_size": 4, "clip": 1.0, "clip_via": "watch", "steps": 800},
        {**REG, "lr": 1e-3, "batch_size": 2, "steps": 500},
        {**SUM16, "optimizer": "adamw", "lr": 3e-3, "batch_size": 4, "weight_decay": 0.01, **_cos(30), "steps": 500},
    ],
    "h_noisy_bce": [
        {**CANCER, "lr": 1e-3, "batch_size": 2, "steps": 500},
        {**CANCER, **SGD, "lr": 0.01, "batch_size": 4, "steps": 500},
        {**SIGN16, "lr": 3e-3, "batch_size": 8, "steps": 800},
        {**SIGN16, "optimizer": "adamw", "lr": 3e-3, "batch_size": 8, "weight_decay": 0.01, **_cos(50), "steps": 800},
        {**CANCER, "lr": 3e-4, "batch_size": 4, "clip": 1.0, "steps": 500},
        {**CANCER, **SGD, "momentum": 0.0, "lr": 0.05, "batch_size": 2, "steps": 500},
    ],
    "h_long": [  # 1,000-3,000 steps, decaying schedules, bursts of corrupted batches late
        {**SGD, "lr": 0.05, "steps": 2000, **_cos(100), **_burst("yshuffle", 1400, 5)},
        {**REG, "lr": 2e-3, "steps": 1500, "schedule": "step", "step_every": 500, "step_gamma": 0.3, **_burst("ynoise", 1000, 4, 5.0)},
        {**CNN, "lr": 1e-3, "batch_size": 16, "steps": 1500, **_cos(100), **_burst("xscale", 900, 6, 10.0)},
        {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "batch_size": 16, "steps": 3000, **_cos(200),
         "faults": [[1200 + i, "yshuffle", 0] for i in range(3)] + [[2400 + i, "yshuffle", 0] for i in range(5)]},
        {**SINE16, "lr": 1e-3, "batch_size": 8, "steps": 2000, **_cos(100), **_burst("ynoise", 1500, 5, 3.0)},
        {**GRU, "lr": 5e-3, "clip": 1.0, "steps": 1000, **_cos(50), **_burst("yshuffle", 700, 4)},
        {**SGD, "lr": 0.05, "steps": 1500, "schedule": "step", "step_every": 600, **_burst("xscale", 1000, 3, 20.0)},
        {**SUM16, "lr": 1e-3, "batch_size": 8, "steps": 2500, **_cos(100), **_burst("ynoise", 2000, 6, 20.0)},
    ],
    "h_finetune": [  # from a pretrained state, fresh optimizer, small LR: a few % of progress
        {**SINE16, **_ft(500), "lr": 1e-4, "batch_size": 8, "steps": 400},
        {**_ft(150), "lr": 1e-4, "batch_size": 16, "steps": 400},
        {**CANCER, **_ft(100), **SGD, "lr": 3e-3, "batch_size": 16, "steps": 400},
        {**_ft(300), "lr": 1e-4, "steps": 400, "unfreeze_at": 100, "unfreeze_lr": 1e-3},  # add_param_group, 10x LR
        {**REG, **_ft(400), "lr": 1e-2, "steps": 400},  # a fresh Adam kicks the model, which recovers
        {**GRU, **_ft(300, pretrain_lr=5e-3), "lr": 3e-4, "steps": 300},
        {**SUM16, **_ft(300), **SGD, "lr": 1e-3, "batch_size": 8, "steps": 400},
        {**REG, **_ft(200), "optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.01, **_cos(20), "steps": 400},
    ],
    "h_late": [  # a plateau of 100-250 steps, then learning
        {**PARITY, "lr": 3e-4, "steps": 800},
        {**PARITY, "width": 64, "lr": 5e-4, "batch_size": 16, "steps": 800},
        {**TANH6, "weight_scale": 0.5, **SGD, "lr": 0.02, "steps": 800},
        {**PARITY, **SGD, "lr": 0.02, "steps": 800},
        {**TANH6, "weight_scale": 0.1, "lr": 3e-4, "steps": 800},
        {**TANH6, "weight_scale": 0.5, **SGD, "lr": 0.03, "steps": 800},
    ],
    "h_cyclic": [  # warm restarts, cyclic and one-cycle schedules
        {**SGD, "lr": 0.1, "steps": 1500, "schedule": "cosine_restarts", "step_every": 200, "restart_mult": 2},
        {**REG, **SGD, "lr": 0.05, "steps": 1500, "schedule": "cyclic", "step_every": 300, "cycle_low": 0.05},
        {"lr": 3e-3, "steps": 1200, "schedule": "onecycle"},
        {**CNN, **SGD, "lr": 0.05, "batch_size": 16, "steps": 1200, "schedule": "cosine_restarts", "step_every": 300, "warmup": 50},
        {**SINE16, "lr": 3e-3, "batch_size": 8, "steps": 1500, "schedule": "cyclic", "step_every": 400, "cycle_low": 0.1},
        {**GRU, "lr": 5e-3, "clip": 1.0, "steps": 1000, "schedule": "cosine_restarts", "step_every": 250},
        {**CANCER, **SGD, "lr": 0.05, "steps": 1000, "schedule": "onecycle"},
        {**SUM16, "lr": 3e-3, "batch_size": 8, "steps": 1500, "schedule": "cosine_restarts", "step_every": 300},
    ],
    # ---------------------------------------------------------------- diverged
    "d_noisy": [  # LRs too high, under the noise of 4-8 examples per batch
        {**SUM16, **SGD, "lr": 0.02, "batch_size": 4, "steps": 400},
        {**CANCER, **SGD, "lr": 1.0, "batch_size": 4, "steps": 400},
        {**SUM16, "lr": 0.3, "batch_size": 8, "steps": 500, **RAMP},
        {**SUM16, **SGD, "lr": 0.05, "batch_size": 4, "steps": 500, "schedule": "warmup_const", "warmup": 200},
        {**CANCER, **SGD, "lr": 5.0, "batch_size": 4, "steps": 500, **RAMP},
        {**SUM16, **SGD, "lr": 0.05, "batch_size": 8, "steps": 500, **RAMP},
    ],
    "d_forget": [  # fine-tunes with an LR far too high: the loss doubles and stays
        {**_ft(300), "lr": 3e-2, "steps": 400},
        {**_ft(300), **SGD, "lr": 0.5, "steps": 400},
        {**GRU, **_ft(300, pretrain_lr=5e-3), "lr": 0.2, "steps": 300},
        {**SINE16, **_ft(500), "lr": 0.1, "batch_size": 16, "steps": 400},
        {**CANCER, **_ft(300), **SGD, "lr": 2.0, "batch_size": 16, "steps": 400},
        {**REG, **_ft(300), **SGD, "lr": 0.15, "steps": 400},
        {**SUM16, **_ft(300), "lr": 0.1, "batch_size": 8, "steps": 400},
        {**TF, **_ft(300, pretrain_lr=3e-3), "lr": 0.03, "steps": 300},
    ],
    "d_late": [  # late failures: a schedule bug after step 800, slow momentum divergence, long ramps
        {**SGD, "lr": 0.05, "steps": 1500, "bug_at": 900, "bug_factor": 20.0},
        {**REG, **SGD, "lr": 0.02, "momentum": 0.99, "steps": 1500},
        {"lr": 1e-3, "steps": 1500, "bug_at": 1000, "bug_factor": 100.0},
        {**CNN, **SGD, "lr": 0.03, "steps": 1200, "bug_at": 850, "bug_factor": 20.0},
        {**SGD, "lr": 1.5, "steps": 2000, **RAMP},
        {**REG, "lr": 1e-3, "steps": 1500, **_cos(100), "bug_at": 1000, "bug_factor": 100.0},
        {**CANCER, **SGD, "lr": 0.01, "steps": 1200, "bug_at": 800, "bug_factor": 300.0},
        {**GRU, **SGD, "lr": 1.0, "steps": 1200, "bug_at": 900, "bug_factor": 10.0},
    ],
    # ---------------------------------------------------------------- collapsed
    "c_extended": [  # dead from the start, in noisy or deep settings
        {**PARITY, "bias_init": -5.0, "batch_size": 8, "steps": 500},
        {**TANH6, "depth": 8, "weight_scale": 0.5, **SGD, "lr": 0.05, "steps": 800},
        {**SINE16, **SGD, "lr": 0.05, "act": "sigmoid", "depth": 8, "steps": 500},
        {**SIGN16, "bias_init": -5.0, "batch_size": 4, "steps": 500},
        {**TANH6, "weight_scale": 0.4, **SGD, "lr": 0.05, "steps": 800},
        {**PARITY, "lr": 1e-6, "steps": 600},
    ],
}


def _extended(split: str) -> list[tuple[str, Spec]]:
    if split not in EXTENDED_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {EXTENDED_SPLITS}")
    if split in HOLDOUT_SEEDS:
        return _holdout(EXTENDED, HOLDOUT_SEEDS[split])
    parity = EXTENDED_SPLITS.index(split)
    return [
        (f"{fam}-{i}", make_spec(**cfg, seed=i + (TEST_SEED_OFFSET if parity else 0)))
        for fam, variants in EXTENDED.items()
        for i, cfg in enumerate(variants)
        if i % 2 == parity
    ]


# ==================================================================== the blow-up suite (issue 18)
# What a newcomer's first runs do at a far too high LR: the loss blows up in the first steps and
# the network then sits dead at chance (the blow-up must never become the start), networks dead
# from the start, big spikes that training recovers from (an escalation, never a prune) and NaNs
# that begin in different layers. ``blowup-dev`` and ``blowup-holdout`` to ``blowup-holdout4`` hold every
# variant, on seeds of their own; the holdouts are never tuned on.
TEACHER: dict[str, Any] = {"task": "teacher32", "width": 128, "steps": 600}
DIGITS_LOOP: dict[str, Any] = {"width": 64, "steps": 400}


def _nan_at(step: int, param: int) -> dict[str, Any]:
    """A NaN in the gradient of parameter number ``param`` at ``step`` (``gradnan``)."""
    return {"faults": [[step, "gradnan", param]]}


BLOWUP: dict[str, list[dict[str, Any]]] = {
    "d_lr_100x": [  # the Quick start at 100x its LR: AdamW 0.3, cosine, clipped in the loop or not
        {**TEACHER, "optimizer": "adamw", "lr": 0.3, **_cos(0)},
        {**TEACHER, "optimizer": "adamw", "lr": 0.3, **_cos(0), "clip": 1.0},
        {**TEACHER, "optimizer": "adamw", "lr": 0.3, **_cos(0), "clip": 1.0, "clip_via": "watch"},
        {**TEACHER, "optimizer": "adamw", "lr": 0.3, **_cos(0), "weight_decay": 0.01},
    ],
    "h_twin": [  # the healthy twins: the Quick start at its good LR, the same tasks trained well
        {**TEACHER, "optimizer": "adamw", "lr": 3e-3, **_cos(0)},
        {**TEACHER, "optimizer": "adamw", "lr": 3e-3, **_cos(0), "clip": 1.0},
        {**DIGITS_LOOP, "lr": 1e-3},
        {**DIGITS_LOOP, **SGD, "momentum": 0.0, "lr": 0.05},
        {**CANCER, "lr": 1e-3, "steps": 400},
        {**REG, "lr": 1e-3, "steps": 400},
    ],
    "d_explode_dead": [  # explode in the first steps, then dead at chance: optimizers and tasks
        {**DIGITS_LOOP, "lr": 0.3},
        {**DIGITS_LOOP, **SGD, "momentum": 0.0, "lr": 3.0},
        {**DIGITS_LOOP, **SGD, "lr": 1.0},
        {**DIGITS_LOOP, "optimizer": "adamw", "lr": 0.5, "weight_decay": 0.01},
        {**CANCER, "lr": 0.5, "steps": 400},
        {**CNN, "lr": 0.3, "steps": 400},
        {**TEACHER, "lr": 0.5, "steps": 400},
        {**TEACHER, **SGD, "momentum": 0.0, "lr": 5.0, "steps": 400},
    ],
    "c_dead_start": [  # dead from the first step (dead ReLUs), no blow-up to hide it
        {**DIGITS_LOOP, "bias_init": -5.0},
        {**CANCER, **SGD, "lr": 0.05, "bias_init": -5.0, "steps": 400},
        {**TEACHER, "bias_init": -5.0, "steps": 400},
        {**REG, "bias_init": -5.0, "steps": 400},
    ],
    "h_spike": [  # a big spike that training recovers from: escalated, never pruned
        {**SUM16, "lr": 0.3, "steps": 400},  # Adam's first steps at 0.3: 15 -> thousands, then learns
        {**REG, "lr": 0.1, "steps": 400},
        {**DIGITS_LOOP, **_burst("xscale", 4, 4, 30.0)},  # corrupted batches during the warm-up
        {**TEACHER, "lr": 1e-3, "steps": 400, **_burst("xscale", 6, 3, 50.0)},
        {**SUM16, **SGD, "momentum": 0.0, "lr": 0.01, "steps": 400, **_burst("xscale", 5, 4, 10.0)},
        {**REG, "lr": 0.3, "steps": 400},
        {**SUM16, "lr": 0.1, "steps": 400},
        {**SINE16, "lr": 0.3, "steps": 400},
        {**DIGITS_LOOP, "lr": 1e-3, **_burst("xscale", 3, 5, 300.0)},
    ],
    "d_nan": [  # a NaN that begins in one layer's gradient; the update spreads it
        {**DIGITS_LOOP, "lr": 1e-3, **_nan_at(120, 0)},
        {**DIGITS_LOOP, "lr": 1e-3, **_nan_at(150, 3)},
        {**DIGITS_LOOP, "lr": 1e-3, **_nan_at(200, 5)},
        {**REG, "lr": 1e-3, "steps": 400, **_nan_at(250, 2)},
        {**CNN, "lr": 1e-3, "steps": 300, **_nan_at(100, 1)},
        {**TEACHER, "optimizer": "adamw", "lr": 3e-3, "steps": 400, **_nan_at(180, 4)},
    ],
    "h_late_burst": [  # after the warm-up: corrupted batches that training absorbs (escalated, never pruned)
        {**DIGITS_LOOP, "lr": 1e-3, **_burst("xscale", 150, 3, 30.0)},
        {**TEACHER, "lr": 1e-3, "steps": 400, **_burst("yshuffle", 200, 4)},  # shuffled labels: mild
        {**REG, "lr": 1e-3, "steps": 400, **_burst("ynoise", 250, 3, 20.0)},
    ],
    "d_late_blowup": [  # after the warm-up: an LR bug that blows the loss up for good
        {**DIGITS_LOOP, "lr": 1e-3, "bug_at": 150, "bug_factor": 300.0},
        {**DIGITS_LOOP, **SGD, "momentum": 0.0, "lr": 0.05, "bug_at": 120, "bug_factor": 100.0},
        {**TEACHER, "optimizer": "adamw", "lr": 3e-3, "steps": 400, "bug_at": 200, "bug_factor": 100.0},
    ],
}
