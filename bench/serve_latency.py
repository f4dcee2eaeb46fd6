"""Latency and throughput of the real `serve` stack against the bare in-process pipeline, on the same JPEGs.

    uv run python bench/serve_latency.py                       # ResNet18 and ResNet50 at 224 px, random weights
    uv run python bench/serve_latency.py --model-dir DIR       # a trained model directory

Measures, in one run (the server first answers --warmup requests, as a live endpoint has):
  * in process: decode + preprocess + forward of one 640x480 photo at a time (latency), and the best
    images/s of batch 1 or batch 8 (the "best in-process throughput");
  * the server (multi-model-server + our handler, default settings) with 1 and 8 concurrent
    keep-alive clients: p50/p99 latency and requests/s;
  * a 4000x3000 JPEG against a 640x480 one, in process and through the server;
  * per request at concurrency 1, the client's latency minus the handler's own time (the server
    runs with IMGCLS_SERVER_TIMING=1 and answers `Server-Timing: handler;dur=<ms>`): the fixed cost
    without the forward pass's run-to-run noise;
and prints the ratios next to the issue's goals. Weights do not change the cost, so random ones do.

The bare pipeline runs with torch's own settings (no OpenMP variables), as a user's script would;
the server's workers run with theirs, so what those cost is part of the fixed cost. Clients are
`KeepAliveClient`s, a minimal HTTP/1.1 client on a raw socket, as a load generator is: Python's
http.client spends 0.1-1.4 ms of its own per request here (bench/serve_breakdown.py shows it).
"""
from __future__ import annotations

import argparse
import http.client
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image

from imgcls.artifacts import save_model_dir
from imgcls.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from imgcls.serving import model_loading
from imgcls.serving.decoder import decode_request
from imgcls.serving.server import free_local_port

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_ratios  # noqa: E402


def sample_photos() -> list[Image.Image]:
    import matplotlib.cbook
    from skimage import data
    from sklearn.datasets import load_sample_image

    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee()),
            Image.fromarray(load_sample_image("china.jpg")),
            Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")]


def jpeg(image: Image.Image, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    image.resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def make_model_dir(root: Path, backbone: str, image_size: int) -> Path:
    model_dir = root / "model"
    save_model_dir(model_dir, build_model(backbone, 133), [f"breed_{i:03d}" for i in range(133)],
                   {"backbone": backbone, "image_size": image_size, "resize_size": round(image_size * 256 / 224),
                    "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "metrics": {}})
    return model_dir


class InProcess:
    """The bare pipeline in this process: decode + preprocess + forward, all cores, as one worker has them."""

    def __init__(self, model_dir: Path):
        self.loaded = model_loading.load(model_dir, gpu_id=None, cpu_threads=len(os.sched_getaffinity(0)))
        self.loaded.warm_up((1, 8))

    def latency(self, data: bytes) -> float:
        started = time.perf_counter()
        self.loaded.predict(decode_request(data, "image/jpeg", self.loaded.preprocessing).batch)
        return time.perf_counter() - started

    def batch_of_8(self, images: list[bytes]) -> float:
        """Seconds for 8 images decoded one by one and run as one batch."""
        started = time.perf_counter()
        prep = self.loaded.preprocessing
        self.loaded.predict(torch.cat([decode_request(images[i % len(images)], "image/jpeg", prep).batch
                                       for i in range(8)]))
        return time.perf_counter() - started


def start_server(model_dir: Path, log_path: Path, settings: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_local_port()
    env = {**os.environ, "IMGCLS_BIND_HOST": "127.0.0.1", "IMGCLS_SERVER_TIMING": "1", **(settings or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "imgcls.serving.server", "--model-dir", str(model_dir),  # noqa: S603 - our own server, fixed argv
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited with {process.returncode}; see {log_path}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return process, port
        except (ConnectionError, OSError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready after 300 s")


class KeepAliveClient:
    """POST /invocations on one keep-alive connection: a prepared request, then the status, headers and a
    Content-Length body read back; nothing else (the server answers every request with a Content-Length)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, body: bytes, content_type: str = "image/jpeg") -> tuple[int, dict[str, str], bytes]:
        self.sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + content_type.encode()
                          + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while b"\r\n\r\n" not in received:
            received += self._recv()
        head, _, content = received.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(content) < length:
            content += self._recv()
        return int(status_line.split()[1]), headers, content

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


class HttpClientConnection:
    """The same through Python's http.client, to show what a heavier client adds."""

    def __init__(self, port: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, body: bytes, content_type: str = "image/jpeg") -> tuple[int, dict[str, str], bytes]:
        self.connection.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
        reply = self.connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()

    def close(self) -> None:
        self.connection.close()


def load(port: int, images: list[bytes], concurrency: int, total: int, client_class=KeepAliveClient) -> dict:
    """`concurrency` clients, each on its own keep-alive connection, share `total` requests."""
    latencies: list[float] = []
    outside: list[float] = []  # per request: latency minus the handler's own time (its Server-Timing header)
    lock = threading.Lock()
    counter = iter(range(total))

    def client():
        connection = client_class(port)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                connection.close()
                return
            started = time.perf_counter()
            status, headers, _ = connection.post(images[index % len(images)])
            elapsed = time.perf_counter() - started
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            if headers.get("connection", "").lower() == "close":
                connection.close()
                connection = client_class(port)
            timing = headers.get("server-timing", "")
            with lock:
                latencies.append(elapsed)
                if timing.startswith("handler;dur="):
                    outside.append(elapsed - float(timing.split("=", 1)[1]) / 1000)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"latencies": latencies, "outside": outside, "rate": len(latencies) / wall}


# After overlapping requests the server lets batches wait for company for 1 s (BatchDelay.java): a
# one-at-a-time measurement starts after that, or its first requests would each wait up to 5 ms.
BATCH_DELAY_WINDOW_SECONDS = 1.2


def measure(args, backbone: str) -> dict:
    """One model: the interleaved rounds, then its figures and ratios."""
    photos = sample_photos()
    images = [jpeg(p, (640, 480)) for p in photos]
    large = jpeg(photos[0], (4000, 3000))
    small = images[0]
    n = args.per_round
    local = {"latency": [], "batch8": [], "small": [], "large": []}
    served = {"c1": [], "c1_outside": [], "c8": [], "c8_rate": [], "small": [], "large": []}
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        model_dir = args.model_dir or make_model_dir(Path(scratch), backbone, args.image_size)
        bare = InProcess(model_dir)
        process, port = start_server(model_dir, Path(scratch) / "serve.log")
        try:
            # A server as an endpoint has it after its first minutes: the Java frontend compiles its request
            # path after a few hundred requests (before that, about 1.5-2 ms more per request here).
            load(port, images, 8, args.warmup)
            time.sleep(BATCH_DELAY_WINDOW_SECONDS)
            for _ in range(args.rounds):
                local["latency"] += [bare.latency(images[i % len(images)]) for i in range(n)]
                at_1 = load(port, images, 1, n)
                served["c1"] += at_1["latencies"]
                served["c1_outside"] += at_1["outside"]
                local["batch8"] += [bare.batch_of_8(images) for _ in range(max(1, n // 8))]
                at_8 = load(port, images, 8, 2 * n)
                served["c8"] += at_8["latencies"]
                served["c8_rate"].append(at_8["rate"])
                time.sleep(BATCH_DELAY_WINDOW_SECONDS)
                local["small"] += [bare.latency(small) for _ in range(n // 2)]
                local["large"] += [bare.latency(large) for _ in range(n // 2)]
                served["small"] += load(port, [small], 1, n // 2)["latencies"]
                served["large"] += load(port, [large], 1, n // 2)["latencies"]
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        del bare
    median = statistics.median
    rate_batch1 = 1 / statistics.mean(local["latency"])
    rate_batch8 = 8 / statistics.mean(local["batch8"])
    rate_c8 = statistics.mean(served["c8_rate"])
    figures = [("in process, batch 1 (decode+preprocess+fwd)", local["latency"], rate_batch1),
               ("in process, batch 8", None, rate_batch8),
               ("server, concurrency 1", served["c1"], 1 / statistics.mean(served["c1"])),
               ("server, concurrency 8", served["c8"], rate_c8)]
    ratios = [("server p50 at concurrency 1 / in-process p50", median(served["c1"]) / median(local["latency"]), "<= 1.10"),
              ("fixed cost: server p50 - in-process p50 (ms; two medians, noisy)", (median(served["c1"]) - median(local["latency"])) * 1e3, "<= 3"),
              ("fixed cost outside the handler: latency - handler time, per request (ms, p50)", median(served["c1_outside"]) * 1e3, "<= 3"),
              ("server req/s at concurrency 8 / best in-process images/s", rate_c8 / max(rate_batch1, rate_batch8), ">= 0.90"),
              ("4000x3000 JPEG / 640x480 JPEG, in process (p50)", median(local["large"]) / median(local["small"]), "<= 1.50"),
              ("4000x3000 JPEG / 640x480 JPEG, through the server (p50)", median(served["large"]) / median(served["small"]), "<= 1.50")]
    return {"figures": figures, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, help="trained model directory (default: random weights)")
    parser.add_argument("--backbones", default="resnet18,resnet50", help="small and large model, side by side")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2 if os.environ.get("BENCH_SHORT") == "1" else 4,
                        help="measurements are interleaved in rounds so that load from other programs hits both sides")
    parser.add_argument("--per-round", type=int, default=8, help="requests per measurement and round")
    parser.add_argument("--warmup", type=int, default=300 if os.environ.get("BENCH_SHORT") == "1" else 1000,
                        help="requests (8 clients) before measuring, so the frontend's JIT has compiled its path")
    args = parser.parse_args()
    backbones = [str(args.model_dir)] if args.model_dir else args.backbones.split(",")
    load_before = os.getloadavg()[0]
    results = {backbone: measure(args, backbone) for backbone in backbones}
    load_after = os.getloadavg()[0]
    median = statistics.median
    print(f"\n{', '.join(backbones)} at {args.image_size} px, torch {torch.__version__}, "
          f"{len(os.sched_getaffinity(0))} CPU core(s), load average {load_before:.1f} -> {load_after:.1f}; "
          f"640x480 JPEG photos; {args.rounds} interleaved rounds\n")
    head = "".join(f"{b[-14:] + ' p50':>20}{'p99':>9}{'req/s':>8}" for b in backbones)
    print(f"{'measurement':<46}{head}")
    for row in range(4):
        cells = ""
        for backbone in backbones:
            _, latencies, rate = results[backbone]["figures"][row]
            cells += (f"{median(latencies) * 1e3:20.1f}{percentile(latencies, 99) * 1e3:9.1f}" if latencies
                      else f"{'':29}") + f"{rate:8.2f}"
        print(f"{results[backbones[0]]['figures'][row][0]:<46}{cells}")
    print(f"\n{'ratio':<60}" + "".join(f"{b[-14:]:>16}" for b in backbones) + "  goal")
    for row, (name, _, goal) in enumerate(results[backbones[0]]["ratios"]):
        print(f"{name:<60}" + "".join(f"{results[b]['ratios'][row][1]:>16.2f}" for b in backbones) + f"  {goal}")
    write_ratios("serve_latency", f"{', '.join(backbones)} at {args.image_size} px, concurrency 1 and 8",
                 [(f"{b}: {name}", value, goal) for b in backbones for name, value, goal in results[b]["ratios"]])


if __name__ == "__main__":
    main()
