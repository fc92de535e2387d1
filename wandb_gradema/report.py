"""``wandb-gradema report PATH``: drift charts of offline runs, as PNG and a small HTML page.

One run: gradient norm with its EMA band, drift and detector score, health, loss, with
escalation and prune markers. A sweep directory (several runs): one row per run, pruned runs
marked. Reads runs with ``wandb leet inspect`` (``wandb_gradema.offline``); needs matplotlib
(``pip install "wandb_gradema[report]"``).
"""

from __future__ import annotations

import argparse
import html
import math
from pathlib import Path
from typing import Any

from .offline import OfflineRun, find_runs, read_run
from .wandb_sink import PREFIX

__all__ = ["add_arguments", "render", "run"]

_P = PREFIX + "/"
#: Relative drift band drawn around the EMA: the original tracker's 0.5 threshold.
_BAND = 0.5


def _figure(rows: int, cols: int, size: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """A figure drawn off-screen, without pyplot: a notebook's inline backend stays as it was."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "wandb-gradema report needs matplotlib: pip install \"wandb_gradema[report]\""
        ) from exc
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **kwargs)


def _series(run: OfflineRun, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in run.history:
        if _P + "step" in row and key in row and isinstance(row[key], (int, float)):
            xs.append(row[_P + "step"])
            ys.append(float(row[key]))
    return xs, ys


def _events(run: OfflineRun) -> list[int]:
    return [r[_P + "step"] for r in run.history if r.get(_P + "escalation_event") == 1 and _P + "step" in r]


def _pruned_step(run: OfflineRun) -> int | None:
    return run.summary.get(_P + "pruned_step") if run.summary.get(_P + "pruned") else None


def _mark(ax: Any, run: OfflineRun) -> None:
    """Escalations as dashed orange lines, telemetry windows shaded, the prune as a red line."""
    xs, ys = _series(run, _P + "escalated")
    for x, y in zip(xs, ys):
        if y:
            ax.axvspan(x - 0.5, x + 0.5, color="orange", alpha=0.12, lw=0)
    for i, step in enumerate(_events(run)):
        ax.axvline(step, color="darkorange", ls="--", lw=1.2, label="escalation" if i == 0 else None)
    pruned = _pruned_step(run)
    if pruned is not None:
        ax.axvline(pruned, color="red", lw=2, label="pruned")


def _positive(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and y > 0]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _norm_panel(ax: Any, run: OfflineRun) -> None:
    xs, norm = _positive(*_series(run, _P + "grad_norm"))
    ex, ema = _positive(*_series(run, _P + "grad_norm_ema"))
    ax.plot(xs, norm, lw=1, color="tab:blue", label="grad norm")
    if ema:
        ax.plot(ex, ema, lw=1.5, color="black", label="EMA")
        ax.fill_between(ex, [e * (1 - _BAND) for e in ema], [e * (1 + _BAND) for e in ema],
                        color="gray", alpha=0.2, label=f"EMA ±{_BAND:.0%}")
    bad = [x for x, y in zip(*_series(run, _P + "grad_norm")) if not math.isfinite(y)]
    if bad:
        ax.scatter(bad, [max(norm or [1.0])] * len(bad), marker="x", color="red", label="non-finite", zorder=5)
    ax.set_yscale("log")
    ax.set_ylabel("grad norm")
    _mark(ax, run)
    ax.legend(loc="upper left", fontsize=7, ncol=3)


def _drift_panel(ax: Any, run: OfflineRun) -> None:
    for key, label, color in (("norm_drift_max", "norm drift (max since last row)", "tab:purple"),
                              ("score_max", "detector score (max)", "tab:red")):
        xs, ys = _series(run, _P + key)
        ys = [min(y, 1e3) if math.isfinite(y) else 1e3 for y in ys]
        ax.plot(xs, ys, lw=1, color=color, label=label)
    ax.axhline(1.0, color="tab:red", ls=":", lw=1, label="escalation threshold (score 1)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("drift / score")
    _mark(ax, run)
    ax.legend(loc="upper left", fontsize=7, ncol=3)


def _health_panel(ax: Any, run: OfflineRun) -> None:
    for key, label, color in (("health", "health", "tab:green"), ("active_share", "active tensors", "tab:olive")):
        xs, ys = _series(run, _P + key)
        ax.plot(xs, ys, lw=1, color=color, label=label)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("health")
    _mark(ax, run)
    ax.legend(loc="lower left", fontsize=7, ncol=2)


def _loss_panel(ax: Any, run: OfflineRun) -> bool:
    xs, ys = _positive(*_series(run, _P + "loss"))
    if not ys:
        return False
    ax.plot(xs, ys, lw=1, color="tab:brown", label="loss")
    ax.set_yscale("log")
    ax.set_ylabel("loss")
    _mark(ax, run)
    ax.legend(loc="upper left", fontsize=7)
    return True


def _title(run: OfflineRun) -> str:
    pruned = _pruned_step(run)
    state = f"PRUNED at step {pruned}" if pruned is not None else run.state
    events = _events(run)
    esc = f", escalated at {events[0]}" if events else ""
    name = run.config.get("lr")
    cfg = f" lr={name:g}" if isinstance(name, (int, float)) else ""
    return f"{run.run_id}{cfg}: {state}{esc}"


def _render_run(run: OfflineRun, png: Path) -> None:
    has_loss = any(_P + "loss" in r for r in run.history)
    n = 4 if has_loss else 3
    fig, axes = _figure(n, 1, (10, 2.3 * n), sharex=True)
    _norm_panel(axes[0], run)
    _drift_panel(axes[1], run)
    _health_panel(axes[2], run)
    if has_loss:
        _loss_panel(axes[3], run)
    axes[-1].set_xlabel(f"optimizer step ({_P}step)")
    fig.suptitle(_title(run), fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def _render_sweep(runs: list[OfflineRun], png: Path) -> None:
    fig, axes = _figure(len(runs), 2, (12, 1.9 * len(runs) + 0.6), squeeze=False)
    for row, run in zip(axes, runs):
        _norm_panel(row[0], run)
        _drift_panel(row[1], run)
        row[0].set_title(_title(run), fontsize=8, color="red" if _pruned_step(run) is not None else "black")
        for ax in row:
            ax.legend().set_visible(False)
    axes[0][0].legend(loc="upper left", fontsize=6, ncol=3)
    axes[0][1].legend(loc="upper left", fontsize=6, ncol=2)
    n_pruned = sum(_pruned_step(r) is not None for r in runs)
    fig.suptitle(f"{len(runs)} runs, {n_pruned} pruned", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def render(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Render the runs under ``path`` into ``out`` (default: beside them); returns the files.

    One run gives ``gradema-<id>.png``; several give ``gradema-sweep.png`` plus one PNG per
    run; an ``index.html`` shows them all with each run's state and escalation reasons.
    """
    runs = [read_run(p) for p in find_runs(path)]
    if not runs:
        raise FileNotFoundError(f"No offline W&B runs (offline-run-*) under {path}.")
    out_dir = Path(out) if out is not None else (Path(path) if Path(path).is_dir() else Path(path).parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if len(runs) > 1:
        files.append(out_dir / "gradema-sweep.png")
        _render_sweep(runs, files[-1])
    for run in runs:
        files.append(out_dir / f"gradema-{run.run_id}.png")
        _render_run(run, files[-1])
    files.append(out_dir / "index.html")
    files[-1].write_text(_html(runs, files[:-1]))
    return files


def _html(runs: list[OfflineRun], images: list[Path]) -> str:
    rows = []
    for run in runs:
        reason = run.summary.get(_P + "prune_reason") or run.summary.get(_P + "first_escalation_reason") or ""
        rows.append(
            f"<tr><td>{html.escape(run.run_id)}</td><td>{html.escape(run.state)}</td>"
            f"<td>{html.escape(str(_pruned_step(run) if _pruned_step(run) is not None else ''))}</td>"
            f"<td>{html.escape(str(reason))}</td></tr>"
        )
    imgs = "\n".join(f'<p><img src="{html.escape(p.name)}" style="max-width:100%"></p>' for p in images)
    return (
        "<!doctype html><meta charset=utf-8><title>gradema drift report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left}</style>"
        "<h1>gradema drift report</h1><table><tr><th>run</th><th>state</th><th>pruned at</th>"
        f"<th>why</th></tr>{''.join(rows)}</table>{imgs}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the report's options."""
    parser.add_argument("path", help="an offline run directory, a wandb/ directory or a sweep directory")
    parser.add_argument("--out", default=None, help="where to write the PNG and HTML files (default: beside the runs)")


def run(args: argparse.Namespace) -> int:
    """Render and print the files written."""
    for f in render(args.path, args.out):
        print(f)
    return 0
