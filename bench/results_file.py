"""The one format bench scripts report their ratios in, for bench/summary.py (no torch here).

A script calls write_ratios(name, title, rows); when BENCH_RESULTS_DIR is set, the rows land in
$BENCH_RESULTS_DIR/<name>.json as [{"name", "value", "goal"}, ...] under a title.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_ratios(name: str, title: str, rows: list[tuple[str, float, str]]) -> Path | None:
    folder = os.environ.get("BENCH_RESULTS_DIR")
    if not folder:
        return None
    path = Path(folder) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"title": title, "ratios": [{"name": n, "value": v, "goal": g} for n, v, g in rows]},
                               indent=1))
    return path
