"""Soak the real `serve` stack: 16 keep-alive clients for 5 minutes on 127.0.0.1, good photos mixed with bad requests.

    uv run python bench/soak.py                 # 16 clients, 300 s, ResNet18 at 224 px (random weights)
    uv run python bench/soak.py --short         # 45 s (what `make bench` runs; also BENCH_SHORT=1)

Good requests are scikit-image / scikit-learn / matplotlib sample photos re-encoded at sizes from
64 px to 4000 px (JPEG and PNG, raw and as JSON base64); bad ones are truncated images, random
bytes, malformed JSON, unsupported types and decompression bombs (about 1 in 8). Reported:
requests served, errors on good requests (must be 0), bad requests not answered 4xx (must be 0),
p50/p99 of good requests in the first and last window (a minute, or a quarter of a short run),
and memory (RSS) and open files of every server process at start and end.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_ratios  # noqa: E402
from serve_latency import make_model_dir, percentile, sample_photos, start_server  # noqa: E402


def encoded(image: Image.Image, side: int, fmt: str) -> bytes:
    scale = side / max(image.size)
    buffer = io.BytesIO()
    image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR).save(
        buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def good_requests() -> list[tuple[bytes, str]]:
    requests = []
    for photo in sample_photos():
        for side in (64, 224, 640, 1600, 4000):
            requests.append((encoded(photo, side, "JPEG"), "image/jpeg"))
        requests.append((encoded(photo, 800, "PNG"), "image/png"))
        body = json.dumps({"images": [base64.b64encode(encoded(photo, 480, "JPEG")).decode()] * 3}).encode()
        requests.append((body, "application/json"))
    return requests


def bad_requests(sample: bytes) -> list[tuple[bytes, str]]:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    side = 20_000
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress((b"\x00" * (1 + side // 8)) * side, 9)) + chunk(b"IEND", b""))
    rng = random.Random(3)  # noqa: S311 - repeatable test traffic, not security
    return [(sample[: len(sample) // 3], "image/jpeg"), (rng.randbytes(5000), "image/png"), (b'{"image": ', "application/json"),
            (b"a,b\n", "text/csv"), (bomb, "image/png"), (b'{"images": []}', "application/json"), (b"", "image/jpeg")]


def server_processes(pid: int) -> dict[int, dict]:
    stats = {}
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(process.cmdline()[:3])[-60:]
            stats[process.pid] = {"name": name, "rss_mb": process.memory_info().rss / 2**20, "open_files": process.num_fds()}
        except psutil.NoSuchProcess:
            pass
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", default=os.environ.get("BENCH_SHORT") == "1")
    parser.add_argument("--seconds", type=float, help="default: 300, or 45 with --short")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--keep-log", help="copy the server's log here")
    args = parser.parse_args()
    seconds = args.seconds or (45 if args.short else 300)
    window = 60 if seconds >= 240 else seconds / 4

    good = good_requests()
    bad = bad_requests(good[0][0])
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        model_dir = make_model_dir(Path(scratch), args.backbone, args.image_size)
        process, port = start_server(model_dir, Path(scratch) / "serve.log")
        try:
            time.sleep(2)
            at_start = server_processes(process.pid)
            load_before = os.getloadavg()
            results: list[tuple[float, float, bool, int]] = []  # (start offset, seconds, good?, status)
            lock = threading.Lock()
            began = time.monotonic()

            def client(seed: int) -> None:
                rng = random.Random(seed)  # noqa: S311 - repeatable test traffic, not security
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                while (now := time.monotonic()) - began < seconds:
                    is_good = rng.random() >= 1 / 8
                    body, content_type = rng.choice(good if is_good else bad)
                    started = time.perf_counter()
                    try:
                        connection.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
                        reply = connection.getresponse()
                        reply.read()
                        status = reply.status
                        if reply.getheader("connection", "").lower() == "close":
                            connection.close()
                    except (OSError, http.client.HTTPException):
                        status = 0
                        connection.close()
                        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    with lock:
                        results.append((now - began, time.perf_counter() - started, is_good, status))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            at_end = server_processes(process.pid)
            load_after = os.getloadavg()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
            if args.keep_log:
                Path(args.keep_log).write_bytes((Path(scratch) / "serve.log").read_bytes())

    good_results = [r for r in results if r[2]]
    good_errors = sum(1 for r in good_results if r[3] != 200)
    bad_not_4xx = sum(1 for r in results if not r[2] and not 400 <= r[3] < 500)
    first = [r[1] * 1000 for r in good_results if r[0] < window]
    last = [r[1] * 1000 for r in good_results if r[0] >= seconds - window]
    print(f"\nsoak: {args.clients} clients, {seconds:.0f} s, {args.backbone} at {args.image_size} px, "
          f"{os.cpu_count()} CPUs, load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at end")
    print(f"requests served {len(results)} ({len(good_results)} good, {len(results) - len(good_results)} bad), "
          f"{len(results) / seconds:.1f}/s")
    print(f"errors on good requests: {good_errors}; bad requests not answered 4xx: {bad_not_4xx}")
    if good_errors:
        from collections import Counter
        print("statuses of failed good requests:", dict(Counter(r[3] for r in good_results if r[3] != 200)))
    print(f"good requests, first {window:.0f} s: p50 {percentile(first, 50):.0f} ms, p99 {percentile(first, 99):.0f} ms; "
          f"last {window:.0f} s: p50 {percentile(last, 50):.0f} ms, p99 {percentile(last, 99):.0f} ms")
    print(f"{'server process':<62}{'RSS MB start':>13}{'end':>8}{'files start':>12}{'end':>6}")
    for pid, stats in at_end.items():
        start = at_start.get(pid, {"rss_mb": float("nan"), "open_files": -1})
        print(f"{stats['name']:<62}{start['rss_mb']:>13.0f}{stats['rss_mb']:>8.0f}{start['open_files']:>12}{stats['open_files']:>6}")
    rss_start = sum(s["rss_mb"] for s in at_start.values())
    rss_end = sum(s["rss_mb"] for s in at_end.values())
    write_ratios("soak", f"{args.clients} clients for {seconds:.0f} s, {args.backbone} {args.image_size} px", [
        ("errors on good requests", good_errors, "0"),
        ("bad requests not answered 4xx", bad_not_4xx, "0"),
        ("good p99 last window / first window", percentile(last, 99) / percentile(first, 99), "<= 1.5"),
        ("server RSS end / start (all processes)", rss_end / rss_start, "<= 1.5"),
    ])
    if good_errors or bad_not_4xx:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
