"""Where a request's time goes in the real server, one request at a time: the handler's own time
(its `Server-Timing` header) against everything outside it, for a small body and a photo-sized one,
on a fresh server and again after a warm-up (the JVM compiles the frontend's request path).

    uv run python bench/serve_breakdown.py              # ResNet18: 32 px + a 64x48 and a 640x480 JPEG, 224 px + the 640x480
    uv run python bench/serve_breakdown.py --requests 300

The fixed cost is the client's latency minus the bare in-process pipeline (decode + preprocess +
forward) on the same bytes; "outside the handler" is, per request, the latency minus the handler's
time, so it does not carry the forward pass's run-to-run noise. The client is serve_latency's minimal
keep-alive client; one row repeats the measure with Python's http.client, to show what a heavier
client adds on its own side.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import serve_latency as bench  # noqa: E402
from results_file import write_ratios  # noqa: E402

# The middle case sends the photo to the small model: body size and model size, one at a time.
CASES = [("32 px, 64x48 JPEG", 32, (64, 48)), ("32 px, 640x480 JPEG", 32, (640, 480)),
         ("224 px, 640x480 JPEG", 224, (640, 480))]


def ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def measure(image_size: int, jpeg_size: tuple[int, int], requests: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="serve-breakdown-") as scratch:
        model_dir = bench.make_model_dir(Path(scratch), "resnet18", image_size)
        body = bench.jpeg(bench.sample_photos()[0], jpeg_size)
        process, port = bench.start_server(model_dir, Path(scratch) / "serve.log")
        try:
            bench.load(port, [body], 1, 20)  # connection set-up
            fresh = bench.load(port, [body], 1, requests)
            bench.load(port, [body], 8, warmup)
            time.sleep(bench.BATCH_DELAY_WINDOW_SECONDS)
            warm = bench.load(port, [body], 1, requests)
            heavier_client = bench.load(port, [body], 1, requests, bench.HttpClientConnection)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        bare = bench.InProcess(model_dir)
        local = [bare.latency(body) for _ in range(requests)]
    outside = ms(warm["outside"])
    return {"body KB": len(body) / 1024, "fresh server, client p50": ms(fresh["latencies"]),
            "warm server, client p50": ms(warm["latencies"]),
            "warm server, handler p50": ms(warm["latencies"]) - outside,
            "warm server, outside the handler p50": outside,
            "  the same, http.client as the client": ms(heavier_client["outside"]),
            "in process p50": ms(local), "fixed cost (warm client - in process)": ms(warm["latencies"]) - ms(local)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    short = os.environ.get("BENCH_SHORT") == "1"
    parser.add_argument("--requests", type=int, default=60 if short else 150, help="requests per measurement")
    parser.add_argument("--warmup", type=int, default=300 if short else 1000, help="requests (8 clients) between fresh and warm")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = {name: measure(size, jpeg, args.requests, args.warmup) for name, size, jpeg in CASES}
    print(f"\nResNet18, one request at a time, {args.requests} per measurement, warm-up {args.warmup}; "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}\n")
    rows = list(next(iter(results.values())))
    print(f"{'ms':40s}" + "".join(f"{name:>24s}" for name in results))
    for row in rows:
        print(f"{row:40s}" + "".join(f"{r[row]:24.2f}" for r in results.values()))
    write_ratios("serve_breakdown", "ResNet18, one request at a time: fixed cost of a warm server",
                 [(f"{name}: outside the handler per request (ms, p50)", r["warm server, outside the handler p50"], "<= 3")
                  for name, r in results.items()])


if __name__ == "__main__":
    main()
