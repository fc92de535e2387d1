"""watch_trial() and GradientDriftPruner in real Optuna studies: a W&B run per trial started in
the objective, or optuna-integration's W&B callback (deprecated upstream, still supported)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import decided_at, import_without

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from wandb_gradema import GrademaWarning  # noqa: E402
from wandb_gradema.integrations.optuna import TRIAL_ATTR, GradientDriftPruner, watch_trial  # noqa: E402
from wandb_gradema.offline import find_runs, read_run  # noqa: E402
from wandb_gradema.wandb_sink import PRUNED_TAG  # noqa: E402

pytestmark = pytest.mark.usefixtures("sync_every")  # every test on both decision paths

Batch = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*WeightsAndBiasesCallback.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message="No active W&B run", category=GrademaWarning)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: Batch, i: int, *, nan: bool) -> float:
    x, y = batch(i)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    if nan:
        next(model.parameters()).grad.fill_(math.nan)
    opt.step()
    opt.zero_grad()
    return loss.item()


def test_a_run_started_in_the_objective_ends_failed_when_its_trial_is_pruned(tiny, tmp_path: Path,
                                                                           sync_every: int) -> None:
    """No optuna-integration needed: the objective starts its trial's run itself."""
    import wandb

    stop = decided_at(3, sync_every)  # found at step 3, pruned by the step() that decides

    model0, batch = tiny
    initial = {k: v.clone() for k, v in model0.state_dict().items()}

    def objective(trial: optuna.Trial) -> float:
        model0.load_state_dict(initial)
        model0.zero_grad(set_to_none=True)
        run = wandb.init(project="gradema-tests", dir=str(tmp_path), mode="offline", name=f"trial-{trial.number}",
                         config={"trial": trial.number})
        try:
            opt = torch.optim.SGD(model0.parameters(), lr=0.01)
            with watch_trial(trial, opt, model=model0):
                for i in range(8):
                    loss = _step(model0, opt, batch, i, nan=trial.number == 1 and i == 3)
            return loss
        finally:
            run.finish()

    study = optuna.create_study()
    study.optimize(objective, n_trials=3)
    assert study.trials[1].user_attrs[TRIAL_ATTR]["step"] == stop
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    read = [read_run(p, history=True) for p in find_runs(tmp_path)]
    assert all("trial" in r.config for r in read), [(r.path.name, r.state, r.config) for r in read]  # a rare flake: say what was read
    runs = {r.config["trial"]: r for r in read}
    assert [(runs[n].state, runs[n].exit_code) for n in range(3)] == [("finished", 0), ("failed", 1), ("finished", 0)]
    assert runs[1].summary["gradema/pruned_step"] == stop and PRUNED_TAG in runs[1].tags
    assert runs[0].column("gradema/step")  # gradema's charts are in each trial's run


def test_optuna_escalation_prunes_the_trial_and_its_wandb_run_ends_failed(tiny, tmp_path: Path,
                                                                         sync_every: int) -> None:
    pytest.importorskip("optuna_integration")
    stop = decided_at(3, sync_every)
    from optuna_integration import WeightsAndBiasesCallback

    model0, batch = tiny
    initial = {k: v.clone() for k, v in model0.state_dict().items()}
    wandbc = WeightsAndBiasesCallback(
        metric_name="loss",
        wandb_kwargs={"project": "gradema-tests", "dir": str(tmp_path), "mode": "offline"},
        as_multirun=True,
    )

    @wandbc.track_in_wandb()
    def objective(trial: optuna.Trial) -> float:
        model0.load_state_dict(initial)
        model0.zero_grad(set_to_none=True)  # a pruned trial leaves its NaN gradients behind
        opt = torch.optim.SGD(model0.parameters(), lr=trial.suggest_float("lr", 1e-3, 1e-2))
        with watch_trial(trial, opt, model=model0) as monitor:
            for i in range(8):
                loss = _step(model0, opt, batch, i, nan=trial.number == 1 and i == 3)
        assert not monitor.escalated
        return loss

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=3, callbacks=[wandbc])

    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    attr = study.trials[1].user_attrs[TRIAL_ATTR]
    assert attr["step"] == stop and attr["types"] == ["nonfinite"] and "Non-finite" in attr["reason"]
    # The callback writes each trial's params into its run's config: that names the runs.
    lrs = {t.params["lr"]: t.number for t in study.trials}
    runs = {lrs[r.config["lr"]]: r for r in (read_run(p, history=False) for p in find_runs(tmp_path))}
    assert sorted(runs) == [0, 1, 2]  # one run per trial, none added for the pruned one
    assert [(runs[n].state, runs[n].exit_code) for n in range(3)] == [
        ("finished", 0),
        ("failed", 1),
        ("finished", 0),
    ]
    pruned = runs[1]
    assert pruned.summary["gradema/pruned"] is True and pruned.summary["gradema/pruned_step"] == stop
    assert pruned.summary["gradema/steps_observed"] == stop + 1 and PRUNED_TAG in pruned.tags
    assert "gradema/pruned" not in runs[0].summary and "gradema/pruned" not in runs[2].summary


def test_optuna_pruner_answers_should_prune_after_an_escalation_else_defers(tiny, sync_every: int) -> None:
    model0, batch = tiny
    initial = {k: v.clone() for k, v in model0.state_dict().items()}
    pruned_at: dict[int, int] = {}

    def objective(trial: optuna.Trial) -> float:
        model0.load_state_dict(initial)
        model0.zero_grad(set_to_none=True)  # a pruned trial leaves its NaN gradients behind
        opt = torch.optim.SGD(model0.parameters(), lr=0.01)
        with watch_trial(trial, opt, raise_pruned=False):
            for i in range(8):
                loss = _step(model0, opt, batch, i, nan=trial.number == 1 and i == 2)
                # (Trial 1 reports a finite value: its NaN weights would trip the threshold.)
                trial.report(1e9 if trial.number == 2 else 0.0, i)
                if trial.should_prune():
                    pruned_at[trial.number] = i
                    raise optuna.TrialPruned()
        return loss

    study = optuna.create_study(pruner=GradientDriftPruner(optuna.pruners.ThresholdPruner(upper=1e6)))
    study.optimize(objective, n_trials=3)

    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    # trial 1 by its gradients (when decided), trial 2 by the wrapped pruner
    assert pruned_at == {1: decided_at(2, sync_every), 2: 0}
    assert TRIAL_ATTR in study.trials[1].user_attrs and TRIAL_ATTR not in study.trials[2].user_attrs


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"on_escalation": "warn"}, TypeError, r"watch_trial\(\) sets `on_escalation` itself"),
        ({"raise_pruned": "yes"}, TypeError, r"`raise_pruned` must be a bool, got str"),
        ({"sensitivity": -1.0}, ValueError, r"`sensitivity`"),
    ],
)
def test_optuna_bad_arguments_are_named(tiny, kwargs, error, match) -> None:
    model, _ = tiny
    trial = optuna.create_study().ask()
    with pytest.raises(error, match=match):
        watch_trial(trial, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_optuna_pruner_rejects_what_is_not_a_pruner() -> None:
    with pytest.raises(TypeError, match=r"`pruner` must be an optuna.pruners.BasePruner or None, got str"):
        GradientDriftPruner("median")


def test_optuna_missing_package_raises_importerror_naming_the_extra(monkeypatch) -> None:
    module = import_without(monkeypatch, "optuna", "wandb_gradema.integrations.optuna")
    with pytest.raises(ImportError, match=r'pip install "wandb_gradema\[optuna\]"'):
        module.GradientDriftPruner()
