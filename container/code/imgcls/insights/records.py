"""The raw insight files of one job, loaded into one plain object for the rules and the report.

Everything here tolerates a job that stopped half-way: a missing file is an empty field (and its
name goes into `missing`), and a JSON-lines file cut mid-line by a kill keeps the lines before.
No torch: `imgcls report` must start fast.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RAW_DIR = Path("insights") / "raw"
# The step time split, in the order a step runs; "total" is the whole step.
STEP_COMPONENTS = ("data", "h2d", "forward", "backward", "optimizer", "other")
COMPONENT_NAMES = {"data": "data wait", "h2d": "host-to-device copy", "forward": "forward", "backward": "backward",
                   "optimizer": "optimizer", "other": "other"}


@dataclass
class Records:
    """What the collection wrote. Lists and dicts are the files' contents as they are (see FORMAT.md)."""
    output_data_dir: Path | None = None
    steps: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    init: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    system: list[dict] = field(default_factory=list)
    timeline: list[dict] = field(default_factory=list)
    loader: dict = field(default_factory=dict)
    ranks: list[dict] = field(default_factory=list)
    top_ops: list[dict] = field(default_factory=list)
    trace_path: Path | None = None
    history: list[dict] = field(default_factory=list)
    confusion: list[list[int]] | None = None  # rows: true class, columns: predicted (final evaluation)
    job: dict = field(default_factory=dict)  # job.json: hyperparameters, rule_params overrides, device
    profiler_window: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def column(self, key: str) -> np.ndarray:
        """One per-step field as floats (NaN where absent or null)."""
        return np.array([_number(s.get(key)) for s in self.steps], dtype=float)

    @property
    def step_numbers(self) -> np.ndarray:
        return np.array([int(s.get("step", i + 1)) for i, s in enumerate(self.steps)], dtype=int)

    @property
    def has_gpu(self) -> bool:
        if self.loader.get("device", "").startswith("cuda"):
            return True
        return any(sample.get("gpus") for sample in self.system)

    def event_time(self, name: str) -> float | None:
        """Seconds since process start of the first timeline event called `name`."""
        for event in self.timeline:
            if event.get("event") == name:
                return _number(event.get("t"))
        return None


def _number(value: Any) -> float:
    """JSON value to float: null/absent is NaN (the collection writes non-finite numbers as null)."""
    if value is None or isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).replace("Infinity", "inf"))
    except ValueError:
        return math.nan


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def read_jsonl(path: Path) -> list[dict] | None:
    """Rows of a JSON-lines file; a torn last line (killed writer) is dropped. None when absent."""
    try:
        text = path.read_text()
    except OSError:
        return None
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_confusion_csv(path: Path) -> list[list[int]] | None:
    try:
        lines = path.read_text().splitlines()[1:]
        return [[int(v) for v in line.split(",")[1:]] for line in lines if line.strip()]
    except (OSError, ValueError):
        return None


def find_output_data_dir(path: str | Path) -> Path:
    """Accept the output data dir itself, the train --output-dir above it, or the raw folder below it."""
    path = Path(path)
    for candidate in (path, path / "data", path.parent.parent):
        if (candidate / RAW_DIR).is_dir() or (candidate / "history.json").is_file():
            return candidate
    return path


def load_records(output_data_dir: str | Path) -> Records:
    out = Path(output_data_dir)
    raw = out / RAW_DIR
    rec = Records(output_data_dir=out)

    def jsonl(name):
        rows = read_jsonl(raw / name)
        if rows is None:
            rec.missing.append(name)
        return rows or []

    def obj(name, kind):
        value = read_json(raw / name)
        if not isinstance(value, kind):
            rec.missing.append(name)
            return kind()
        return value

    rec.steps = jsonl("steps.jsonl")
    rec.layers = jsonl("layers.jsonl")
    rec.system = jsonl("system.jsonl")
    rec.init = obj("init.json", dict)
    rec.dataset = obj("dataset.json", dict)
    rec.loader = obj("loader.json", dict)
    rec.job = obj("job.json", dict)
    rec.profiler_window = read_json(raw / "profiler" / "window.json", {}) or {}
    rec.timeline = [e for e in obj("timeline.json", list) if isinstance(e, dict)]
    rec.ranks = [r for r in read_json(raw / "ranks.json", []) or [] if isinstance(r, dict)]  # only under DDP
    rec.top_ops = [r for r in read_json(raw / "profiler" / "top_ops.json", []) or [] if isinstance(r, dict)]
    trace = raw / "profiler" / "trace.json"
    rec.trace_path = trace if trace.is_file() else None
    history = read_json(out / "history.json")
    if isinstance(history, list):
        rec.history = [row for row in history if isinstance(row, dict)]
    else:
        rec.missing.append("history.json")
    rec.confusion = read_confusion_csv(out / "confusion_matrix.csv")
    return rec
