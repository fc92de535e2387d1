"""The sweep configs in sweeps/ and how the runner turns a suggestion into the agent's command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import wandb_gradema
from wandb_gradema.options import options_from_config
from wandb_gradema.sweep.config import (
    SweepConfigError,
    build_command,
    command_args,
    grid_size,
    import_sweeps,
    load_sweep_config,
    resolve_program,
    searched_parameters,
)
from wandb_gradema.sweep.runner import SweepOptions, SweepRunner, _write_param_file
from wandb_gradema.sweep.trial import Trial

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "sweeps").glob("*.yaml"))


def test_the_ready_configs_are_there() -> None:
    assert {p.name for p in CONFIGS} >= {"lr.yaml", "random.yaml", "hyperband.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.filterwarnings("ignore:No active W&B run:wandb_gradema.GrademaWarning")
def test_every_config_is_valid_for_the_engine_and_runnable(path: Path, monkeypatch) -> None:
    sweeps = import_sweeps()
    config = load_sweep_config(path)
    assert sweeps.schema_violations_from_proposed_config(config) == []
    monkeypatch.chdir(REPO)  # where `wandb agent` would run
    assert resolve_program(config, path) in ("sweeps/train.py", "sweeps/regression_train.py")
    assert config["metric"] == {"name": "val_loss", "goal": "minimize"}
    suggestion = sweeps.next_run(config, [])
    assert suggestion is not None and "lr" in suggestion.config
    # the gradema section is a valid set of watch() options
    section = suggestion.config["gradema"]["value"]
    options = options_from_config({"gradema": section})
    assert options["sweep_metric"] == config["metric"]["name"]
    wandb_gradema.watch(torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1), **options).remove()


def test_hyperband_config_combines_early_terminate_with_pruning() -> None:
    config = load_sweep_config(REPO / "sweeps" / "hyperband.yaml")
    assert config["early_terminate"]["type"] == "hyperband"
    assert "gradema" in config["parameters"]


def test_arguments_match_the_agents_formats() -> None:
    """Same strings as ``wandb agent`` builds (wandb/sdk/launch/sweeps/utils.py)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {
        "lr": {"value": 0.01},
        "flag": {"value": False},
        "on": {"value": True},
        "name": {"value": "a b"},
        "gradema": {"value": {"sweep_metric": "val_loss"}},
    }
    theirs = create_sweep_command_args({"args": params})
    ours = command_args(params)
    for key, value in ours.items():
        assert value == theirs[key], key


def test_command_is_built_like_the_agent_builds_it(tmp_path, monkeypatch) -> None:
    params = {"lr": {"value": 0.5}}
    argv = build_command(
        {}, params, program="train.py", args_json_file=tmp_path / "a.json", interpreter="python"
    )
    expected = ["python", "train.py", "--lr=0.5"]
    assert argv == (["/usr/bin/env", *expected] if sys.platform != "win32" else expected)
    monkeypatch.setenv("MY_FLAG", "--fast")
    config = {
        "command": [
            "${interpreter}",
            "-u",
            "${program}",
            "${envvar:MY_FLAG}",
            "${args_no_hyphens}",
            "${args_json_file}",
        ]
    }
    argv = build_command(config, params, program="t.py", args_json_file="/x/a.json", interpreter="py")
    assert argv == ["py", "-u", "t.py", "--fast", "lr=0.5", "/x/a.json"]


def test_param_file_reads_back_as_wandb_reads_the_agents(tmp_path) -> None:
    from wandb.sdk.lib import config_util

    params = {"lr": {"value": 0.01}, "gradema": {"value": {"sensitivity": 2.0, "sweep_metric": "val_loss"}}}
    ours, theirs = tmp_path / "ours.yaml", tmp_path / "theirs.yaml"
    _write_param_file(ours, params)
    config_util.save_config_file_from_dict(str(theirs), params)
    assert config_util.dict_from_config_file(str(ours)) == config_util.dict_from_config_file(str(theirs))


def test_searched_parameters_and_grid_size() -> None:
    parameters = {
        "lr": {"values": [0.1, 1.0, 3.0]},
        "wd": {"value": 0.0},
        "momentum": {"distribution": "uniform", "min": 0.0, "max": 0.9},
        "gradema": {"parameters": {"sensitivity": {"values": [1, 2]}, "sweep_metric": {"value": "loss"}}},
    }
    assert searched_parameters(parameters) == ["lr", "momentum", "gradema.sensitivity"]
    assert grid_size({k: v for k, v in parameters.items() if k != "momentum"}) == 6


def test_no_prune_adds_warn_to_the_gradema_section(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    config = REPO / "sweeps" / "lr.yaml"
    params = {"lr": {"value": 1.0}, "gradema": {"value": {"sweep_metric": "val_loss"}}}
    runner = SweepRunner(config, SweepOptions(count=1, prune=False, wandb_dir=tmp_path))
    assert runner._run_params(params)["gradema"] == {
        "value": {"sweep_metric": "val_loss", "on_escalation": "warn"}
    }
    assert runner._run_params({"lr": {"value": 1.0}})["gradema"] == {"value": {"on_escalation": "warn"}}
    runner = SweepRunner(config, SweepOptions(count=1, wandb_dir=tmp_path))
    assert runner._run_params(params) == params


def test_program_is_found_from_the_working_directory_or_next_to_the_yaml(tmp_path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.py").write_text("")
    yaml_path = tmp_path / "sub" / "s.yaml"
    monkeypatch.chdir(tmp_path)
    assert resolve_program({"program": "sub/train.py"}, yaml_path) == "sub/train.py"
    assert resolve_program({"program": "train.py"}, yaml_path) == str(tmp_path / "sub" / "train.py")
    with pytest.raises(SweepConfigError, match=r"`program: nope.py` from .*s.yaml is in none of"):
        resolve_program({"program": "nope.py"}, yaml_path)


def test_sweep_id_of_a_server_sweep_sets_project_and_entity(tmp_path, monkeypatch) -> None:
    """``--sweep-id ENTITY/PROJECT/ID``: the runs carry a sweep the server knows (for wandb sync)."""
    monkeypatch.chdir(REPO)
    config = REPO / "sweeps" / "lr.yaml"
    runner = SweepRunner(config, SweepOptions(count=1, wandb_dir=tmp_path, sweep_id="team/digits/ab12cd34"))
    trial = Trial(number=1, run_id="r1", params={})
    env = runner._run_env(trial, tmp_path / "p.yaml")
    assert (env["WANDB_SWEEP_ID"], env["WANDB_PROJECT"], env["WANDB_ENTITY"]) == (
        "ab12cd34",
        "digits",
        "team",
    )
    assert (env["WANDB_RUN_ID"], env["WANDB_MODE"], env["WANDB_SWEEP_PARAM_PATH"]) == (
        "r1",
        "offline",
        str(tmp_path / "p.yaml"),
    )
    with pytest.raises(
        ValueError, match=r"`sweep_id` must be ID, PROJECT/ID or ENTITY/PROJECT/ID; got 'a/b/c/d'"
    ):
        SweepRunner(config, SweepOptions(count=1, sweep_id="a/b/c/d"))
