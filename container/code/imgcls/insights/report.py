"""report.html and insights.json from the raw insight files: the profiler/debugger report of a job.

The HTML is one self-contained file: inline CSS, charts as base64 PNGs drawn on matplotlib's Agg
canvas, no script, no remote font or image, so it opens offline and from an S3 download alike.
insights.json holds the same facts for machines. Each section is built on its own: a stopped job's
partial files give a partial report, with a note where a section has no data; a chart or section
that fails to draw is a "could not draw" note and one warning. No torch here.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..figures import could_not_draw, label_text, literal_text, reason
from .records import COMPONENT_NAMES, RAW_DIR, STEP_COMPONENTS, Records, load_records
from .rules import Finding, _json_safe, default_params, evaluate_rules, loop_samples, phases, step_outliers, validate_rule_params, verdict, warmup_count

log = logging.getLogger(__name__)

REPORT_HTML = "report.html"
INSIGHTS_JSON = "insights.json"
DPI = 80
COLOURS = {"data": "#d62728", "h2d": "#9467bd", "forward": "#1f77b4", "backward": "#2ca02c", "optimizer": "#ff7f0e", "other": "#7f7f7f"}

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;padding:1em 2em;color:#222}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{background:#f5f8ff;border-left:5px solid #3b6fd8;padding:.6em 1em;margin:1em 0}.verdict p{margin:.3em 0}
.headline{font-size:1.15em;font-weight:600}
.triggered{background:#fdecea}.triggered td.status{color:#b3261e;font-weight:700}.na td{color:#888}
.note{color:#666;font-style:italic}img{max-width:100%;height:auto;display:block;margin:.5em 0}
code{background:#f3f3f3;padding:0 .25em}small{color:#666}
"""


# --- small helpers ---------------------------------------------------------------------------------

def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the report is for whoever reads the output
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _e(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if 10 ** digits <= abs(value) < 1e12:  # no 1.17e+03 for a plain 1,170
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _table(headers: list[str] | None, rows: list[list], numeric: set[int] = frozenset(), row_class=None) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>" if headers else ""
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_class(i)}"' if row_class and row_class(i) else ""
        cells = "".join(f'<td class="num">{_e(c)}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _figure(width: float = 10.0, height: float = 3.4, **kw) -> Figure:
    return Figure(figsize=(width, height), layout="constrained", **kw)


def _could_not_draw(what: str, exc: Exception) -> str:
    """The note in place of what failed, and its one warning line."""
    note = could_not_draw(what, exc)
    log.warning("%s", note)
    return f'<p class="note">{_e(note)}</p>'


def _img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG; a note instead if it fails to draw (the rest of its section stays)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    except Exception as exc:  # matplotlib raises many types (mathtext, layout, fonts)
        return _could_not_draw(alt, exc)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _stats(values: np.ndarray) -> dict:
    values = values[np.isfinite(values)]
    if not values.size:
        return {}
    return {"min": float(values.min()), "p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95)),
            "p99": float(np.percentile(values, 99)), "max": float(values.max()), "mean": float(values.mean()), "n": int(values.size)}


def _fmt_seconds(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


# --- sections: each returns (html, facts for insights.json) ----------------------------------------

def _summary(rec: Records, facts: dict) -> str:
    times = phases(rec)
    end = next((e for e in reversed(rec.timeline) if e.get("event") == "end"), {})
    hp = rec.job.get("hyperparameters") or {}
    status = end.get("status") or ("running or killed" if rec.timeline else "unknown")
    facts.update(status=status, reason=end.get("reason"), phases=times, device=rec.loader.get("device") or rec.job.get("device"),
                 steps=len(rec.steps), epochs=len(rec.history))
    job = times.get("job")
    rows = [["Status", _e(status) + (f" — {_e(end['reason'])}" if end.get("reason") else "")],
            ["Device", _e(facts["device"] or "–")],
            ["Model", _e(rec.job.get("backbone") or hp.get("backbone") or "–")],
            ["Steps recorded / epochs", f"{len(rec.steps):,} / {len(rec.history)}"]]
    for key, label in (("initialization", "Initialization (process start → first step)"), ("loop", "Training loop"),
                       ("finalization", "Finalization (last step → end)")):
        value = times.get(key)
        share = f" ({value / job:.0%})" if value is not None and job and math.isfinite(job) and job > 0 else ""
        rows.append([label, _fmt_seconds(value) + share])
    rows.append(["Job duration", _fmt_seconds(job)])
    out = _table(None, rows)
    if hp:
        shown = ", ".join(f"{k}={v}" for k, v in hp.items())
        out += f"<p><small>Hyperparameters: {_e(shown)}</small></p>"
    if rec.timeline:
        out += _img(_timeline_chart(rec, times), "job timeline")
        events = [[_e(e.get("event")), _num(e.get("t"), 5), _e(", ".join(f"{k}={v}" for k, v in e.items() if k not in ("event", "t")))]
                  for e in rec.timeline if e.get("event") not in ("epoch_start", "evaluation_start", "evaluation_end") or len(rec.timeline) < 40]
        out += "<details><summary>Timeline events</summary>" + _table(["event", "t [s]", "details"], events, {1}) + "</details>"
        facts["timeline"] = rec.timeline
    return out


SPANS = (("process_start", "data_scan_start", "start-up", "#dadaeb"), ("data_scan_start", "data_scan_end", "data scan", "#bcbddc"),
         ("model_build_start", "model_ready", "model", "#e377c2"), ("epoch_start", "evaluation_start", "training", "#6baed6"),
         ("evaluation_start", "evaluation_end", "evaluation", "#74c476"), ("training_end", "end", "final", "#fdd0a2"))


def _timeline_chart(rec: Records, times: dict) -> Figure:
    """The job's phases from the timeline events: start-up, data scan, model, training and evaluation per epoch, end."""
    fig = _figure(10, 1.9)
    ax = fig.subplots()
    job = times.get("job") or max((float(e["t"]) for e in rec.timeline if e.get("t") is not None), default=1.0)
    drawn = set()
    for start_name, end_name, label, colour in SPANS:
        starts = [float(e["t"]) for e in rec.timeline if e.get("event") == start_name and e.get("t") is not None]
        ends = [float(e["t"]) for e in rec.timeline if e.get("event") == end_name and e.get("t") is not None]
        for start in starts:  # each start pairs with the first end after it
            end = min((t for t in ends if t >= start), default=None)
            if end is None and label == "training":
                end = times.get("initialization", 0) + times.get("loop", 0) if times.get("loop") else None
            if end is not None and end > start:
                ax.broken_barh([(start, end - start)], (0, 1), facecolors=colour, label=None if label in drawn else label)
                drawn.add(label)
    for event in rec.timeline:
        if event.get("event") in ("first_step", "checkpoint") and event.get("t") is not None:
            ax.axvline(float(event["t"]), color="#d62728" if event["event"] == "first_step" else "#555555", linewidth=1,
                       label=None if event["event"] in drawn else event["event"].replace("_", " "))
            drawn.add(event["event"])
    ax.set_yticks([])
    ax.set_xlabel("seconds since process start")
    ax.set_xlim(0, max(job, 1e-3) * 1.01)
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.05), fontsize=8, frameon=False)
    return fig


def _rules_section(findings: list[Finding]) -> str:
    order = sorted(findings, key=lambda f: (not f.triggered, not f.applicable, f.kind, f.rule))
    rows = []
    for f in order:
        status = "TRIGGERED" + (" (stop)" if f.stop else "") if f.triggered else "ok" if f.applicable else "n/a"
        steps = ", ".join(map(str, f.steps[:10])) + (f" … ({len(f.steps)})" if len(f.steps) > 10 else "")
        params = ", ".join(f"{k}={v}" for k, v in f.parameters.items())
        rows.append([f"<b>{_e(f.rule)}</b><br><small>{_e(f.kind)}</small>", f'<span>{status}</span>', f"{f.count} / {f.datapoints}",
                     _e(steps or "–"), _e(f.message), f"<small>{_e(params)}</small>",
                     f"<small>{_e(f.recommendation)}</small><details><summary><small>what it checks</small></summary><small>{_e(f.description)}</small></details>"])
    table = _table(["Rule", "Status", "Count / points", "Steps (epochs for epoch rules)", "Finding", "Parameters", "What to do"], rows,
                   row_class=lambda i: "triggered" if order[i].triggered else "na" if not order[i].applicable else "")
    table = table.replace("<td><span>", '<td class="status"><span>')
    fired = sum(f.triggered for f in findings)
    return f"<p>{fired} of {len(findings)} rules triggered. Override a parameter with the hyperparameter " \
           f"<code>&lt;RuleName&gt;_&lt;param&gt;</code>, e.g. <code>StepOutlier_n_outliers=20</code>.</p>" + table


def _steps_section(rec: Records, params: dict, facts: dict) -> str:
    total = rec.column("total")
    if not np.isfinite(total).any():
        return '<p class="note">No step timings were recorded.</p>'
    p = {**default_params()["StepOutlier"], **params.get("StepOutlier", {})}
    found = step_outliers(rec, p)
    warm = warmup_count(len(total))
    stats = _stats(total[warm:]) or _stats(total)
    facts["step_duration"] = {**stats, "warmup_steps": warm, "outliers_robust": found["robust"], "outliers_sigma": found["sigma"],
                              "threshold_robust": found["threshold_robust"], "threshold_sigma": found["threshold_sigma"],
                              "outlier_cause": found["cause"]}
    out = _table(["steps", "mean", "min", "p50", "p95", "p99", "max", "robust outliers", "mean+σ outliers"],
                 [[stats["n"], *(_num(stats[k]) for k in ("mean", "min", "p50", "p95", "p99", "max")), len(found["robust"]), len(found["sigma"])]],
                 set(range(9)))
    out += f"<p><small>Seconds per training step after {warm} warm-up steps. Outliers: above median + {p['mad_multiplier']:g}·MAD = " \
           f"{_num(found['threshold_robust'])} s (robust) and above mean + {p['stddev']:g}σ = {_num(found['threshold_sigma'])} s (SageMaker).</small></p>"
    # histogram of the non-outlier steps, outliers as ticks
    fig = _figure(10, 3.0)
    ax = fig.subplots()
    outlier_set = set(found["robust"])
    steps = rec.step_numbers
    keep = np.isfinite(total) & ~np.isin(steps, list(outlier_set))
    keep[:warm] = False
    ax.hist(total[keep], bins=min(100, max(10, int(keep.sum() // 3) or 10)), color="#6baed6", label="steps")
    if outlier_set:
        out_values = total[np.isin(steps, list(outlier_set))]
        ax.plot(out_values, np.zeros_like(out_values), "|", color="#d62728", markersize=18, markeredgewidth=2, label=f"{len(out_values)} outliers")
    if math.isfinite(found["threshold_robust"]):
        ax.axvline(found["threshold_robust"], color="#d62728", linestyle="--", linewidth=1, label="median+k·MAD")
    if math.isfinite(found["threshold_sigma"]):
        ax.axvline(found["threshold_sigma"], color="#555", linestyle=":", linewidth=1, label="mean+kσ")
    ax.set_xlabel("step duration [s]")
    ax.set_ylabel("steps")
    ax.legend(fontsize=8)
    ax.set_title("Step durations")
    out += _img(fig, "step duration histogram")
    # per-component breakdown over steps
    columns = {c: np.nan_to_num(rec.column(c)) for c in STEP_COMPONENTS}
    shares = {c: float(columns[c][warm:].sum() / max(np.nansum(total[warm:]), 1e-12)) for c in STEP_COMPONENTS}
    facts["components"] = {c: {"share": shares[c], **_stats(rec.column(c)[warm:])} for c in STEP_COMPONENTS}
    fig = _figure(10, 3.4)
    ax = fig.subplots()
    ax.stackplot(steps, *[columns[c] for c in STEP_COMPONENTS], labels=[f"{COMPONENT_NAMES[c]} {shares[c]:.0%}" for c in STEP_COMPONENTS],
                 colors=[COLOURS[c] for c in STEP_COMPONENTS], step="mid")
    for s in outlier_set:
        ax.axvline(s, color="black", alpha=0.15, linewidth=3)
    ax.set_xlabel("global step")
    ax.set_ylabel("seconds")
    ax.set_title("Where each step's time went (outliers shaded)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    out += _img(fig, "per-component step time")
    out += _table(["component", "share of step time", "p50 [s]", "p95 [s]", "max [s]"],
                  [[COMPONENT_NAMES[c], f"{shares[c]:.1%}", *(_num(facts["components"][c].get(k)) for k in ("p50", "p95", "max"))]
                   for c in STEP_COMPONENTS], {1, 2, 3, 4})
    if found["robust"]:
        by_step = {int(s["step"]): s for s in rec.steps if "step" in s}
        rows = [[s, _num(by_step.get(s, {}).get("total")), COMPONENT_NAMES.get(found["cause"].get(s), "–"),
                 _num(by_step.get(s, {}).get(found["cause"].get(s)))] for s in found["robust"][:50]]
        out += "<h3>Outlier steps and what made them slow</h3>" + _table(["step", "total [s]", "slow part", "its time [s]"], rows, {0, 1, 3})
    return out


def _training_section(rec: Records, facts: dict) -> str:
    loss = rec.column("loss")
    out = ""
    if np.isfinite(loss).any() or rec.history:
        fig = _figure(11, 3.6)
        ax_step, ax_loss, ax_acc = fig.subplots(1, 3)
        steps = rec.step_numbers
        if np.isfinite(loss).any():
            ax_step.plot(steps, loss, color="#9ecae1", linewidth=0.8, label="batch loss")
            k = max(1, len(loss) // 30)
            smooth = np.convolve(np.nan_to_num(loss, nan=np.nanmean(loss)), np.ones(k) / k, mode="valid")
            ax_step.plot(steps[k - 1:], smooth, color="#08519c", label=f"mean of {k}")
            bad = ~np.isfinite(loss)
            if bad.any():
                ax_step.plot(steps[bad], np.full(bad.sum(), np.nanmax(loss)), "x", color="#d62728", label="non-finite")
            ax_step.legend(fontsize=8)
        ax_step.set_title("Train loss per step")
        ax_step.set_xlabel("global step")
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for split, colour in (("train", "tab:blue"), ("valid", "tab:orange")):
                pts = [(r.get("epoch", i + 1), r.get(f"{split}_{metric}")) for i, r in enumerate(rec.history)]
                pts = [(e, v) for e, v in pts if isinstance(v, (int, float)) and math.isfinite(v)]
                if pts:
                    ax.plot(*zip(*pts), marker="o", markersize=3, color=colour, label=split)
            ax.set_title(f"{metric.capitalize()} per epoch")
            ax.set_xlabel("epoch")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        out += _img(fig, "loss and accuracy curves")
    if rec.history:
        keys = [k for k in ("epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "lr", "epoch_seconds",
                            "images_per_sec", "data_wait_fraction") if any(k in r for r in rec.history)]
        out += _table(keys, [[_num(r.get(k)) for k in keys] for r in rec.history], set(range(len(keys))))
        facts["history"] = rec.history
    counts = (rec.dataset.get("counts") or {})
    if counts.get("train"):
        names = rec.dataset.get("class_names") or [str(i) for i in range(len(counts["train"]))]
        fig = _figure(10, 2.6)
        ax = fig.subplots()
        x = np.arange(len(names))
        bottom = np.zeros(len(names))
        for split, colour in (("train", "#6baed6"), ("valid", "#fd8d3c"), ("test", "#74c476")):
            if counts.get(split):
                values = np.array(counts[split], dtype=float)
                ax.bar(x, values, bottom=bottom, color=colour, label=split)
                bottom += values
        if len(names) <= 30:
            ax.set_xticks(x, [label_text(name) for name in names], rotation=60, fontsize=7, ha="right")
        ax.set_ylabel("images")
        ax.set_title(f"Images per class ({len(names)} classes)")
        ax.legend(fontsize=8)
        out += _img(fig, "class counts") + _class_table(names, counts)
        facts["class_counts"] = counts
    return out or '<p class="note">No losses or epoch metrics were recorded.</p>'


def _class_table(names: list[str], counts: dict) -> str:
    """The class names in full, as the folders spell them (the chart shortens them or leaves them out)."""
    splits = [s for s in ("train", "valid", "test") if counts.get(s)]
    rows = [[_e(name), *(counts[s][i] if i < len(counts[s]) else "–" for s in splits)] for i, name in enumerate(names)]
    return "<details><summary>Images per class</summary>" + _table(["class", *splits], rows, set(range(1, len(splits) + 1))) + "</details>"


def _gradients_section(rec: Records, facts: dict) -> str:
    norm = rec.column("grad_norm")
    rows = [r for r in rec.layers if r.get("grad_norm")]
    if not np.isfinite(norm).any() and not rows:
        return '<p class="note">No gradient statistics were recorded.</p>'
    fig = _figure(11, 3.4)
    ax_global, ax_layers, ax_ratio = fig.subplots(1, 3)
    if np.isfinite(norm).any():
        ax_global.plot(rec.step_numbers, norm, color="#31a354", linewidth=0.9)
        ax_global.set_yscale("log")
        facts["grad_norm"] = _stats(norm)
    ax_global.set_title("Global gradient norm per step")
    ax_global.set_xlabel("global step")
    if rows:
        layers = list(rows[-1]["grad_norm"])
        chosen = [layers[i] for i in sorted(set(np.linspace(0, len(layers) - 1, min(6, len(layers))).astype(int)))]
        for layer in chosen:
            pts = [(r["step"], r["grad_norm"].get(layer)) for r in rows]
            pts = [(s, v) for s, v in pts if v is not None and v > 0]
            if pts:
                ax_layers.plot(*zip(*pts), marker=".", linewidth=0.9, label=literal_text(layer))
        ax_layers.set_yscale("log")
        ax_layers.legend(fontsize=6)
        # step 1 is left out: zero-initialised biases make its ratios meaningless (see WeightUpdateRatio)
        ratios = [r for r in rec.layers if r.get("update_ratio") and int(r.get("step", 0)) > 1]
        if ratios:
            values = [(r["step"], [v for v in r["update_ratio"].values() if v is not None and v > 0] or [np.nan]) for r in ratios]
            med = [(s, np.median(v)) for s, v in values]
            lo = [(s, np.min(v)) for s, v in values]
            hi = [(s, np.max(v)) for s, v in values]
            ax_ratio.fill_between([s for s, _ in lo], [v for _, v in lo], [v for _, v in hi], color="#fdd0a2", label="min–max over layers")
            ax_ratio.plot(*zip(*med), color="#e6550d", marker=".", label="median")
            ax_ratio.axhline(1e-3, color="#555", linestyle=":", linewidth=1, label="1e-3")
            ax_ratio.set_yscale("log")
            ax_ratio.legend(fontsize=7)
        facts["layers_sampled"] = [int(r["step"]) for r in rows]
    sampled = [int(r.get("step", 0)) for r in rec.layers]
    if len(sampled) < 3:
        interval = (rec.job.get("hyperparameters") or {}).get("insights-sample-interval")
        note = f"{len(sampled)} sampled step(s)" + (f": one every {interval} steps" if interval else "")
        for ax in (ax_layers, ax_ratio):
            ax.text(0.5, 0.92, note, transform=ax.transAxes, ha="center", va="top", color="grey", fontsize=8)
    ax_layers.set_title("Per-layer gradient norm (sampled steps)")
    ax_layers.set_xlabel("global step")
    ax_ratio.set_title("Weight update ratio ‖Δw‖/‖w‖")
    ax_ratio.set_xlabel("global step")
    return _img(fig, "gradient norms")


def _system_section(rec: Records, facts: dict) -> str:
    samples = rec.system
    if not samples:
        return '<p class="note">No system samples were recorded.</p>'
    t = np.array([s.get("t", np.nan) for s in samples], dtype=float)
    cpu = [s.get("cpu") or [] for s in samples]
    cpu_mean = np.array([np.mean(c) if c else np.nan for c in cpu])
    cpu_max = np.array([np.max(c) if c else np.nan for c in cpu])
    series = {"CPU (mean of cores) [%]": cpu_mean, "CPU (busiest core) [%]": cpu_max,
              "Memory used [%]": np.array([s.get("mem_percent", np.nan) for s in samples], dtype=float),
              "Process RSS [MB]": np.array([s.get("rss_bytes", np.nan) or np.nan for s in samples], dtype=float) / 2**20,
              "I/O wait [%]": np.array([s.get("iowait", np.nan) for s in samples], dtype=float)}
    if any("workers_cpu" in s for s in samples):
        series["Loader workers CPU [% of a core]"] = np.array([s.get("workers_cpu", np.nan) for s in samples], dtype=float)
    gpu_count = max((len(s.get("gpus") or []) for s in samples), default=0)
    for g in range(gpu_count):
        util = [(s["gpus"][g].get("util") if len(s.get("gpus") or []) > g else None) for s in samples]
        mem = [(s["gpus"][g].get("mem_used_bytes", 0) / max(s["gpus"][g].get("mem_total_bytes", 1), 1) * 100
                if len(s.get("gpus") or []) > g else None) for s in samples]
        series[f"GPU{g} utilisation [%]"] = np.array([np.nan if v is None else v for v in util], dtype=float)
        series[f"GPU{g} memory [%]"] = np.array([np.nan if v is None else v for v in mem], dtype=float)
    rates = {}
    for key, label in (("disk_read_bytes", "Disk read [MB/s]"), ("disk_write_bytes", "Disk write [MB/s]"),
                       ("net_rx_bytes", "Network in [MB/s]"), ("net_tx_bytes", "Network out [MB/s]")):
        values = np.array([s.get(key, np.nan) for s in samples], dtype=float)
        if len(values) > 1 and np.isfinite(values).any():
            rates[label] = np.concatenate([[np.nan], np.diff(values) / np.maximum(np.diff(t), 1e-9) / 2**20])
    table, stats = [], {}
    for label, values in {**series, **rates}.items():
        s = _stats(values)
        if s:
            stats[label] = s
            table.append([_e(label), *(_num(s[k], 3) for k in ("max", "p99", "p95", "p50", "min"))])
    facts["system"] = stats
    fig = _figure(11, 5.2)
    (ax_cpu, ax_gpu), (ax_mem, ax_io) = fig.subplots(2, 2, sharex=True)
    ax_cpu.plot(t, cpu_mean, label="mean of cores")
    ax_cpu.plot(t, cpu_max, label="busiest core", alpha=0.6)
    if "Loader workers CPU [% of a core]" in series:
        ax_cpu.plot(t, series["Loader workers CPU [% of a core]"], label="loader workers", alpha=0.8)
    ax_cpu.set_title("CPU [%]")
    ax_cpu.legend(fontsize=7)
    for g in range(gpu_count):
        ax_gpu.plot(t, series[f"GPU{g} utilisation [%]"], label=f"GPU{g} util")
        ax_gpu.plot(t, series[f"GPU{g} memory [%]"], linestyle="--", label=f"GPU{g} memory")
    if gpu_count:
        ax_gpu.legend(fontsize=7)
    else:
        ax_gpu.text(0.5, 0.5, "no GPU", transform=ax_gpu.transAxes, ha="center", va="center", color="grey")
    ax_gpu.set_title("GPU [%]")
    ax_mem.plot(t, series["Process RSS [MB]"], color="#756bb1")
    ax_mem.set_title("Process resident memory [MB]")
    ax_io.plot(t, series["I/O wait [%]"], label="I/O wait %", color="#8c564b")
    for label, values in rates.items():
        ax_io.plot(t, values, label=label, alpha=0.7)
    ax_io.set_title("I/O")
    ax_io.legend(fontsize=7)
    window = loop_samples(rec)
    for ax in (ax_cpu, ax_gpu, ax_mem, ax_io):
        if window and window is not samples:
            ax.axvspan(window[0]["t"], window[-1]["t"], color="#c6dbef", alpha=0.25, linewidth=0)
    ax_mem.set_xlabel("seconds since process start (training loop shaded)")
    ax_io.set_xlabel("seconds since process start")
    return _img(fig, "system utilisation") + _table(["metric", "max", "p99", "p95", "p50", "min"], table, {1, 2, 3, 4, 5})


def _pipeline_section(rec: Records, facts: dict) -> str:
    out = ""
    if rec.loader:
        facts["loader"] = rec.loader
        out += _table(["setting", "value"], [[_e(k), _e(v)] for k, v in rec.loader.items()])
    data, total = rec.column("data"), rec.column("total")
    if np.isfinite(data).any():
        warm = warmup_count(len(data))
        share = float(np.nansum(data[warm:]) / max(np.nansum(total[warm:]), 1e-12))
        facts["data_wait"] = {"share": share, **_stats(data[warm:])}
        out += f"<p>The loop waited for data {share:.1%} of its step time after warm-up " \
               f"(p50 {_num(facts['data_wait'].get('p50'))} s, p95 {_num(facts['data_wait'].get('p95'))} s per step).</p>"
        fig = _figure(10, 2.8)
        ax_t, ax_h = fig.subplots(1, 2)
        ax_t.plot(rec.step_numbers, data, color=COLOURS["data"], linewidth=0.8)
        ax_t.set_title("Data wait per step [s]")
        ax_t.set_xlabel("global step")
        finite = data[np.isfinite(data)]
        ax_h.hist(finite, bins=min(100, max(10, len(finite) // 3)), color=COLOURS["data"])
        ax_h.axvline(float(np.median(finite)), color="black", linestyle="--", linewidth=1, label="median")
        ax_h.set_title("Data wait histogram")
        ax_h.set_xlabel("seconds")
        ax_h.legend(fontsize=8)
        out += _img(fig, "data wait")
    return out or '<p class="note">No data-pipeline records.</p>'


def _operators_section(rec: Records, facts: dict) -> str:
    out = ""
    if rec.top_ops:
        facts["top_ops"] = rec.top_ops
        device_is_gpu = any((op.get("self_cuda_us") or 0) > 0 for op in rec.top_ops)
        def ms(us):
            return f"{us / 1000:,.1f}" if isinstance(us, (int, float)) and math.isfinite(us) else "–"
        rows = [[_e(op.get("name")), f"{(op.get('share') or 0):.1%}", ms(op.get("self_cpu_us")), ms(op.get("self_cuda_us")),
                 _num(op.get("calls"))] for op in rec.top_ops]
        steps = rec.profiler_window.get("steps")
        out += (f"<p>Operators by self time on the {'GPU' if device_is_gpu else 'CPU'}"
                + (f" over steps {_e(', '.join(map(str, steps)))}" if steps else "") + ".</p>")
        out += _table(["operator", "share", "self CPU [ms]", "self CUDA [ms]", "calls"], rows, {1, 2, 3, 4})
    if rec.trace_path is not None:
        facts["trace"] = str(rec.trace_path)
        relative = rec.trace_path.relative_to(rec.output_data_dir) if rec.output_data_dir else rec.trace_path
        out += (f"<p>The full trace is <code>{_e(relative)}</code> next to this report: open it in Perfetto (ui.perfetto.dev, "
                f"loads locally), <code>chrome://tracing</code>, or Holistic Trace Analysis.</p>")
    return out or '<p class="note">No profiler window was recorded.</p>'


# --- the report ------------------------------------------------------------------------------------

def build_report(rec: Records, params: dict | None = None, draw: bool = True) -> tuple[str | None, dict]:
    """(html, insights dict) for the records; params as from validate_rule_params (None: the job's own).
    Without `draw`, only the rules and the verdict: (None, facts), a fraction of the time."""
    if params is None:
        try:
            params = validate_rule_params(rec.job.get("rule_params") or {})
        except Exception:  # overrides were validated when the job started; a changed rule set must not lose the report
            params = default_params()
    findings = evaluate_rules(rec, params)
    summary = verdict(rec, findings)
    facts: dict = {"format": 1, "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "output_data_dir": str(rec.output_data_dir or ""), "missing": rec.missing, "verdict": summary, "job": {},
                   "rules": [f.as_dict() for f in findings]}
    if not draw:
        return None, facts
    sections = [("summary", "Job summary", lambda: _summary(rec, facts["job"])),
                ("rules", "Rules", lambda: _rules_section(findings)),
                ("steps", "Step durations", lambda: _steps_section(rec, params, facts)),
                ("training", "Loss and accuracy", lambda: _training_section(rec, facts)),
                ("gradients", "Gradients", lambda: _gradients_section(rec, facts)),
                ("system", "System utilisation", lambda: _system_section(rec, facts)),
                ("pipeline", "Data pipeline", lambda: _pipeline_section(rec, facts)),
                ("operators", "Top operators (torch.profiler window)", lambda: _operators_section(rec, facts))]
    body = []
    for anchor, title, build in sections:
        try:
            content = build()
        except Exception as exc:  # one odd file must not cost the rest of the report
            content = _could_not_draw(title, exc)
            facts.setdefault("section_errors", {})[anchor] = reason(exc)
        body.append(f'<h2 id="{anchor}">{_e(title)}</h2>{content}')
    nav = " · ".join(f'<a href="#{a}">{_e(t)}</a>' for a, t, _ in sections)
    missing = f'<p class="note">Not recorded (job stopped early or collection off): {_e(", ".join(rec.missing))}</p>' if rec.missing else ""
    points = "".join(f"<p>{_e(p)}</p>" for p in summary["points"])
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Training insights</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
            f'<h1>Training insights</h1><p><small>{_e(rec.output_data_dir or "")} · generated {_e(facts["generated_at"])}</small></p>'
            f'<p><small>{nav}</small></p><div class="verdict"><p class="headline">{_e(summary["headline"])}</p>{points}</div>{missing}'
            + "".join(body) + "</body></html>")
    return page, facts


def write_report(output_data_dir: str | Path, params: dict | None = None, draw: bool = True) -> tuple[Path | None, Path]:
    """Render report.html and insights.json into the output data dir from its raw insight files
    (without `draw`: insights.json alone, and (None, its path))."""
    out = Path(output_data_dir)
    rec = load_records(out)
    page, facts = build_report(rec, params, draw)
    json_path = out / INSIGHTS_JSON
    _atomic_write(json_path, json.dumps(_json_safe(facts), indent=1, allow_nan=False, default=_jsonable).encode())
    if page is None:
        return None, json_path
    _atomic_write(out / REPORT_HTML, page.encode())
    return out / REPORT_HTML, json_path


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def main(argv: list[str]) -> int:
    """`imgcls report DIR [RuleName_param=value ...]`: render the report again from the raw files."""
    import argparse

    from ..errors import UserError
    from .records import find_output_data_dir
    parser = argparse.ArgumentParser(prog="imgcls report", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("dir", type=Path, help="the job's output data dir (or the train --output-dir above it)")
    parser.add_argument("overrides", nargs="*", metavar="RuleName_param=VALUE",
                        help="rule parameters for this rendering, e.g. StepOutlier_n_outliers=5 (default: the job's own)")
    args = parser.parse_args(argv)
    out = find_output_data_dir(args.dir)
    try:
        if not (out / RAW_DIR).is_dir() and not (out / "history.json").is_file():
            raise UserError(f"no insight files in {args.dir}: expected {RAW_DIR}/ or history.json there or in its data/ folder")
        params = None
        if args.overrides:
            pairs = [o.split("=", 1) for o in args.overrides]
            bad = [o for o, pair in zip(args.overrides, pairs) if len(pair) != 2]
            if bad:
                raise UserError(f"expected RuleName_param=VALUE, got {bad[0]!r}")
            rec = load_records(out)
            params = validate_rule_params({**(rec.job.get("rule_params") or {}), **dict(pairs)})
        html_path, json_path = write_report(out, params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    facts = json.loads(json_path.read_text())
    print(facts["verdict"]["headline"])
    for rule in facts["rules"]:
        if rule["triggered"]:
            print(f"  {rule['rule']}: {rule['message']}")
    print(f"report: {html_path}\ninsights: {json_path}")
    return 0


__all__ = ["write_report", "build_report", "main", "REPORT_HTML", "INSIGHTS_JSON", "RAW_DIR"]
