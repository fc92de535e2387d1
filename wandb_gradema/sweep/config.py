"""Sweep configs for the offline runner: load, validate with W&B's engine, build the command.

The command a run gets is built exactly as ``wandb agent`` builds it (``command:`` from the
YAML, default ``${env} ${interpreter} ${program} ${args}``, the same macros and argument
formats as ``wandb/sdk/launch/sweeps/utils.py``), so a config that works here works with the
agent. One deliberate difference: ``${interpreter}`` is the runner's own Python
(``sys.executable``) rather than whatever ``python`` is first on ``PATH``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_COMMAND",
    "SweepConfigError",
    "build_command",
    "command_args",
    "grid_size",
    "import_sweeps",
    "load_sweep_config",
    "resolve_program",
    "searched_parameters",
]

DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")
_METHODS = ("grid", "random", "bayes")


class SweepConfigError(ValueError):
    """A sweep config the runner cannot use; the message lists every problem found."""


def import_sweeps() -> Any:
    """Import W&B's sweep engine (the ``sweeps`` package) with a clear error when it is missing."""
    try:
        with warnings.catch_warnings():
            # sweeps 0.3 declares its models the pydantic v1 way; pydantic v2 warns at import.
            warnings.simplefilter("ignore")
            import sweeps
    except ImportError as exc:
        raise ImportError(
            "The sweep runner needs W&B's sweep engine: pip install 'wandb_gradema[sweeps]' "
            f"(the `sweeps` and `pyyaml` packages). ({exc})"
        ) from exc
    return sweeps


def load_sweep_config(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML and validate it with W&B's own schema.

    Raises:
        SweepConfigError: the file is missing, is not YAML, or the engine reports violations
            (all of them are listed), or it asks for something the runner cannot do.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweepConfigError(f"Cannot read sweep config {path}: {exc.strerror or exc}.") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise SweepConfigError(
            f"{path} must hold a mapping (method:, parameters:, ...), got {type(config).__name__}."
        )
    sweeps = import_sweeps()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = list(sweeps.schema_violations_from_proposed_config(config))
    if not problems and config.get("method") not in _METHODS:
        problems.append(
            f"`method` must be one of {', '.join(map(repr, _METHODS))}; got {config.get('method')!r}."
        )
    metric = config.get("metric")
    if (config.get("method") == "bayes" or "early_terminate" in config) and not (
        isinstance(metric, dict) and metric.get("name")
    ):
        problems.append("`metric` is missing: bayes search and early_terminate need metric.name (and goal).")
    command = config.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        problems.append(f"`command` must be a list of strings, got {command!r}.")
    elif "${program}" in command and not config.get("program"):
        problems.append("`program` is missing: the command runs ${program} (e.g. program: sweeps/train.py).")
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SweepConfigError(f"Invalid sweep config {path} (W&B's sweep engine says):\n{lines}")
    return config


def resolve_program(config: Mapping[str, Any], config_path: str | Path) -> str | None:
    """The ``program`` path as the runner launches it: relative to the current directory (as
    ``wandb agent`` resolves it), else next to the YAML; None when the config has none.

    Raises:
        SweepConfigError: the program exists in neither place.
    """
    program = config.get("program")
    if not program:
        return None
    if Path(program).exists():
        return str(program)
    # Next to the YAML, or relative to the folder above it (``program: sweeps/train.py`` in
    # ``sweeps/lr.yaml`` names the repository root's path, wherever the runner is started).
    for base in (Path(config_path).parent, Path(config_path).parent.parent):
        if (base / program).exists():
            return str(base / program)
    raise SweepConfigError(
        f"`program: {program}` from {config_path} is in none of the current directory, the YAML's "
        "folder and the folder above it. Run from the directory `wandb agent` would run in."
    )


def command_args(params: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Every argument format the agent offers for ``{name: {"value": v}}`` run parameters."""
    flags, no_equals, no_hyphens, no_booleans, append, override = [], [], [], [], [], []
    as_dict: dict[str, Any] = {}
    for name, spec in params.items():
        value = spec["value"]
        flag = f"{name}={value}"
        flags.append("--" + flag)
        no_hyphens.append(flag)
        no_equals += [f"--{name}", str(value)]
        append.append("+" + flag)
        override.append("++" + flag)
        if not isinstance(value, bool):
            no_booleans.append("--" + flag)
        elif value:
            no_booleans.append("--" + name)
        as_dict[name] = value
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(as_dict)],
        "args_append_hydra": append,
        "args_override_hydra": override,
    }


def build_command(
    config: Mapping[str, Any],
    params: Mapping[str, Mapping[str, Any]],
    *,
    program: str | None,
    args_json_file: str | Path,
    interpreter: str = sys.executable,
) -> list[str]:
    """The argv ``wandb agent`` would run for one run with ``params``.

    Writes nothing: when the command uses ``${args_json_file}``, the caller writes
    ``command_args(params)["args_json"][0]`` to ``args_json_file``.
    """
    macros: dict[str, list[str]] = {
        **command_args(params),
        "interpreter": [interpreter],
        "program": [program] if program else [],
        "args_json_file": [str(args_json_file)],
    }
    if platform.system() != "Windows":
        macros["env"] = ["/usr/bin/env"]
    argv: list[str] = []
    for chunk in config.get("command") or DEFAULT_COMMAND:
        chunk = _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), str(chunk))
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += macros.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def searched_parameters(parameters: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the parameters the search varies (not fixed ``value:`` ones), nested too."""
    names: list[str] = []
    for name, spec in parameters.items():
        if not isinstance(spec, Mapping):
            continue
        if isinstance(spec.get("parameters"), Mapping):
            names += searched_parameters(spec["parameters"], f"{prefix}{name}.")
        elif "value" not in spec:
            names.append(prefix + name)
    return names


def grid_size(parameters: Mapping[str, Any]) -> int:
    """How many runs a grid over ``parameters`` has (``values`` lists multiply, nested too)."""
    size = 1
    for spec in parameters.values():
        if not isinstance(spec, Mapping):
            continue
        if isinstance(spec.get("parameters"), Mapping):
            size *= grid_size(spec["parameters"])
        elif isinstance(spec.get("values"), list):
            size *= max(len(spec["values"]), 1)
    return size
