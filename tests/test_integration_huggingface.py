"""watch_trainer() with a real Hugging Face Trainer on a tiny GPT-2 built from a config (CPU)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import decided_at, import_without

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import wandb  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.integrations import WandbCallback  # noqa: E402

from wandb_gradema import GrademaWarning, RunPruned  # noqa: E402
from wandb_gradema.integrations.huggingface import GradientDriftCallback, watch_trainer  # noqa: E402
from wandb_gradema.monitor import PRUNED_TAG  # noqa: E402

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths

VOCAB, SEQ = 64, 16


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_PROJECT", "gradema-tests")
    warnings.filterwarnings("ignore", message="No active W&B run", category=GrademaWarning)


class Tokens(torch.utils.data.Dataset):
    """Random token sequences, the same for every index on every run."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, VOCAB, (SEQ,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


class Recorder(TrainerCallback):
    """Records the run the WandbCallback logs to and the (post-clip) norm the optimizer gets;
    poisons the logits with NaN on the steps in ``nan_at``."""

    def __init__(self, model: torch.nn.Module, nan_at: set[int] = frozenset()) -> None:
        self.run: Any = None
        self.post_clip: list[float] = []
        self.nan_at = nan_at
        self._poison = False
        model.lm_head.register_forward_hook(lambda m, i, out: out * math.nan if self._poison else None)

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.run = wandb.run

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self._poison = state.global_step in self.nan_at

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        self.post_clip.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=16,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=SEQ,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def _trainer(tmp_path: Path, *, nan_at: set[int] = frozenset(), **kwargs: Any) -> tuple[Trainer, Recorder]:
    model = _model()
    settings = {
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        **kwargs,
    }
    recorder = Recorder(model, nan_at)
    trainer = Trainer(
        model=model, args=TrainingArguments(**settings), train_dataset=Tokens(), callbacks=[recorder]
    )
    return trainer, recorder


def _trainer_logs(trainer: Trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def test_hf_tracks_the_pre_clip_norm_and_step_loss_under_accumulation(tmp_path, wandb_offline) -> None:
    trainer, recorder = _trainer(
        tmp_path, max_steps=4, gradient_accumulation_steps=2, max_grad_norm=0.05, report_to="wandb"
    )
    callback = watch_trainer(trainer, log_every=1)
    trainer.train()
    recorder.run.finish()
    logged = wandb_offline.read(recorder.run)
    rows = {r["gradema/step"]: r for r in logged.history if "gradema/step" in r}

    assert sorted(rows) == [0, 1, 2, 3] and callback.monitor.step == 4
    assert recorder.post_clip == pytest.approx([0.05] * 4, rel=1e-4)  # the Trainer clipped...
    trainer_norms = _trainer_logs(trainer, "grad_norm")  # ...and logs its pre-clip norm
    assert all(n > 0.05 for n in trainer_norms)
    assert [rows[s]["gradema/grad_norm"] for s in range(4)] == pytest.approx(trainer_norms, rel=1e-5)
    assert [rows[s]["gradema/loss"] for s in range(4)] == pytest.approx(
        _trainer_logs(trainer, "loss"), rel=1e-5
    )
    assert len(logged.column("train/loss")) == 4  # the WandbCallback logs to the same run
    assert logged.summary["gradema/steps_observed"] == 4


def test_hf_bf16_autocast_on_cpu_is_tracked(tmp_path) -> None:
    trainer, _ = _trainer(tmp_path, max_steps=3, bf16=True, max_grad_norm=0.05)
    callback = watch_trainer(trainer)
    trainer.train()
    observation = callback.monitor.last[0]

    assert callback.monitor.step == 3 and not callback.monitor.escalated
    assert observation.grad_norm == pytest.approx(_trainer_logs(trainer, "grad_norm")[-1], rel=1e-5)
    assert observation.loss == pytest.approx(_trainer_logs(trainer, "loss")[-1], rel=1e-5)


def test_hf_prune_in_a_sweep_stops_training_and_fails_the_run(tmp_path, wandb_offline, sync_every: int) -> None:
    stop = decided_at(2, sync_every)  # found at step 2, pruned by the step() that decides
    # A run started before the Trainer (as a sweep agent's function does); the WandbCallback
    # logs to it. W&B reads WANDB_SWEEP_ID once per process, so the sweep comes via settings.
    run = wandb_offline.init(settings=wandb.Settings(sweep_id="sweep123"))
    trainer, recorder = _trainer(tmp_path, max_steps=10, report_to="wandb", nan_at={2})
    callback = watch_trainer(trainer)
    with pytest.warns(GrademaWarning, match=f"Run pruned at step {stop}: Non-finite .* at step 2"):
        trainer.train()  # returns: training ends through control.should_training_stop

    assert trainer.state.global_step == stop + 1 and callback.pruned.step == stop
    if sync_every == 1:  # decided at once: the NaN update was skipped (deferred: applied, as torch would)
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert not any(isinstance(c, WandbCallback) for c in trainer.callback_handler.callbacks)
    with pytest.raises(RunPruned, match=f"Run pruned at step {stop}"):
        callback.check_pruned()
    logged = wandb_offline.read(run)
    assert (logged.state, logged.exit_code) == ("failed", 1)
    assert logged.summary["gradema/pruned"] is True and logged.summary["gradema/pruned_step"] == stop
    assert PRUNED_TAG in logged.tags
    assert len(logged.column("train/loss")) == stop  # the Trainer's rows before the prune


def test_hf_resume_from_checkpoint_continues_drift_tracking_exactly(tmp_path) -> None:
    straight, _ = _trainer(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    straight_cb = watch_trainer(straight)
    straight.train()
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert "gradema" in torch.load(checkpoint / "optimizer.pt", weights_only=True)

    resumed, _ = _trainer(tmp_path, max_steps=6, save_strategy="no")
    resumed_cb = watch_trainer(resumed)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed_cb.monitor.step == straight_cb.monitor.step == 6
    assert json.dumps(resumed_cb.monitor.state_dict(), sort_keys=True) == json.dumps(
        straight_cb.monitor.state_dict(), sort_keys=True
    )


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"patiense": 3}, TypeError, r"watch_trainer\(\) got unknown option\(s\) `patiense`"),
        ({"max_norm": 1.0}, TypeError, r"sets `max_norm` itself \(set TrainingArguments\(max_grad_norm"),
        ({"log_every": 0}, ValueError, r"`log_every` must be an int >= 1, got 0"),
    ],
)
def test_hf_bad_options_fail_before_training(tmp_path, options, error, match) -> None:
    trainer, _ = _trainer(tmp_path, max_steps=1)
    with pytest.raises(error, match=match):
        watch_trainer(trainer, **options)
    assert not any(isinstance(c, GradientDriftCallback) for c in trainer.callback_handler.callbacks)


def test_hf_watch_trainer_rejects_what_is_not_a_trainer() -> None:
    with pytest.raises(TypeError, match="`trainer` must be a transformers.Trainer, got Linear"):
        watch_trainer(torch.nn.Linear(2, 2))


def test_hf_missing_package_raises_importerror_naming_the_extra(monkeypatch) -> None:
    module = import_without(monkeypatch, "transformers", "wandb_gradema.integrations.huggingface")
    with pytest.raises(ImportError, match=r'pip install "wandb_gradema\[huggingface\]"'):
        module.watch_trainer(object())
