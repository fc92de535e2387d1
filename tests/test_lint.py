"""The code stays clean: ruff over the repository, mypy over the package (both configured in
pyproject.toml), so CI catches what a reviewer would."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command",
    [[sys.executable, "-m", "ruff", "check", "."], [sys.executable, "-m", "mypy", "wandb_gradema"]],
    ids=["ruff", "mypy"],
)
def test_linter_is_clean(command: list[str]) -> None:
    if importlib.util.find_spec(command[2]) is None:
        pytest.skip(f"{command[2]} is not installed (pip install -e '.[dev]')")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
