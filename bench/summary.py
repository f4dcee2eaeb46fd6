"""One Markdown table of every benchmark's ratios: bench/summary.py RESULTS_DIR OUTPUT.md (no torch import)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(results_dir: str, output: str) -> None:
    lines = [f"# Benchmark summary ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             "Written by `make bench` from the JSON each bench script leaves in the results folder.", ""]
    found = sorted(Path(results_dir).glob("*.json"))
    for path in found:
        result = json.loads(path.read_text())
        lines += [f"## {path.stem}: {result['title']}", "", "| ratio | value | goal |", "|---|---:|---|"]
        for row in result["ratios"]:
            value = row["value"]
            lines.append(f"| {row['name']} | {value:.3g} | {row['goal']} |" if isinstance(value, (int, float))
                         else f"| {row['name']} | {value} | {row['goal']} |")
        lines.append("")
    ran = {p.stem for p in found}
    silent = sorted(p.stem for p in Path(__file__).parent.glob("*.py")
                    if p.stem not in ran and p.stem not in ("summary", "results_file"))
    if silent:
        lines += [f"Ran without a ratio file: {', '.join(silent)}.", ""]
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text("\n".join(lines))
    print(f"wrote {output} ({len(found)} benchmark(s))")


if __name__ == "__main__":
    main(*sys.argv[1:3])
