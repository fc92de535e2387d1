"""GradientDriftCallback with a real Lightning Trainer on CPU and real offline W&B runs."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from helpers import decided_at, import_without

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import WandbLogger  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402

from wandb_gradema import GrademaWarning, RunPruned  # noqa: E402
from wandb_gradema.integrations.lightning import GradientDriftCallback  # noqa: E402
from wandb_gradema.monitor import PRUNED_TAG  # noqa: E402

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths

BATCH = 8


@pytest.fixture(autouse=True)
def _quiet() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*(num_workers|LeafSpec|logging interval|litlogger).*")
    warnings.filterwarnings("ignore", message="No active W&B run", category=GrademaWarning)


class TinyModule(pl.LightningModule):
    """A small MLP that records what the callback should see: pre-clip norms and batch losses."""

    def __init__(
        self, *, bad_grad_at: dict[int, float] | None = None, lr: float = 0.05, fused: bool = False
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        self.bad_grad_at = bad_grad_at or {}
        self.lr = lr
        self.fused = fused
        self.losses: list[float] = []
        self.pre_clip: list[float] = []
        self.post_clip: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x).float(), y)
        self.losses.append(loss.item())
        self.log("train_loss", loss)
        return loss

    def on_after_backward(self) -> None:
        value = self.bad_grad_at.get(len(self.losses) - 1)
        if value is not None:
            next(self.parameters()).grad.fill_(value)

    def on_before_optimizer_step(self, optimizer: Any) -> None:  # after the callback's, before clipping
        self.pre_clip.append(_norm(self))

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        self.post_clip.append(_norm(self))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.fused:
            return torch.optim.AdamW(self.parameters(), lr=self.lr, fused=True)
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TwoOptimizers(pl.LightningModule):
    """Manual optimization with one optimizer per layer (a GAN-shaped loop)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 1)
        self.b = torch.nn.Linear(8, 1)
        self.automatic_optimization = False
        self.norms: dict[str, list[float]] = {"a": [], "b": []}
        self.losses: dict[str, list[float]] = {"a": [], "b": []}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for key, opt in zip("ab", self.optimizers()):
            layer = getattr(self, key)
            loss = torch.nn.functional.mse_loss(layer(x), y * (1 if key == "a" else -2))
            opt.zero_grad()
            self.manual_backward(loss)
            self.norms[key].append(_norm(layer))
            self.losses[key].append(loss.item())
            opt.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.a.parameters(), lr=0.01), torch.optim.Adam(self.b.parameters(), lr=0.01)]


def _scaler() -> torch.amp.GradScaler:
    """A CPU GradScaler whose scale never overflows this model's fp16 loss by itself."""
    return torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)


def _norm(module: torch.nn.Module) -> float:
    return torch.nn.utils.get_total_norm([p.grad for p in module.parameters() if p.grad is not None]).item()


def _loader(n_batches: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * BATCH, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True) * 3)
    return torch.utils.data.DataLoader(data, batch_size=BATCH)


def _trainer(callback: GradientDriftCallback, logger: Any = False, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )


def _logger(wandb_offline: Any, **kwargs: Any) -> WandbLogger:
    return WandbLogger(project="gradema-tests", save_dir=str(wandb_offline.root), offline=True, **kwargs)


def _rows(logged: Any, prefix: str = "gradema") -> dict[int, dict[str, Any]]:
    return {r[f"{prefix}/step"]: r for r in logged.history if f"{prefix}/step" in r}


def test_lightning_tracks_the_pre_clip_norm_and_the_true_loss_under_accumulation(wandb_offline) -> None:
    module, callback = TinyModule(), GradientDriftCallback(log_every=1)
    logger = _logger(wandb_offline)
    trainer = _trainer(callback, logger, max_steps=4, accumulate_grad_batches=2, gradient_clip_val=0.5)
    trainer.fit(module, _loader(8))
    run = logger.experiment
    run.finish()
    rows = _rows(wandb_offline.read(run))

    assert sorted(rows) == [0, 1, 2, 3] and callback.monitors[0].step == 4
    assert all(n > 0.5 for n in module.pre_clip)  # clipping was in effect at every step...
    assert module.post_clip == pytest.approx([0.5] * 4, rel=1e-4)
    for step, row in rows.items():  # ...and the tracked norm is the one before it
        assert row["gradema/grad_norm"] == pytest.approx(module.pre_clip[step], rel=1e-5)
        # Lightning divides the loss by accumulate_grad_batches; the step's loss is the mean.
        mean_loss = sum(module.losses[2 * step : 2 * step + 2]) / 2
        assert row["gradema/loss"] == pytest.approx(mean_loss, rel=1e-5)
        assert row["gradema/lr"] == pytest.approx(0.05)


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_lightning_mixed_precision_counts_scaler_skips_and_unscales_the_loss(precision) -> None:
    # Lightning turns precision="16-mixed" into bf16 on CPU; the fp16 path with a GradScaler is
    # what its MixedPrecision plugin runs on GPU, so build that plugin with a CPU GradScaler.
    if precision == "16-mixed":
        extra: dict[str, Any] = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=_scaler())]}
        bad_grad_at = {2: math.inf}  # an overflow: the scaler skips this step
    else:
        extra, bad_grad_at = {"precision": "bf16-mixed"}, {}
    module, callback = TinyModule(bad_grad_at=bad_grad_at), GradientDriftCallback(log_every=1)
    _trainer(callback, max_steps=5, **extra).fit(module, _loader(5))
    monitor = callback.monitors[0]

    assert monitor.skipped_steps == len(bad_grad_at)
    assert monitor.step == 5 - len(bad_grad_at) and not monitor.escalated
    observation = monitor.last[0]
    assert observation.loss == pytest.approx(module.losses[-1], rel=1e-3)  # at true scale
    assert observation.grad_norm == pytest.approx(module.pre_clip[-1], rel=1e-3)


def test_lightning_fused_optimizer_under_fp16_counts_overflow_as_skipped() -> None:
    # GradScaler.step calls a fused optimizer's step() even on an overflow; the monitor reads
    # the scaler's found_inf flag and loss scale instead of judging scaled or infinite gradients.
    module = TinyModule(fused=True, bad_grad_at={2: math.inf})
    callback = GradientDriftCallback(log_every=1)
    scaler = _scaler()
    trainer = _trainer(callback, max_steps=5, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    trainer.fit(module, _loader(5))
    monitor = callback.monitors[0]
    assert monitor.skipped_steps == 1 and not monitor.escalated
    # Lightning leaves a fused optimizer's gradients at the loss scale; the monitor unscales.
    assert monitor.last[0].grad_norm * scaler.get_scale() == pytest.approx(module.pre_clip[-1], rel=1e-3)


def test_lightning_prune_in_a_sweep_stops_the_fit_and_fails_the_run(wandb_offline, sync_every: int) -> None:
    stop = decided_at(3, sync_every)  # found at step 3, pruned by the step() that decides
    module, callback = TinyModule(bad_grad_at={3: math.nan}), GradientDriftCallback()
    # on_escalation="auto" prunes inside a sweep. (W&B reads WANDB_SWEEP_ID once per process.)
    logger = _logger(wandb_offline, settings=wandb.Settings(sweep_id="sweep123"))
    trainer = _trainer(callback, logger, max_steps=10)
    with pytest.warns(GrademaWarning, match=f"Run pruned at step {stop}: Non-finite gradient norm .* at step 3"):
        trainer.fit(module, _loader(10))  # returns: the fit ends cleanly
    run = logger.experiment

    assert trainer.should_stop and trainer.global_step == stop + 1 and callback.pruned.step == stop
    if sync_every == 1:  # decided at once: the NaN update was skipped (deferred: applied, as torch would)
        assert all(torch.isfinite(p).all() for p in module.parameters())
    assert logger not in trainer.loggers  # its run is over
    with pytest.raises(RunPruned, match=f"Run pruned at step {stop}") as pruned:
        callback.check_pruned()
    assert pruned.value.code == 0
    logged = wandb_offline.read(run)
    assert (logged.state, logged.exit_code) == ("failed", 1)
    assert logged.summary["gradema/pruned"] is True and logged.summary["gradema/pruned_step"] == stop
    assert PRUNED_TAG in logged.tags
    assert len(logged.column("train_loss")) == stop  # Lightning's own rows up to the prune


def test_lightning_checkpoint_resume_continues_drift_tracking_exactly(tmp_path: Path) -> None:
    def fit(epochs: int, ckpt: Path | None = None) -> tuple[GradientDriftCallback, pl.Trainer]:
        callback = GradientDriftCallback()
        trainer = _trainer(callback, max_epochs=epochs)
        trainer.fit(TinyModule(), _loader(3), ckpt_path=ckpt)
        return callback, trainer

    first, trainer = fit(1)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    assert first.state_key in torch.load(ckpt, weights_only=False)["callbacks"]
    resumed, _ = fit(2, ckpt)
    straight, _ = fit(2)

    assert resumed.monitors[0].step == straight.monitors[0].step == 6
    assert json.dumps(resumed.state_dict(), sort_keys=True) == json.dumps(
        straight.state_dict(), sort_keys=True
    )


def test_lightning_several_optimizers_log_one_section_each(wandb_offline) -> None:
    module, callback = TwoOptimizers(), GradientDriftCallback(log_every=1)
    logger = _logger(wandb_offline)
    _trainer(callback, logger, max_steps=6).fit(module, _loader(3))  # 2 optimizer steps per batch
    run = logger.experiment
    run.finish()
    logged = wandb_offline.read(run)

    for i, key in enumerate("ab"):
        rows = _rows(logged, f"gradema/optimizer_{i}")
        assert sorted(rows) == [0, 1, 2]
        for step, row in rows.items():
            assert row[f"gradema/optimizer_{i}/grad_norm"] == pytest.approx(module.norms[key][step], rel=1e-5)
            assert row[f"gradema/optimizer_{i}/loss"] == pytest.approx(module.losses[key][step], rel=1e-5)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"patiense": 3}, TypeError, r"GradientDriftCallback got unknown option\(s\) `patiense`"),
        ({"max_norm": 1.0}, TypeError, r"sets `max_norm` itself \(clip with Trainer\(gradient_clip_val"),
        ({"patience": 0}, ValueError, r"`patience` must be an int >= 1, got 0"),
        ({"names": "gen"}, TypeError, r"`names` must be a sequence of non-empty strings"),
    ],
)
def test_lightning_bad_options_fail_when_the_callback_is_built(options, error, match) -> None:
    with pytest.raises(error, match=match):
        GradientDriftCallback(**options)


def test_lightning_missing_package_raises_importerror_naming_the_extra(monkeypatch) -> None:
    module = import_without(monkeypatch, "lightning", "wandb_gradema.integrations.lightning")  # importing still works
    with pytest.raises(ImportError, match=r'pip install "wandb_gradema\[lightning\]"'):
        module.GradientDriftCallback()
