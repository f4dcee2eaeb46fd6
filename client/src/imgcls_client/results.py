"""Results of a study, local or SageMaker: one table (CSV + Markdown), the best hyperparameters, and plots.

API (shared with `imgcls aws results`):

    rows = [TrialResult(trial="3", params={"lr": 0.01}, objective=0.42, status="COMPLETE", epochs=4,
                        seconds=31.2, reason="", curve=[(1, 0.9), (2, 0.6), ...]), ...]
    write_results(out_dir, spec, rows)   # results.csv, results.md, best_hyperparameters.json, *.png

Statuses: COMPLETE, PRUNED (stopped early by the study), FAIL (reason = the job's output/failure),
RUNNING, INTERRUPTED (a local attempt cut off by a stopped controller, run again on resume; not
counted as a trial). The objective is the job's last value of spec.objective_metric (SageMaker's rule); the
curve is that metric's per-epoch counterpart (valid_loss for best_valid_loss), one point per epoch.
Figures are drawn on matplotlib's Agg canvas (no pyplot, no display).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import TuningSpec, as_hyperparameter_text

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
BEST_JSON = "best_hyperparameters.json"
OBJECTIVE_PNG = "objective.png"
SLICES_PNG = "parameter_slices.png"
CURVES_PNG = "curves.png"


@dataclass
class TrialResult:
    trial: str
    params: dict[str, Any]
    objective: float | None
    status: str
    epochs: int | None = None
    seconds: float | None = None
    reason: str = ""
    curve: list[tuple[int, float]] = field(default_factory=list)


def curve_metric(objective_metric: str) -> str:
    """The per-epoch metric that shows a trial's progress towards the objective."""
    return objective_metric.removeprefix("best_")


def trial_counts(rows: list[TrialResult]) -> str:
    """'4 trials (3 complete, 1 pruned)': what the budget counts; interrupted attempts are named apart."""
    counted = [r for r in rows if r.status != "INTERRUPTED"]
    by_status = ", ".join(f"{sum(r.status == s for r in counted)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
                          if any(r.status == s for r in counted))
    text = f"{len(counted)} trials" + (f" ({by_status})" if by_status else "")
    interrupted = len(rows) - len(counted)
    if interrupted:
        text += f" and {interrupted} interrupted attempt{'s' if interrupted > 1 else ''} (run again, not counted)"
    return text


def best_trial(spec: TuningSpec, rows: list[TrialResult]) -> TrialResult | None:
    done = [r for r in rows if r.status == "COMPLETE" and r.objective is not None]
    if not done:
        return None
    pick = min if spec.direction == "minimize" else max
    return pick(done, key=lambda r: r.objective)


def best_hyperparameters(spec: TuningSpec, row: TrialResult) -> dict[str, str]:
    """Static + tuned values as SageMaker hyperparameters (strings): a training job's HyperParameters,
    the image's input/config/hyperparameters.json, or `imgcls train --hyperparameters FILE`."""
    return as_hyperparameter_text({**spec.fixed_hyperparameters(), **row.params})


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_results(out: str | Path, spec: TuningSpec, rows: list[TrialResult], plots: bool = True) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(spec.parameters)
    header = ["trial", *names, spec.objective_metric, "status", "epochs", "seconds", "reason"]
    table = [[r.trial, *(r.params.get(n) for n in names), r.objective, r.status, r.epochs,
              None if r.seconds is None else round(r.seconds, 1), r.reason] for r in rows]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in table])  # full precision for programs
    written = {"csv": _write(out / RESULTS_CSV, buf.getvalue())}

    best = best_trial(spec, rows)
    direction = "lowest" if spec.direction == "minimize" else "highest"
    lines = [f"# Tuning results: {spec.objective_metric} ({direction} is best)", "",
             f"Strategy {spec.strategy}, early stopping {spec.early_stopping}; {trial_counts(rows)}.", ""]
    md_rows = [["**" + _fmt(v) + "**" if best is not None and r is best and v not in (None, "") else _fmt(v) for v in row]
               for r, row in zip(rows, table)]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if h in (spec.objective_metric, "epochs", "seconds") else "---" for h in header) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in md_rows]
    if best is not None:
        hps = best_hyperparameters(spec, best)
        lines += ["", f"Best: trial {best.trial}, {spec.objective_metric} = {best.objective:.6g}.",
                  "", "Train with these values: `imgcls train --data DIR --model-dir DIR --hyperparameters "
                  f"{BEST_JSON}` or `imgcls train --data DIR --model-dir DIR "
                  + " ".join(f"--{k} {v}" for k, v in hps.items()) + "`."]
        written["best"] = _write(out / BEST_JSON, json.dumps(hps, indent=2) + "\n")
    written["md"] = _write(out / RESULTS_MD, "\n".join(lines) + "\n")
    if plots:
        written.update(plot_results(out, spec, rows))
    return written


def _write(path: Path, text: str) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------- plots

_COLOURS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:gray", "INTERRUPTED": "tab:gray"}


def _canvas(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    tmp = path.with_suffix(".tmp.png")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return path


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_results(out: Path, spec: TuningSpec, rows: list[TrialResult]) -> dict[str, Path]:
    from imgcls.figures import literal_text  # values can be paths: a `$` pair would be read as mathtext
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric = spec.objective_metric
    paths: dict[str, Path] = {}
    better = min if spec.direction == "minimize" else max

    # objective per trial + best so far
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    order = list(range(len(rows)))
    for status, colour in _COLOURS.items():
        pts = [(i, r.objective) for i, r in zip(order, rows) if r.status == status and r.objective is not None]
        if pts:
            ax.scatter(*zip(*pts), c=colour, label=status.lower(), zorder=3)
    failed = [i for i, r in zip(order, rows) if r.objective is None]
    if failed:
        for i in failed:
            ax.axvline(i, color=_COLOURS.get(rows[i].status, "tab:red"), alpha=0.25, lw=6)
        ax.plot([], [], color="tab:red", alpha=0.25, lw=6, label="no objective (failed)")
    best_x, best_y, current = [], [], None
    for i, r in zip(order, rows):
        if r.status == "COMPLETE" and r.objective is not None:
            current = r.objective if current is None else better(current, r.objective)
        if current is not None:
            best_x.append(i)
            best_y.append(current)
    if best_x:
        ax.step(best_x, best_y, where="post", color="black", label="best so far")
    ax.set_xticks(order, [r.trial for r in rows], rotation=90 if len(rows) > 20 else 0)
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial ({spec.direction})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    paths["objective"] = _canvas(fig, out / OBJECTIVE_PNG)

    # one slice per parameter: objective against the value tried
    names = list(spec.parameters)
    cols = min(3, max(1, len(names)))
    fig = Figure(figsize=(4 * cols, 3.2 * math.ceil(len(names) / cols)), layout="constrained")
    for k, name in enumerate(names):
        ax = fig.add_subplot(math.ceil(len(names) / cols), cols, k + 1)
        p = spec.parameters[name]
        for status, colour in _COLOURS.items():
            pts = [(r.params.get(name), r.objective) for r in rows if r.status == status and r.objective is not None and name in r.params]
            if not pts:
                continue
            xs, ys = zip(*pts)
            if p.type == "categorical" and not _numeric(p.values):
                labels = [str(v) for v in p.values]
                xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
            ax.scatter(xs, ys, c=colour, label=status.lower())
        if p.type == "categorical" and not _numeric(p.values):
            ax.set_xticks(range(len(p.values)), [literal_text(str(v)[:20]) for v in p.values], rotation=30, ha="right")
            ax.set_xlim(-0.5, len(p.values) - 0.5)
        elif p.scale == "log" or (p.type == "categorical" and _numeric(p.values) and min(p.values) > 0
                                  and max(p.values) / min(p.values) >= 16):
            ax.set_xscale("log")
        if p.type == "integer":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
    fig.suptitle(f"{metric} by parameter value (slices)")
    paths["slices"] = _canvas(fig, out / SLICES_PNG)

    # per-epoch curves: what pruning saw
    curves = [r for r in rows if r.curve]
    if curves:
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.add_subplot()
        from matplotlib import colormaps
        cmap = colormaps["viridis"]
        for k, r in enumerate(curves):
            xs, ys = zip(*r.curve)
            style = "--" if r.status == "PRUNED" else ":" if r.status == "FAIL" else "-"
            ax.plot(xs, ys, style, marker="o", ms=3, color=cmap(k / max(1, len(curves) - 1)), alpha=0.85)
            ax.annotate(r.trial, (xs[-1], ys[-1]), fontsize=7, xytext=(3, 0), textcoords="offset points")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(curve_metric(metric))
        if min(y for r in curves for _, y in r.curve) > 0 and max(y for r in curves for _, y in r.curve) / min(y for r in curves for _, y in r.curve) > 20:
            ax.set_yscale("log")
        ax.set_title(f"per-epoch {curve_metric(metric)} by trial (dashed: pruned, dotted: failed)")
        paths["curves"] = _canvas(fig, out / CURVES_PNG)
    return paths
