"""Server settings side by side: one real server per variant, measured in rounds of random order, so
that changes in the machine's speed during the run hit every variant alike.

    uv run python bench/serve_settings.py                       # the defaults against each alternative they replaced
    uv run python bench/serve_settings.py --image-size 32 --backbone resnet18
    uv run python bench/serve_settings.py --variant defaults: --variant "passive:OMP_WAIT_POLICY=PASSIVE"

A variant is NAME:ENV=VALUE;ENV=VALUE (environment settings of `serve`; NAME: alone is the defaults);
in a value, {stock-worker-thread} stands for a frontend class-path folder with MMS's own WorkerThread.
Per variant: client p50 one request at a time, the part of it outside the handler (its Server-Timing),
and requests/s with 8 concurrent clients; then each variant's figures against the first one's.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_latency as bench  # noqa: E402
from results_file import write_ratios  # noqa: E402

from imgcls.serving.readiness import PREBUILT_ENV, SOURCES, build_plugin  # noqa: E402
from imgcls.serving.server import MMS_JARS  # noqa: E402

# Stands in a variant's value for a class-path folder built without our WorkerThread.java, so that
# the frontend runs MMS's own worker thread (the answer hand-off and the write wait).
STOCK_WORKER_THREAD = "{stock-worker-thread}"
# What the defaults chose, each against the setting it replaced (SAGEMAKER_MODEL_SERVER_VMARGS comes
# after serve's own JVM options, so it can undo one).
DEFAULT_VARIANTS = ["defaults:", "sleeping OpenMP threads:OMP_WAIT_POLICY=PASSIVE",
                    "optimising JIT (C2):SAGEMAKER_MODEL_SERVER_VMARGS=-XX:TieredStopAtLevel=4",
                    "no huge pages:SAGEMAKER_MODEL_SERVER_VMARGS=-XX:-UseTransparentHugePages",
                    f"MMS's worker thread:{PREBUILT_ENV}={STOCK_WORKER_THREAD}"]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    env = {}
    for item in filter(None, settings.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"variant {text!r}: {item!r} is not ENV=VALUE")
        env[key.strip()] = value
    return name.strip() or "defaults", env


def stock_worker_thread_folder(dest: Path) -> str:
    sources = [source for source in SOURCES if Path(source).name != "WorkerThread.java"]
    if build_plugin(MMS_JARS, dest, sources=sources) is None:
        raise SystemExit("the variant with MMS's worker thread needs javac (make setup installs a JDK)")
    return str(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    short = os.environ.get("BENCH_SHORT") == "1"
    parser.add_argument("--variant", action="append", help="NAME:ENV=VALUE;... (repeat; default: the defaults and their alternatives)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3 if short else 6)
    parser.add_argument("--per-round", type=int, default=30, help="one-at-a-time requests per variant and round")
    parser.add_argument("--warmup", type=int, default=300 if short else 600, help="requests (8 clients) per server first")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    body = bench.jpeg(bench.sample_photos()[0], (640, 480))
    results = {name: {"c1": [], "outside": [], "c8": []} for name, _ in variants}
    servers = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-settings-") as scratch:
        model_dir = bench.make_model_dir(Path(scratch), args.backbone, args.image_size)
        try:
            for index, (name, env) in enumerate(variants):
                if any(STOCK_WORKER_THREAD in value for value in env.values()):
                    folder = stock_worker_thread_folder(Path(scratch) / "stock-worker-thread")
                    env = {key: value.replace(STOCK_WORKER_THREAD, folder) for key, value in env.items()}
                servers[name] = bench.start_server(model_dir, Path(scratch) / f"serve-{index}.log", env)
            for _, port in servers.values():
                bench.load(port, [body], 8, args.warmup)
            for round_number in range(args.rounds):
                for name in random.sample(list(servers), len(servers)):  # noqa: S311 - an order, not a secret
                    port = servers[name][1]
                    time.sleep(bench.BATCH_DELAY_WINDOW_SECONDS)
                    one = bench.load(port, [body], 1, args.per_round)
                    results[name]["c1"] += one["latencies"]
                    results[name]["outside"] += one["outside"]
                    results[name]["c8"].append(bench.load(port, [body], 8, 64)["rate"])
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
            for process, _ in servers.values():
                process.wait(timeout=60)
    median = statistics.median
    figures = {name: (median(r["c1"]) * 1e3, median(r["outside"]) * 1e3, statistics.mean(r["c8"])) for name, r in results.items()}
    first = variants[0][0]
    print(f"\n{args.backbone} at {args.image_size} px, a 640x480 JPEG, {args.rounds} rounds in random order; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print(f"{'variant':<34}{'c1 p50 ms':>10}{'outside ms':>11}{'c8 req/s':>10}{'c1 vs ' + first:>22}{'c8 vs ' + first:>22}")
    rows = []
    for name, env in variants:
        c1, outside, c8 = figures[name]
        c1_ratio, c8_ratio = c1 / figures[first][0], c8 / figures[first][2]
        print(f"{name:<34}{c1:10.2f}{outside:11.2f}{c8:10.1f}{c1_ratio:22.2f}{c8_ratio:22.2f}")
        if name != first:
            rows += [(f"{name}: c1 p50 / {first}", c1_ratio, ">= 1"), (f"{name}: c8 req/s / {first}", c8_ratio, "<= 1")]
    write_ratios("serve_settings", f"{args.backbone} at {args.image_size} px: server settings side by side", rows)


if __name__ == "__main__":
    main()
