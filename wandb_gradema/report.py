"""``wandb-gradema report PATH``: the story of offline runs, as PNG and a small HTML page.

One run, top to bottom: the learning rate, the loss, the gradient norm with its EMA band, the
detector's score against its anomaly line, and gradient health; every escalation is a labelled
line (its rules; prune-grade ones solid red), the per-layer telemetry windows are shaded, and
rows logged far apart are drawn as points, not joined into ramps. A sweep (the folder the sweep
runner prints, ``.../wandb/sweep-<id>``, or any folder of several runs): one row per run with
the sweep's metric, the norm and the score; the searched parameters, which runs were pruned and
why, and the best run in the titles and the page. Reads runs with ``wandb leet inspect``
(``wandb_gradema.offline``); needs matplotlib (``pip install -e ".[demo]"``).
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .offline import OfflineRun, find_runs, read_run
from .wandb_sink import PREFIX

__all__ = ["ReportError", "SweepInfo", "add_arguments", "load", "render", "run", "run_figure", "sweep_figure"]

_P = PREFIX + "/"
#: Relative drift band drawn around the EMA: the original tracker's 0.5 threshold.
_BAND = 0.5
#: The detector calls a step anomalous at score 1; ``patience`` such steps in a row escalate.
_ANOMALY_LINE = 1.0
_SCORE_CAP = 1e3


class ReportError(Exception):
    """A path the report cannot draw (said in one line by the CLI)."""


@dataclass
class SweepInfo:
    """What a sweep folder's ``results.json`` says: the metric, the searched parameters, outcomes."""

    sweep_id: str = ""
    metric: str | None = None
    goal: str = "minimize"
    params: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # run id -> its results row

    def best_run(self) -> str | None:
        """The finished run with the best metric value, as the sweep runner's table names it."""
        sign = 1.0 if self.goal == "minimize" else -1.0
        scored = [
            (sign * row["best"], rid)
            for rid, row in self.rows.items()
            if row.get("outcome") == "finished" and isinstance(row.get("best"), (int, float))
        ]
        return min(scored)[1] if scored else None


# ------------------------------------------------------------------ reading
def load(path: str | Path) -> tuple[list[OfflineRun], SweepInfo | None]:
    """The runs under ``path`` (a run folder, a ``wandb/`` folder or a sweep folder) and the
    sweep's results when ``path`` is a sweep folder.

    Raises:
        ReportError: ``path`` does not exist or holds no offline run.
    """
    root = Path(path)
    if not root.exists():
        raise ReportError(f"{path}: no such file or folder.")
    results = root / "results.json" if root.is_dir() else root
    sweeps = sorted(root.glob("sweep-*/results.json")) if root.is_dir() else []
    if not results.is_file() and len(sweeps) == 1:  # a wandb/ folder holding one sweep: draw it as one
        results = sweeps[0]
    info = None
    if results.name == "results.json" and results.is_file():
        info, paths = _read_results(results)
    else:
        paths = find_runs(root) if root.is_dir() else ([root] if root.suffix == ".wandb" else [])
    if not paths:
        raise ReportError(
            f"{path}: no offline W&B run here. Give a run folder (wandb/offline-run-*), a wandb/ "
            f"folder or a sweep folder (wandb/sweep-<id>, as `wandb-gradema sweep` prints)."
        )
    runs = []
    for p in paths:
        try:
            runs.append(read_run(p))
        except (RuntimeError, OSError, ValueError) as exc:
            raise ReportError(f"{p}: cannot read this run ({str(exc).splitlines()[0]}).") from None
    return runs, info


def _read_results(results: Path) -> tuple[SweepInfo, list[Path]]:
    try:
        data = json.loads(results.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{results}: not a sweep's results.json ({exc}).") from None
    rows = data.get("runs") or []
    info = SweepInfo(
        sweep_id=str(data.get("sweep_id") or results.parent.name.removeprefix("sweep-")),
        metric=data.get("metric"),
        goal=data.get("goal") or "minimize",
        params=list((rows[0].get("params") or {}) if rows else []),
        rows={str(r.get("run_id")): r for r in rows},
    )
    paths = []
    for row in rows:
        found = Path(row["path"]) if row.get("path") else None
        if found is None or not found.is_dir():  # moved: look beside the sweep folder
            found = next(iter(sorted(results.parent.parent.glob(f"offline-run-*-{row.get('run_id')}"))), None)
        if found is not None:
            paths.append(found)
    return info, paths


def _series(run: OfflineRun, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in run.history:
        step, value = row.get(_P + "step"), row.get(key)
        if isinstance(value, dict):  # W&B's max/min summaries are not rows, but be safe
            continue
        if isinstance(step, (int, float)) and isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(float(step))
            ys.append(float(value))
    return xs, ys


def _metric_series(run: OfflineRun, metric: str) -> tuple[list[float], list[float]]:
    """``metric`` against the monitor's step where a row has both, else against W&B's ``_step``."""
    xs, ys = _series(run, metric)
    if xs:
        return xs, ys
    pairs = [(r.get("_step"), r.get(metric)) for r in run.history]
    good = [(float(s), float(v)) for s, v in pairs if isinstance(s, (int, float)) and isinstance(v, (int, float))]
    return [g[0] for g in good], [g[1] for g in good]


@dataclass
class _Event:
    step: int
    types: str
    confirmed: bool
    reason: str


def events(run: OfflineRun) -> list[_Event]:
    """The run's escalations: from the summary's ``events`` list, else from the history marks."""
    logged = run.summary.get(_P + "events")
    if isinstance(logged, list) and logged:
        return [
            _Event(int(e.get("step", 0)), str(e.get("types", "")), bool(e.get("confirmed")), str(e.get("reason", "")))
            for e in logged
            if isinstance(e, dict)
        ]
    steps = [int(r[_P + "step"]) for r in run.history if r.get(_P + "escalation_event") == 1 and _P + "step" in r]
    first = run.summary.get(_P + "first_escalation_reason", "")
    return [_Event(s, "", False, str(first) if i == 0 else "") for i, s in enumerate(steps)]


def _pruned_step(run: OfflineRun) -> int | None:
    step = run.summary.get(_P + "pruned_step")
    return int(step) if run.summary.get(_P + "pruned") and isinstance(step, (int, float)) else None


# ------------------------------------------------------------------ drawing
def _figure(rows: int, cols: int, size: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """A figure drawn off-screen, without pyplot: a notebook's inline backend stays as it was."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise ReportError('the report needs matplotlib: pip install -e ".[demo]" (or pip install matplotlib).') from None
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, **kwargs)


def _plot(ax: Any, xs: list[float], ys: list[float], **kw: Any) -> None:
    """Consecutive steps as a line; rows logged far apart as points (a gap is not a ramp)."""
    label = kw.pop("label", None)
    color = kw.pop("color", None)
    if kw.pop("join", False) and len(xs) > 1:  # a metric evaluated every N steps: points, faintly joined
        ax.plot(xs, ys, color=color, ls=":", lw=0.8, alpha=0.5)
    segment_x: list[float] = []
    segment_y: list[float] = []
    lone_x: list[float] = []
    lone_y: list[float] = []

    def close() -> None:
        if len(segment_x) > 1:
            ax.plot(segment_x, segment_y, color=color, **kw)
        else:
            lone_x.extend(segment_x)
            lone_y.extend(segment_y)
        segment_x.clear()
        segment_y.clear()

    for i, (x, y) in enumerate(zip(xs, ys)):
        if i and x - xs[i - 1] > 1:
            close()
        segment_x.append(x)
        segment_y.append(y)
    close()
    if lone_x:
        ax.plot(lone_x, lone_y, ls="none", marker="o", ms=2.5, color=color)
    ax.plot([], [], color=color, marker="o", ms=2.5, label=label, **kw)  # one legend entry: line and point


def _segments(xs: list[float]) -> list[tuple[int, int]]:
    """Index ranges ``[a, b)`` of consecutive steps (no gap of more than one step inside)."""
    bounds = [0] + [i for i in range(1, len(xs)) if xs[i] - xs[i - 1] > 1] + [len(xs)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _finite(xs: list[float], ys: list[float], *, positive: bool = False) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not positive)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _windows(run: OfflineRun) -> list[tuple[float, float]]:
    """The per-layer telemetry windows: runs of rows marked ``escalated``."""
    spans: list[tuple[float, float]] = []
    for x, on in zip(*_series(run, _P + "escalated")):
        if not on:
            continue
        if spans and x - spans[-1][1] <= 1:
            spans[-1] = (spans[-1][0], x)
        else:
            spans.append((x, x))
    return spans


def _mark(ax: Any, run: OfflineRun, *, label: bool = False) -> None:
    """Telemetry windows shaded, escalations as lines (prune-grade: solid red), the prune."""
    for a, b in _windows(run):
        ax.axvspan(a - 0.5, b + 0.5, color="orange", alpha=0.13, lw=0)  # in the figure's key
    steps = _series(run, _P + "step")[0]
    right = 0.65 * max(steps) if steps else math.inf  # labels past it go left of their line
    for i, e in enumerate(events(run)):
        style = {"color": "crimson", "ls": "-", "lw": 1.4} if e.confirmed else {"color": "darkorange", "ls": "--", "lw": 1.1}
        ax.axvline(e.step, **style)
        if label:
            left = e.step > right
            ax.annotate(_event_label(e), (e.step, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-2 if left else 2, -2 - 9 * (i % 4)), ha="right" if left else "left",
                        textcoords="offset points", fontsize=6.5, va="top", color=style["color"],
                        bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    pruned = _pruned_step(run)
    if pruned is not None:
        ax.axvline(pruned, color="red", lw=2.5)


def _event_label(e: _Event) -> str:
    """``137 unstable_rise (prune-grade)``: the step, its first rules, and whether it could prune."""
    types = [t for t in e.types.split(",") if t]
    rules = ", ".join(types[:2]) + (f" +{len(types) - 2}" if len(types) > 2 else "") if types else "escalation"
    return f"{e.step} {rules}" + (" (prune-grade)" if e.confirmed else "")


def _key_legend(fig: Any) -> None:
    """One figure-level key for the marks shared by every panel."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], color="darkorange", ls="--", lw=1.1, label="escalation (alert, telemetry)"),
        Line2D([], [], color="crimson", lw=1.4, label="prune-grade escalation"),
        Line2D([], [], color="red", lw=2.5, label="pruned"),
        Patch(color="orange", alpha=0.25, label="per-layer telemetry window"),
        Line2D([], [], color="gray", marker="o", ms=2.5, ls="none", label="row (sparse rows are points)"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=7, frameon=False)


def _lr_panel(ax: Any, run: OfflineRun) -> bool:
    xs, ys = _finite(*_series(run, _P + "lr"))
    if not ys:
        return False
    _plot(ax, xs, ys, color="tab:cyan", lw=1.2, label="learning rate")
    ax.set_ylabel("LR")
    _mark(ax, run, label=True)
    ax.legend(loc="lower right", fontsize=7)
    return True


def _loss_panel(ax: Any, run: OfflineRun, metric: str | None = None) -> bool:
    key = metric or _P + "loss"
    xs, ys = _finite(*(_metric_series(run, key) if metric else _series(run, key)), positive=True)
    if not ys:
        return False
    _plot(ax, xs, ys, color="tab:brown", lw=1, label=metric or "loss (observe_loss)", join=bool(metric))
    ax.set_yscale("log")
    ax.set_ylabel(metric or "loss")
    _mark(ax, run)
    ax.legend(loc="upper right", fontsize=7)
    return True


def _norm_panel(ax: Any, run: OfflineRun) -> None:
    raw_x, raw_y = _series(run, _P + "grad_norm")
    xs, norm = _finite(raw_x, raw_y, positive=True)
    ex, ema = _finite(*_series(run, _P + "grad_norm_ema"), positive=True)
    _plot(ax, xs, norm, lw=1, color="tab:blue", label="grad norm")
    if ema:
        _plot(ax, ex, ema, lw=1.4, color="black", label="EMA")
        for i, (a, b) in enumerate(_segments(ex)):  # the band, like the lines, never bridges a gap
            part = ema[a:b]
            ax.fill_between(ex[a:b], [e * (1 - _BAND) for e in part], [e * (1 + _BAND) for e in part], color="gray",
                            alpha=0.2, lw=0, label=f"EMA ±{_BAND:.0%} (classic drift band)" if i == 0 else None)
    bad = [x for x, y in zip(raw_x, raw_y) if not math.isfinite(y)]
    if bad:
        ax.scatter(bad, [max(norm or [1.0])] * len(bad), marker="x", color="red", label="non-finite", zorder=5)
    ax.set_yscale("log")
    ax.set_ylabel("grad norm")
    _mark(ax, run)
    ax.legend(loc="upper left", fontsize=7, ncol=3)


def _score_panel(ax: Any, run: OfflineRun, *, drift: bool = True) -> None:
    xs, ys = _series(run, _P + "score_max")
    ys = [min(y, _SCORE_CAP) if math.isfinite(y) else _SCORE_CAP for y in ys]
    _plot(ax, xs, ys, lw=1, color="tab:red", label="detector score (max since last row)")
    if drift:
        dx, dy = _series(run, _P + "norm_drift_max")
        dy = [min(y, _SCORE_CAP) if math.isfinite(y) else _SCORE_CAP for y in dy]
        _plot(ax, dx, dy, lw=0.8, color="tab:purple", alpha=0.6, label="classic norm drift (logged, not used)")
    ax.axhline(_ANOMALY_LINE, color="tab:red", ls=":", lw=1, label="score 1: anomalous step (3 in a row escalate)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("score")
    _mark(ax, run)
    ax.legend(loc="upper left", fontsize=7, ncol=2)


def _health_panel(ax: Any, run: OfflineRun) -> None:
    for key, label, color in (("health", "health", "tab:green"), ("active_share", "share of tensors with a gradient", "tab:olive")):
        _plot(ax, *_series(run, _P + key), lw=1, color=color, label=label)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("health")
    _mark(ax, run)
    ax.legend(loc="lower left", fontsize=7, ncol=2)


def _title(run: OfflineRun) -> str:
    pruned = _pruned_step(run)
    found = events(run)
    if pruned is not None:
        state = f"PRUNED at step {pruned} ({run.summary.get(_P + 'prune_types', '')})"
    elif found:
        confirmed = next((e for e in found if e.confirmed), None)
        state = f"{run.state}; escalated at {', '.join(str(e.step) for e in found[:6])}"
        if confirmed is not None:
            state += f"; prune-grade at {confirmed.step}"
    else:
        state = f"{run.state}; no escalation"
    lr = run.config.get("lr")
    cfg = f" lr={lr:g}" if isinstance(lr, (int, float)) else ""
    return f"{run.run_id}{cfg}: {state}"


def run_figure(run: OfflineRun) -> Any:
    """One run's story as a matplotlib Figure: LR, loss, norm, score, health (those it logged)."""
    panels: list[Any] = []
    has_lr = bool(_finite(*_series(run, _P + "lr"))[1])
    has_loss = bool(_finite(*_series(run, _P + "loss"), positive=True)[1])
    n = 3 + has_lr + has_loss
    fig, axes = _figure(n, 1, (10, 1.9 * n + 0.8), sharex=True)
    panels = list(axes)
    if has_lr:
        _lr_panel(panels.pop(0), run)
    if has_loss:
        _loss_panel(panels.pop(0), run)
    _norm_panel(panels.pop(0), run)
    _score_panel(panels.pop(0), run)
    _health_panel(panels.pop(0), run)
    if not has_lr:
        _mark(axes[0], run, label=True)
    axes[-1].set_xlabel(f"optimizer step ({_P}step)")
    fig.suptitle(_title(run), fontsize=10)
    _key_legend(fig)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _sweep_title(run: OfflineRun, info: SweepInfo | None, best: str | None) -> tuple[str, str]:
    row = info.rows.get(run.run_id, {}) if info is not None else {}
    params = " ".join(f"{k}={_fmt(v)}" for k, v in (row.get("params") or {}).items())
    if not params:
        lr = run.config.get("lr")
        params = f"lr={lr:g}" if isinstance(lr, (int, float)) else ""
    outcome = row.get("outcome") or ("pruned" if _pruned_step(run) is not None else run.state)
    if outcome == "pruned":
        why = f"PRUNED at {_pruned_step(run)}: {run.summary.get(_P + 'prune_types', '')}"
        color = "red"
    else:
        found = events(run)
        would = next((e for e in found if e.confirmed), None)
        why = outcome + (f", would prune at {would.step}: {would.types}" if would else "")
        why += f", escalated at {found[0].step}" if found and not would else ""
        color = "black"
    if best is not None and run.run_id == best:
        why = "BEST  " + why
        color = "darkgreen"
    if info is not None and info.metric and isinstance(row.get("best"), (int, float)):
        why += f"  best {info.metric} {_fmt(row['best'])}"
    return f"{run.run_id} {params}: {why}", color


def sweep_figure(runs: list[OfflineRun], info: SweepInfo | None = None) -> Any:
    """Several runs, one row each: the sweep's metric (or the loss), the norm and the score."""
    metric = info.metric if info is not None else None
    fig, axes = _figure(len(runs), 3, (15, 1.9 * len(runs) + 1.2), squeeze=False)
    best = info.best_run() if info is not None else None
    for row, run in zip(axes, runs):
        if not _loss_panel(row[0], run, metric):
            row[0].text(0.5, 0.5, f"no {metric or 'loss'} logged", ha="center", va="center", transform=row[0].transAxes)
        _norm_panel(row[1], run)
        _score_panel(row[2], run, drift=False)
        _mark(row[2], run, label=True)
        title, color = _sweep_title(run, info, best)
        row[0].set_title(title, fontsize=8, color=color, loc="left")
        for ax in row:
            legend = ax.get_legend()
            if legend is not None:
                legend.set_visible(False)
    last = max((max(_series(r, _P + "step")[0] or [0.0]) for r in runs), default=0.0)
    for ax in axes.flat:  # one step axis: a pruned run's row ends where it was stopped
        ax.set_xlim(-0.02 * last, 1.02 * last + 1)
    axes[0][0].legend(loc="upper right", fontsize=6)
    axes[0][1].legend(loc="upper left", fontsize=6, ncol=2)
    axes[0][2].legend(loc="upper left", fontsize=6)
    n_pruned = sum(_pruned_step(r) is not None for r in runs)
    head = f"sweep {info.sweep_id}: " if info is not None and info.sweep_id else ""
    searched = f"; searched {', '.join(info.params)}" if info is not None and info.params else ""
    goal = f" ({info.goal})" if info is not None and metric else ""
    best_text = f"; best run {best}" if best else ""
    fig.suptitle(f"{head}{len(runs)} runs, {n_pruned} pruned; metric {metric or 'loss'}{goal}{searched}{best_text}",
                 fontsize=10)
    _key_legend(fig)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render(path: str | Path, out: str | Path | None = None) -> list[Path]:
    """Render the runs under ``path`` into ``out`` (default: beside them); returns the files.

    One run gives ``gradema-<id>.png``; several give ``gradema-sweep.png`` plus one PNG per
    run; an ``index.html`` shows them all with each run's state and escalations with reasons.

    Raises:
        ReportError: nothing to draw at ``path`` (the message says what to give instead).
    """
    runs, info = load(path)
    root = Path(path)
    out_dir = Path(out) if out is not None else (root if root.is_dir() else root.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    if len(runs) > 1 or info is not None:
        files.append(out_dir / "gradema-sweep.png")
        sweep_figure(runs, info).savefig(files[-1], dpi=90)
    for one in runs:
        files.append(out_dir / f"gradema-{one.run_id}.png")
        run_figure(one).savefig(files[-1], dpi=110)
    files.append(out_dir / "index.html")
    files[-1].write_text(_html(runs, info, files[:-1]))
    return files


def _html(runs: list[OfflineRun], info: SweepInfo | None, images: list[Path]) -> str:
    best = info.best_run() if info is not None else None
    rows = []
    for one in runs:
        found = events(one)
        listed = "<br>".join(
            f"{e.step}{' <b>prune-grade</b>' if e.confirmed else ''}: {html.escape(e.reason)}" for e in found
        )
        pruned = _pruned_step(one)
        rows.append(
            f"<tr><td>{html.escape(one.run_id)}{' (best)' if one.run_id == best else ''}</td>"
            f"<td>{html.escape(one.state)}</td><td>{'' if pruned is None else pruned}</td><td>{listed}</td></tr>"
        )
    imgs = "\n".join(f'<p><img src="{html.escape(p.name)}" style="max-width:100%"></p>' for p in images)
    return (
        "<!doctype html><meta charset=utf-8><title>gradema drift report</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left;vertical-align:top}</style>"
        "<h1>gradema drift report</h1><table><tr><th>run</th><th>state</th><th>pruned at</th>"
        f"<th>escalations (step: why)</th></tr>{''.join(rows)}</table>{imgs}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the report's options."""
    parser.add_argument("path", help="a run folder (wandb/offline-run-*), a wandb/ folder or a sweep folder (wandb/sweep-<id>)")
    parser.add_argument("--out", default=None, help="where to write the PNG and HTML files (default: beside the runs)")


def run(args: argparse.Namespace) -> int:
    """Render and print the files written; a path with nothing to draw is one line on stderr."""
    try:
        files = render(args.path, args.out)
    except (ReportError, OSError) as exc:
        print(f"wandb-gradema report: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0
