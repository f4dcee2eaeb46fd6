"""The real `serve` stack (multi-model-server + our handler) on 127.0.0.1, serving a model trained in this session."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from imgcls.artifacts import load_model_dir
from imgcls.serving.decoder import Preprocessing, decode_request
from imgcls.serving.server import free_local_port
from conftest import run_imgcls
from test_serving_decoder import (animated_gif, encode, exif_rotated_jpeg, multipage_tiff, photos, png_16bit,
                                  png_bomb)

PAYLOAD_LIMIT_MB = 1
IDLE_TIMEOUT_SECONDS = 3


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    tmp_dir: Path            # the server's TMPDIR: its private run folder (sockets included) goes here
    log_path: Path
    ping_history: list = field(default_factory=list)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> Response:
        """Plain http.client: it sends exactly these headers (urllib would add a form Content-Type)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            reply = connection.getresponse()
            return Response(reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read())
        finally:
            connection.close()

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None, attributes: str | None = None) -> Response:
        headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        if attributes is not None:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes
        return self.request("POST", "/invocations", body, headers)

    def ping_status(self) -> int | None:
        try:
            return self.request("GET", "/ping", timeout=5).status
        except (ConnectionError, TimeoutError, http.client.HTTPException):
            return None  # not listening yet

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(model_dir: Path, workdir: Path, **env) -> Server:
    tmp_dir = workdir / "tmp"
    tmp_dir.mkdir(parents=True)
    port = free_local_port()
    log_path = workdir / "serve.log"
    full_env = {**os.environ, "IMGCLS_BIND_HOST": "127.0.0.1", "TMPDIR": str(tmp_dir), **env}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "imgcls.serving.server", "--model-dir", str(model_dir),
                                    "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return Server(process, port, tmp_dir, log_path)


def wait_for_ping(server: Server, timeout: float, until: int = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.ping_status()
        server.ping_history.append(status)
        if status == until:
            return
        assert server.process.poll() is None, f"serve exited with {server.process.returncode}:\n{server.log()[-4000:]}"
        time.sleep(0.1)
    raise AssertionError(f"/ping never answered {until} within {timeout} s:\n{server.log()[-4000:]}")


def stop(server: Server, timeout: float = 30) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=timeout)


@pytest.fixture(scope="module")
def server(trained_model_dir, tmp_path_factory):
    # A model folder with code/requirements.txt, which the stock toolkit would pip-install at start
    # (and fail: no network, no such package). serve never installs anything.
    model_dir = tmp_path_factory.mktemp("model") / "model"
    shutil.copytree(trained_model_dir, model_dir)
    (model_dir / "code").mkdir()
    (model_dir / "code" / "requirements.txt").write_text("imgcls-no-such-package==0.0.1\n")
    running = start_server(model_dir, tmp_path_factory.mktemp("serve"),
                           SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_LIMIT_MB), SAGEMAKER_MODEL_SERVER_WORKERS="1",
                           IMGCLS_IDLE_TIMEOUT_SECONDS=str(IDLE_TIMEOUT_SECONDS), IMGCLS_TIMING_LOG="1")
    try:
        wait_for_ping(running, timeout=240)
        yield running
    finally:
        stop(running)


@pytest.fixture(scope="module")
def in_process(trained_model_dir):
    """The trained network run directly, to check the server's numbers against."""
    network, class_names, config = load_model_dir(trained_model_dir)
    return network, class_names, Preprocessing.from_model_config(config)


@pytest.fixture(scope="module")
def photo_bytes() -> dict[str, bytes]:
    return {name: encode(photo, "JPEG", quality=90) for name, photo in photos().items()}


def assert_top_k(result, class_names, k):
    assert len(result) == min(k, len(class_names))
    probabilities = [entry["probability"] for entry in result]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-6
    for entry in result:
        assert class_names[entry["index"]] == entry["label"]


def test_the_supervisor_never_loads_torch(server):
    """serve's own process only starts and watches MMS: torch lives in the workers alone."""
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" not in maps and "torchvision" not in maps
    assert psutil.Process(server.process.pid).memory_info().rss < 150 * 1024 * 1024
    code = "import sys, imgcls.cli, imgcls.serving.server; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_ping_answers_503_until_the_model_is_loaded_then_200(server):
    seen = [status for status in server.ping_history if status is not None]
    assert seen[0] == 503, server.ping_history
    assert seen[-1] == 200


@pytest.mark.parametrize("fmt, content_type", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"),
                                               ("JPEG", "application/x-image"), ("TIFF", "application/x-image")])
def test_every_image_content_type_answers_sorted_top_k(server, in_process, fmt, content_type):
    _, class_names, _ = in_process
    for name, photo in photos().items():
        reply = server.invoke(encode(photo, fmt), content_type)
        assert reply.status == 200, (name, reply.body)
        assert reply.headers["content-type"].startswith("application/json")
        assert_top_k(reply.json(), class_names, 5)


def test_server_probabilities_equal_the_in_process_model(server, in_process, photo_bytes):
    network, _, prep = in_process
    for name, data in photo_bytes.items():
        reply = server.invoke(data, "image/jpeg", accept="application/x-npy")
        assert reply.status == 200 and reply.headers["content-type"] == "application/x-npy"
        served = np.load(io.BytesIO(reply.body), allow_pickle=False)
        with torch.inference_mode():
            expected = torch.softmax(network(decode_request(data, "image/jpeg", prep).batch), dim=1).numpy()
        assert served.shape == expected.shape == (1, len(in_process[1]))
        np.testing.assert_allclose(served, expected, atol=1e-5, err_msg=name)


def test_full_probability_vector_for_argmax_users(server, in_process, photo_bytes):
    data = photo_bytes["chelsea"]
    as_npy = np.load(io.BytesIO(server.invoke(data, "image/jpeg", accept="application/x-npy").body))
    as_json = server.invoke(data, "image/jpeg", attributes="output=probabilities")
    assert as_json.status == 200
    vector = np.array(as_json.json())
    assert vector.shape == as_npy.shape and np.argmax(vector, 1)[0] == np.argmax(as_npy, 1)[0]
    top = server.invoke(data, "image/jpeg").json()
    assert top[0]["index"] == int(np.argmax(vector, 1)[0])


def test_top_k_from_header_and_from_json_body(server, in_process, photo_bytes):
    _, class_names, _ = in_process
    data = photo_bytes["coffee"]
    assert_top_k(server.invoke(data, "image/jpeg", attributes="top_k=2").json(), class_names, 2)
    assert_top_k(server.invoke(data, "image/jpeg", attributes="top_k=1, something=else").json(), class_names, 1)
    body = json.dumps({"image": base64.b64encode(data).decode(), "top_k": 3}).encode()
    assert_top_k(server.invoke(body, "application/json", attributes="top_k=1").json(), class_names, 3)
    assert server.invoke(data, "image/jpeg", attributes="top_k=0").status == 400


def test_json_batch_of_base64_images(server, in_process, photo_bytes):
    _, class_names, _ = in_process
    names = list(photo_bytes)
    body = json.dumps({"images": [base64.b64encode(photo_bytes[n]).decode() for n in names], "top_k": 2}).encode()
    reply = server.invoke(body, "application/json")
    assert reply.status == 200
    results = reply.json()
    assert len(results) == len(names)
    for name, result in zip(names, results):
        alone = server.invoke(photo_bytes[name], "image/jpeg", attributes="top_k=2").json()
        assert [e["index"] for e in result] == [e["index"] for e in alone], name
        np.testing.assert_allclose([e["probability"] for e in result], [e["probability"] for e in alone], atol=1e-5)
        assert_top_k(result, class_names, 2)
    npy = server.invoke(body, "application/json", accept="application/x-npy")
    assert np.load(io.BytesIO(npy.body)).shape == (len(names), len(class_names))


def test_npy_input_of_preprocessed_tensors(server, in_process, photo_bytes):
    _, _, prep = in_process
    batch = torch.cat([decode_request(photo_bytes[n], "image/jpeg", prep).batch for n in ("chelsea", "china")])
    buffer = io.BytesIO()
    np.save(buffer, batch.numpy())
    reply = server.invoke(buffer.getvalue(), "application/x-npy", accept="application/x-npy")
    assert reply.status == 200
    from_npy = np.load(io.BytesIO(reply.body))
    from_jpeg = np.load(io.BytesIO(server.invoke(photo_bytes["china"], "image/jpeg", accept="application/x-npy").body))
    np.testing.assert_allclose(from_npy[1:], from_jpeg, atol=1e-5)


def awkward_but_valid_images() -> dict[str, bytes]:
    chelsea, black = photos()["chelsea"], Image.new("RGB", (451, 300))
    return {
        "animated.gif": animated_gif(chelsea, black),
        "multipage.tiff": multipage_tiff(chelsea, black),
        "16bit.png": png_16bit(np.asarray(chelsea.convert("L"))),
        "cmyk.jpg": encode(chelsea.convert("CMYK"), "JPEG"),
        "exif_rotated.jpg": exif_rotated_jpeg(chelsea),
        "gray.jpg": encode(chelsea.convert("L"), "JPEG"),
        "rgba.png": encode(chelsea.convert("RGBA"), "PNG"),
    }


def test_awkward_but_valid_images_are_decoded(server, in_process):
    _, class_names, _ = in_process
    for name, data in awkward_but_valid_images().items():
        reply = server.invoke(data, "application/x-image")
        assert reply.status == 200, (name, reply.body)
        assert_top_k(reply.json(), class_names, 5)
    # EXIF rotation applied: the same answer as the upright photo, within JPEG noise.
    upright = server.invoke(encode(photos()["chelsea"], "JPEG", quality=95), "image/jpeg", accept="application/x-npy")
    rotated = server.invoke(exif_rotated_jpeg(photos()["chelsea"]), "image/jpeg", accept="application/x-npy")
    np.testing.assert_allclose(np.load(io.BytesIO(rotated.body)), np.load(io.BytesIO(upright.body)), atol=0.05)


def bad_requests(good_jpeg: bytes) -> list[tuple[str, bytes, dict, int]]:
    rng = np.random.default_rng(7)
    limit = PAYLOAD_LIMIT_MB * 1024 * 1024
    return [
        ("truncated jpeg", good_jpeg[: len(good_jpeg) // 3], {"Content-Type": "image/jpeg"}, 400),
        ("zero-byte body", b"", {"Content-Type": "image/jpeg"}, 400),
        ("random bytes", rng.bytes(20_000), {"Content-Type": "image/jpeg"}, 400),
        ("random bytes as png", rng.bytes(20_000), {"Content-Type": "image/png"}, 400),
        ("decompression bomb", png_bomb(), {"Content-Type": "image/png"}, 400),
        ("oversized dimensions", png_bomb(9000), {"Content-Type": "image/png"}, 400),
        ("over the payload limit", good_jpeg + rng.bytes(limit + 1000 - len(good_jpeg)), {"Content-Type": "image/jpeg"}, 413),
        ("unsupported content type", b"a,b,c\n", {"Content-Type": "text/csv"}, 415),
        ("no content type", good_jpeg, {}, 415),
        ("unsupported accept", good_jpeg, {"Content-Type": "image/jpeg", "Accept": "text/csv"}, 406),
        ("malformed json", b'{"image": ', {"Content-Type": "application/json"}, 400),
        ("json without image", b'{"picture": "x"}', {"Content-Type": "application/json"}, 400),
        ("malformed base64", b'{"image": "@@@"}', {"Content-Type": "application/json"}, 400),
        ("base64 of garbage", json.dumps({"images": [base64.b64encode(b"junk").decode()]}).encode(),
         {"Content-Type": "application/json"}, 400),
        ("npy of the wrong shape", _npy(np.zeros((2, 3), np.float32)), {"Content-Type": "application/x-npy"}, 400),
        ("npy that needs pickle", _npy(np.array([None], dtype=object)), {"Content-Type": "application/x-npy"}, 400),
        ("npz sent as npy", _npz(np.zeros((3, 64, 64), np.float32)), {"Content-Type": "application/x-npy"}, 400),
        ("npy overflowing float32", _npy(np.full((3, 64, 64), 1e300)), {"Content-Type": "application/x-npy"}, 400),
        ("npy giving a non-finite output", _npy(np.full((3, 64, 64), 3e38, np.float32)),
         {"Content-Type": "application/x-npy"}, 400),
        ("deeply nested json", b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {"Content-Type": "application/json"}, 400),
        ("top_k of 5000 digits in json", b'{"image": "", "top_k": ' + b"9" * 5000 + b"}", {"Content-Type": "application/json"}, 400),
        ("top_k of 5000 digits in custom attributes", good_jpeg,
         {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=" + "9" * 5000}, 400),
        ("bad top_k", good_jpeg, {"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Custom-Attributes": "top_k=many"}, 400),
    ]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=array)
    return buffer.getvalue()


def good_latency(server: Server, data: bytes, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        assert server.invoke(data, "image/jpeg").status == 200
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def test_bad_input_gets_4xx_json_and_never_hurts_the_worker(server, photo_bytes):
    good = photo_bytes["grace_hopper"]
    workers_before = {p.pid for p in server.descendants()}
    latency_before = good_latency(server, good)
    for _ in range(3):  # a barrage, not a single shot
        for name, body, headers, expected in bad_requests(good):
            reply = server.request("POST", "/invocations", body, headers)
            assert reply.status == expected, (name, reply.status, reply.body[:300])
            error = json.loads(reply.body)
            assert error["status"] == expected and error["message"], name
            assert b"Traceback" not in reply.body and b'File "' not in reply.body, name
    latency_after = good_latency(server, good)
    assert {p.pid for p in server.descendants()} == workers_before  # no worker died or was replaced
    assert latency_after < 1.5 * latency_before + 0.05, (latency_before, latency_after)


def test_body_far_over_every_limit_is_refused_by_the_frontend_in_our_shape(server):
    import socket

    huge = 3 * (2 * PAYLOAD_LIMIT_MB + 1) * 1024 * 1024
    try:
        server.invoke(bytes(huge), "image/jpeg")
    except (ConnectionError, http.client.HTTPException):
        pass  # the frontend may close the socket while the body is still being sent
    # Its answer, read by a client that sends the headers and waits: refused before the body is read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {huge}\r\n\r\n".encode())
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        assert reply.status == 413
        error = json.loads(reply.read())
    assert error["status"] == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in error["message"]
    assert server.ping_status() == 200


def answers_from_the_port(server: Server, good_jpeg: bytes) -> list[tuple[str, Response]]:
    """Odd paths, methods and bodies, sent over real HTTP."""
    cases = []
    paths = ["/", "/api-description", "/invocations?model_name=model", "/invocations/", "/models", "/models/model",
             "/predictions/model", "/ping/extra", "/metrics", "/../../etc/passwd", "/%00", "/" + "a" * 3000,
             "/invocations?x=%ZZ"]
    for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        for path in paths:
            body = good_jpeg if method in ("POST", "PUT") else None
            headers = {"Content-Type": "image/jpeg"} if body else {}
            cases.append((f"{method} {path}", server.request(method, path, body, headers)))
    cases.append(("no content type, text body", server.request("POST", "/invocations", b"hello \x00\xff secret")))
    cases.append(("form-encoded photo", server.request("POST", "/invocations", good_jpeg,
                                                      {"Content-Type": "application/x-www-form-urlencoded"})))
    cases.append(("multipart", server.request("POST", "/invocations", b"--x\r\n", {"Content-Type": "multipart/form-data; boundary=x"})))
    cases.append(("GET /invocations", server.request("GET", "/invocations")))
    cases.append(("POST /ping", server.request("POST", "/ping", b"x", {"Content-Type": "image/jpeg"})))
    return cases


def test_every_answer_from_the_port_is_json_in_our_shape(server, photo_bytes):
    good = photo_bytes["chelsea"]
    for name, reply in answers_from_the_port(server, good):
        text = reply.body.decode("utf-8", "replace")
        if name.startswith("POST /invocations?") or name == "POST /invocations/":
            assert reply.status == 200, (name, text[:300])  # same as /invocations
            continue
        assert 400 <= reply.status < 500, (name, reply.status, text[:300])
        assert reply.headers.get("content-type", "").startswith("application/json"), name
        error = json.loads(reply.body)
        assert set(error) == {"error", "status", "message"} and error["status"] == reply.status, (name, error)
        for leak in ("Traceback", "Exception", "com.amazonaws", "/tmp", "secret", "swagger", "openapi"):
            assert leak.lower() not in text.lower(), (name, text[:300])
    assert server.ping_status() == 200


def test_idle_and_slow_connections_are_closed(server):
    import socket

    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100\r\n\r\n")
    deadline = time.monotonic() + IDLE_TIMEOUT_SECONDS + 20
    for sock in [*idle, slow]:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while True:
                try:
                    chunk = sock.recv(1024)
                except ConnectionResetError:
                    break  # closed with a reset: closed as well
                if slow is sock and chunk:
                    continue  # a slow sender may be told why before the close
                assert chunk == b"", chunk
                break
        finally:
            sock.close()
    assert time.monotonic() < deadline
    assert server.ping_status() == 200


def test_mutated_requests_never_get_a_5xx(server, photo_bytes):
    rng = random.Random(11)
    seeds = list(photo_bytes.values()) + list(awkward_but_valid_images().values())
    content_types = ["image/jpeg", "image/png", "image/webp", "application/x-image"]
    workers_before = {p.pid for p in server.descendants()}
    for _ in range(150):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(1, len(data))]
        reply = server.invoke(bytes(data), rng.choice(content_types))
        assert reply.status in (200, 400), reply.body[:300]
    assert {p.pid for p in server.descendants()} == workers_before


def test_concurrent_requests_share_a_forward_pass(server, in_process, photo_bytes):
    """MMS batching is on: 16 simultaneous requests need fewer than 16 backend calls, and all answers are right."""
    from concurrent.futures import ThreadPoolExecutor

    _, class_names, _ = in_process
    def backend_calls() -> int:
        return server.log().count("Backend response time")  # MMS logs one line per batch

    time.sleep(1)
    before = backend_calls()
    data = list(photo_bytes.values())
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: server.invoke(data[i % len(data)], "image/jpeg"), range(16)))
    for reply in replies:
        assert reply.status == 200
        assert_top_k(reply.json(), class_names, 5)
    time.sleep(2)  # MMS logs asynchronously
    assert backend_calls() - before < 16


def test_timing_log_gives_each_stage_of_a_request(server, photo_bytes):
    """IMGCLS_TIMING_LOG=1: one line per batch with the worker's stage timestamps, in order (how the README's breakdown is measured)."""
    def timing_lines() -> list[str]:
        return re.findall(r"timing requests=1 (start=.*)", server.log())

    before = len(timing_lines())
    reply = server.invoke(photo_bytes["chelsea"], "image/jpeg")
    assert reply.status == 200 and "server-timing" not in reply.headers  # only with IMGCLS_SERVER_TIMING=1
    deadline = time.monotonic() + 10
    while len(timing_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.2)  # the frontend logs the worker's lines asynchronously
    stages = dict(pair.split("=") for pair in timing_lines()[-1].split())
    assert list(stages) == ["start", "decoded", "forward", "end"]
    times = [float(value) for value in stages.values()]
    assert times[0] == 0 and times == sorted(times) and times[2] > times[1]  # the forward pass takes time


def test_jumpstart_clients_verbose_json_and_octet_stream_images(server, in_process, photo_bytes):
    _, class_names, _ = in_process
    data = photo_bytes["chelsea"]
    reply = server.invoke(data, "application/octet-stream", accept="application/json;verbose")
    assert reply.status == 200, reply.body[:300]
    verbose = reply.json()
    assert verbose["labels"] == class_names and len(verbose["probabilities"]) == len(class_names)
    assert verbose["predicted_label"] == class_names[int(np.argmax(verbose["probabilities"]))]
    as_npy = np.load(io.BytesIO(server.invoke(data, "image/jpeg", accept="application/x-npy").body))
    np.testing.assert_allclose(verbose["probabilities"], as_npy[0], atol=1e-6)
    body = json.dumps({"images": [base64.b64encode(data).decode()] * 2}).encode()
    batch = server.invoke(body, "application/json", accept="application/json; verbose").json()
    assert [entry["predicted_label"] for entry in batch] == [verbose["predicted_label"]] * 2


def test_sigterm_stops_every_process_and_removes_the_sockets(server):
    """Runs last in this module: it stops the shared server."""
    processes = server.descendants()
    assert any("model_service_worker" in " ".join(p.cmdline()) for p in processes)
    run_dirs = list(server.tmp_dir.glob("imgcls-serve-*"))
    assert len(run_dirs) == 1 and list(run_dirs[0].glob(".mms.sock.*"))
    assert stop(server) == 0
    gone, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, [p.cmdline() for p in alive]
    assert list(server.tmp_dir.iterdir()) == []  # run folder, sockets and pipes all removed
    assert not list(Path("/tmp").glob(f".mms.sock.{server.port}*"))


def test_a_model_that_cannot_load_never_becomes_ready(trained_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in trained_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    server = start_server(broken, tmp_path / "run", SAGEMAKER_STARTUP_TIMEOUT="25")
    try:
        wait_for_ping(server, timeout=60, until=503)
        time.sleep(3)
        assert server.ping_status() in (503, None)  # None once serve gave up
        assert server.process.wait(timeout=60) == 1
        assert "SAGEMAKER_STARTUP_TIMEOUT=25" in server.log()
        assert list(server.tmp_dir.iterdir()) == []
    finally:
        stop(server)


def test_multi_model_endpoint_loads_models_when_sagemaker_asks(trained_model_dir, tmp_path, photo_bytes, in_process):
    """SAGEMAKER_MULTI_MODEL=true: healthy with no model; models arrive through the management API on the same port."""
    _, class_names, _ = in_process
    models_root = tmp_path / "models"
    models_root.mkdir()
    server = start_server(models_root, tmp_path / "run", SAGEMAKER_MULTI_MODEL="true")
    try:
        wait_for_ping(server, timeout=120)
        load = json.dumps({"model_name": "breeds", "url": str(trained_model_dir)}).encode()
        assert server.request("POST", "/models", load, {"Content-Type": "application/json"}).status == 200
        deadline = time.monotonic() + 120
        while (reply := server.request("POST", "/models/breeds/invoke", photo_bytes["chelsea"],
                                       {"Content-Type": "image/jpeg"})).status != 200:
            assert time.monotonic() < deadline, reply.body
            time.sleep(0.5)
        assert_top_k(reply.json(), class_names, 5)
        assert server.ping_status() == 200
    finally:
        assert stop(server) == 0
    assert list(server.tmp_dir.iterdir()) == []


def test_imgcls_serve_without_a_model_fails_fast_with_the_reason(tmp_path):
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    proc = run_imgcls("serve", "--model-dir", tmp_path / "nothing", "--port", free_local_port(), check=False,
                      timeout=120, env={"TMPDIR": str(tmp_dir)})
    assert proc.returncode == 1
    assert "neither model.pt nor model.tar.gz" in proc.stdout + proc.stderr
    assert list(tmp_dir.iterdir()) == []


def test_serve_refuses_a_busy_port_at_once_in_one_line(trained_model_dir, tmp_path):
    import socket

    port = free_local_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        started = time.monotonic()
        proc = run_imgcls("serve", "--model-dir", trained_model_dir, "--port", port, check=False, timeout=60,
                          env={"IMGCLS_BIND_HOST": "127.0.0.1", "TMPDIR": str(tmp_path)})
        took = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "already in use" in output.lower(), output
    assert "Exception" not in output and "\tat " not in output
    assert took < 5, took
    assert list(tmp_path.iterdir()) == []


def test_serve_refuses_port_zero(trained_model_dir, tmp_path):
    proc = run_imgcls("serve", "--model-dir", trained_model_dir, "--port", "0", check=False, timeout=60,
                      env={"TMPDIR": str(tmp_path)})
    assert proc.returncode == 1 and "port 0" in proc.stdout + proc.stderr


def test_a_tmpdir_too_long_for_unix_sockets_is_not_a_hang(trained_model_dir, tmp_path, photo_bytes):
    """The worker sockets live in the server's run folder; under a TMPDIR so deep that their path would
    pass the 107 bytes a Unix socket path holds, MMS used to wait silently until the start-up timeout."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = start_server(trained_model_dir, tmp_path, TMPDIR=str(deep), SAGEMAKER_STARTUP_TIMEOUT="600")
    try:
        wait_for_ping(server, timeout=120)
        assert server.invoke(photo_bytes["chelsea"], "image/jpeg").status == 200
    finally:
        assert stop(server) == 0
    log_text = server.log()
    assert "too long for the worker sockets" in log_text and str(deep) in log_text, log_text[-3000:]
    assert list(deep.iterdir()) == []


def test_a_lone_request_never_waits_for_a_batch_and_concurrent_ones_still_batch(trained_model_dir, tmp_path, photo_bytes):
    """IMGCLS_MAX_BATCH_DELAY_MS is how long a batch waits for company only while requests overlap:
    here 400 ms, so one waited for would show in a lone request's latency."""
    import concurrent.futures

    server = start_server(trained_model_dir, tmp_path, IMGCLS_MAX_BATCH_DELAY_MS="400", IMGCLS_BATCH_SIZE="8",
                          IMGCLS_TIMING_LOG="1", IMGCLS_SERVER_TIMING="1", SAGEMAKER_MODEL_SERVER_WORKERS="1")
    photo = photo_bytes["chelsea"]

    def timed() -> float:
        started = time.monotonic()
        reply = server.invoke(photo, "image/jpeg")
        took = time.monotonic() - started
        assert reply.status == 200
        # IMGCLS_SERVER_TIMING=1: the handler's own time, less than what the client waited
        handler_ms = float(re.fullmatch(r"handler;dur=([\d.]+)", reply.headers["server-timing"]).group(1))
        assert 0 < handler_ms < took * 1000
        return took

    def batch_sizes() -> list[int]:
        return [int(n) for n in re.findall(r"timing requests=(\d+) ", server.log())]

    try:
        wait_for_ping(server, timeout=240)
        lone = [timed() for _ in range(6)]
        assert statistics.median(lone) < 0.3, lone
        seen = len(batch_sizes())
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda _: [timed() for _ in range(4)], range(6)))
        deadline = time.monotonic() + 10
        while len(batch_sizes()) < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # the frontend logs the worker's lines asynchronously
        assert max(batch_sizes()[seen:]) > 1, batch_sizes()[seen:]
        time.sleep(1.5)  # no overlap for a second: lone requests go at once again
        timed()  # the worker began waiting for this one while the delay was still on
        again = [timed() for _ in range(4)]
        assert statistics.median(again) < 0.3, again
        for _ in range(3):
            assert server.ping_status() == 200
    finally:
        stop(server)
    # no log line per batch or per /ping (CloudWatch bills every line): the timing log is the opt-in
    log_text = server.log()
    assert "Backend response time" not in log_text and "endpoint took" not in log_text, log_text[-2000:]


def _thread_wakeups(pid: int, name_prefix: str) -> int:
    """Voluntary context switches (each one a sleep, so a later wake-up) of a process's threads named so."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().startswith(name_prefix):
                status = (task / "status").read_text()
                total += int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def test_worker_wait_policy_spins_briefly_unless_the_user_chose_one():
    from imgcls.serving.server import OPENMP_SPIN_COUNT, worker_openmp_env

    assert worker_openmp_env({}) == {"GOMP_SPINCOUNT": str(OPENMP_SPIN_COUNT)}
    assert worker_openmp_env({"OMP_WAIT_POLICY": "PASSIVE"}) == {}  # GOMP_SPINCOUNT would override it
    assert worker_openmp_env({"GOMP_SPINCOUNT": "0"}) == {}


def test_nothing_outside_the_model_costs_a_wakeup_per_request(trained_model_dir, tmp_path, photo_bytes):
    """The request path's fixed cost: the frontend's logging thread sleeps through requests (no per-request
    line reaches its queue, no timed polling), workers spin briefly between OpenMP regions instead of
    sleeping (a futex wake per operator), the frontend's memory is on huge pages where the host allows,
    and its JIT stops at the quick compiler (the optimising one took a core for 10+ ms at a time)."""
    from imgcls.serving.server import OPENMP_SPIN_COUNT
    from test_serving_faults import worker_pids

    server = start_server(trained_model_dir, tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        wait_for_ping(server, timeout=240)
        java = next(p for p in server.descendants() if p.name() == "java")
        for pid in worker_pids(server):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}".encode() in environ and not any(e.startswith(b"OMP_WAIT_POLICY=") for e in environ)
        assert "-XX:TieredStopAtLevel=1" in java.cmdline()
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
        if thp.exists() and "[never]" not in thp.read_text():
            assert "-XX:+UseTransparentHugePages" in java.cmdline()
        assert server.invoke(photo_bytes["chelsea"], "image/jpeg").status == 200
        time.sleep(0.5)
        before = _thread_wakeups(java.pid, "Log4j2-")
        started = time.monotonic()
        for _ in range(60):
            assert server.invoke(photo_bytes["chelsea"], "image/jpeg").status == 200
        time.sleep(1.0)
        wakeups = _thread_wakeups(java.pid, "Log4j2-") - before
        seconds = time.monotonic() - started
        assert wakeups < 10, f"the frontend's logging thread woke {wakeups} times in {seconds:.1f} s for 60 requests"
    finally:
        stop(server)


def test_an_answer_leaves_without_a_hand_off_to_the_batch_thread(trained_model_dir, tmp_path, photo_bytes):
    """The frontend's thread that feeds the worker batches is not on the way back: the backend
    connection's event loop sends the answer itself. That thread sleeps twice per lone request (for
    the request, then until the answer is out), not three times (also until its write was done)."""
    server = start_server(trained_model_dir, tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        wait_for_ping(server, timeout=240)
        java = next(p for p in server.descendants() if p.name() == "java")
        assert server.invoke(photo_bytes["chelsea"], "image/jpeg").status == 200
        time.sleep(1.5)  # past the batch-delay window (BatchDelay.java)
        before = _thread_wakeups(java.pid, "W-")
        requests = 40
        for _ in range(requests):
            response = server.invoke(photo_bytes["chelsea"], "image/jpeg")
            assert response.status == 200 and response.json()[0]["label"]
        time.sleep(0.5)
        per_request = (_thread_wakeups(java.pid, "W-") - before) / requests
        assert per_request <= 2.2, f"the batch thread slept {per_request:.2f} times per request"
    finally:
        stop(server)
