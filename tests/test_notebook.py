"""``notebooks/quickstart.ipynb`` runs top to bottom, offline, and shows what it says it shows.

The notebook is stored without outputs; this test executes it with ``nbclient`` on the
``python3`` kernel (the running interpreter's ipykernel), in ``notebooks/`` as Jupyter would,
with ``WANDB_DIR`` in the test's temporary directory. Cells are found by their tags.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 600


def test_notebook_is_stored_clean() -> None:
    """No outputs or execution counts in the stored file: small diffs, the test makes the outputs."""
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell.get("id")
        assert "execution" not in cell["metadata"], cell.get("id")


def _cells(nb: Any, tag: str) -> list[Any]:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert cells, f"no cell tagged {tag!r} in {NOTEBOOK.name}"
    return cells


def _text(nb: Any, tag: str, stream: str = "stdout") -> str:
    return "".join(
        o.get("text", "")
        for c in _cells(nb, tag)
        for o in c.outputs
        if o.output_type == "stream" and o.name == stream
    )


def _images(nb: Any, tag: str) -> int:
    return sum("image/png" in o.get("data", {}) for c in _cells(nb, tag) for o in c.outputs)


@pytest.mark.slow
def test_quickstart_notebook_runs_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("nbclient", "nbformat", "ipykernel", "matplotlib", "sklearn", "sweeps", "yaml"):
        pytest.importorskip(module, reason=f"the notebook test needs {module} (pip install -e '.[dev]')")
    import nbformat
    from nbclient import NotebookClient

    from wandb_gradema.offline import find_runs, read_run

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    before = sorted(p.name for p in NOTEBOOK.parent.iterdir())

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # the kernel's working directory
    )
    started = time.monotonic()
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    finally:
        nbformat.write(nb, tmp_path / "quickstart.executed.ipynb")  # to look at when it fails
    print(f"quickstart.ipynb executed in {time.monotonic() - started:.1f}s")

    # The healthy run stays quiet; the drifting one escalates and says why.
    assert "escalations: none" in _text(nb, "healthy")
    escalation = _text(nb, "escalation")
    assert "ESCALATED at step" in escalation and "  - " in escalation
    # The charts are drawn inline from the run's history, and the sweep's report is shown.
    assert _images(nb, "charts") == 1
    assert _images(nb, "report") == 1
    # Inside a (simulated) sweep the run is pruned: failed in W&B, and the kernel carried on.
    pruned = _text(nb, "pruned")
    assert "PRUNED at step" in pruned and "W&B state: failed (exit code 1)" in pruned

    # What W&B would receive: the notebook's three runs, and the offline sweep's four.
    runs = [read_run(p, history=False) for p in find_runs(tmp_path / "wandb")]
    assert sorted(r.state for r in runs) == ["failed", "finished", "finished"], runs
    assert sum(bool(r.summary.get("gradema/escalated")) for r in runs) == 2
    (failed,) = [r for r in runs if r.state == "failed"]
    assert failed.summary["gradema/pruned"] is True and "gradema:pruned" in failed.tags

    sweep_out = _text(nb, "sweep")
    assert "4 runs:" in sweep_out and "pruned" in sweep_out
    (results,) = (tmp_path / "sweep" / "wandb").glob("sweep-*/results.json")
    rows = json.loads(results.read_text())["runs"]
    assert len(rows) == 4
    assert all(r["outcome"] in ("finished", "pruned") for r in rows), rows
    assert any(
        r["outcome"] == "pruned" and (r["wandb_state"], r["exit_code"]) == ("failed", 0) for r in rows
    ), rows
    assert len(find_runs(tmp_path / "sweep" / "wandb")) == 4

    # Everything went to WANDB_DIR: nothing new next to the notebook.
    assert sorted(p.name for p in NOTEBOOK.parent.iterdir()) == before


def _install_cell() -> str:
    nb = json.loads(NOTEBOOK.read_text())
    (cell,) = [c for c in nb["cells"] if "install" in c["metadata"].get("tags", [])]
    return "".join(cell["source"])


def test_the_install_cell_installs_the_clone_it_sits_in_and_says_what_to_do_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The package is not on PyPI: in a clone the cell pip-installs that clone; outside it says so."""
    import importlib.util
    import subprocess

    calls: list[list[str]] = []
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb_gradema" else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))  # pip itself is not run here
    monkeypatch.chdir(NOTEBOOK.parent)  # where Jupyter starts the kernel
    exec(_install_cell(), {})
    assert calls and calls[0][-2:] == ["-e", f"{REPO}[demo]"]
    assert calls[0][1:4] == ["-m", "pip", "install"]
    monkeypatch.chdir(tmp_path)  # a notebook downloaded alone
    with pytest.raises(RuntimeError, match="is not on PyPI.*Clone the repository.*set SOURCE"):
        exec(_install_cell(), {})
