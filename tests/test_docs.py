"""Every example in the docs runs: the package's docstrings, and the README's Quick start as written."""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wandb_gradema

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(wandb_gradema.__path__, "wandb_gradema.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_blocks() -> list[str]:
    """The Python blocks of the README's Quick start, in order, as written."""
    text = README.read_text()
    start = text.index("## Quick start")
    section = text[start : text.index("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_quick_start_runs_as_written_in_a_fresh_process(tmp_path: Path) -> None:
    """The script, then the resume block, exactly as the README shows them, offline W&B."""
    blocks = quick_start_blocks()
    assert len(blocks) == 2, "the Quick start shows the script and the resume: update this test with it"
    script = "\n".join(blocks) + "\nprint('RESUMED AT', monitor.step)\n"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESUMED AT 100" in done.stdout  # load-then-watch carried on from the checkpoint's step
    assert "GrademaWarning" not in done.stderr  # no clipping or resume warning on the README's own code
