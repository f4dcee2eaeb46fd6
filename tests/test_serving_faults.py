"""The real serve stack under faults: slow and heavy requests, timeouts, killed workers, repeated signals."""
from __future__ import annotations

import base64
import json
import os
import statistics
import threading
import time
from pathlib import Path

import psutil
import pytest

from test_serving import start_server, stop, wait_for_ping
from test_serving_decoder import encode, photos, png_bomb


def worker_pids(server) -> set[int]:
    """The processes that hold a model: MMS forks them from its listener (also a model_service_worker)."""
    pids = set()
    for process in server.descendants():
        try:
            if "model_service_worker" in " ".join(process.parent().cmdline()):
                pids.add(process.pid)
        except (psutil.NoSuchProcess, AttributeError):
            pass
    return pids


def started_since_boot(pid: int) -> float:
    """When a process started, in seconds since boot to the clock tick (psutil's create_time rounds
    the boot time to whole seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def heavy_json(images: int) -> bytes:
    """Each image: a few kB that declare 49 megapixels (under the per-image limit)."""
    return json.dumps({"images": [base64.b64encode(png_bomb(7000)).decode()] * images}).encode()


@pytest.fixture(scope="module")
def good_jpeg() -> bytes:
    return encode(photos()["chelsea"], "JPEG", quality=90)


def test_timeout_is_in_seconds_and_the_overdue_worker_ends(trained_model_dir, tmp_path, good_jpeg):
    server = start_server(trained_model_dir, tmp_path, SAGEMAKER_MODEL_SERVER_TIMEOUT="2",
                          IMGCLS_MAX_REQUEST_MEGAPIXELS="100000", SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        wait_for_ping(server, timeout=240)
        before = worker_pids(server)
        assert len(before) >= 1
        started = time.monotonic()
        reply = server.invoke(heavy_json(40), "application/json")  # tens of seconds of decoding
        took = time.monotonic() - started
        assert reply.status == 504, (reply.status, reply.body[:300])
        assert reply.json()["status"] == 504 and "SAGEMAKER_MODEL_SERVER_TIMEOUT=2" in reply.json()["message"]
        assert took < 6, took
        gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in before if psutil.pid_exists(pid)], timeout=5)
        assert not alive, "the timed-out worker still runs beside its replacement"
        wait_for_ping(server, timeout=120)
        assert server.invoke(good_jpeg, "image/jpeg").status == 200
        assert worker_pids(server).isdisjoint(before)
    finally:
        stop(server)


def test_heavy_requests_cannot_hold_the_worker(trained_model_dir, tmp_path, good_jpeg):
    server = start_server(trained_model_dir, tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        wait_for_ping(server, timeout=240)

        def good_latencies(count: int) -> list[float]:
            times = []
            for _ in range(count):
                started = time.perf_counter()
                assert server.invoke(good_jpeg, "image/jpeg").status == 200
                times.append(time.perf_counter() - started)
            return times

        alone = statistics.median(good_latencies(5))
        stop_attack = threading.Event()
        statuses = []

        def attack():
            while not stop_attack.is_set():
                reply = server.invoke(heavy_json(46), "application/json")
                statuses.append(reply.status)

        attackers = [threading.Thread(target=attack) for _ in range(2)]
        for thread in attackers:
            thread.start()
        try:
            time.sleep(1)
            under_attack = good_latencies(10)
        finally:
            stop_attack.set()
            for thread in attackers:
                thread.join(timeout=120)
        assert statuses and set(statuses) == {413}, statuses
        # Each heavy request is cut off after about 100 megapixels of decoding (a few seconds at most
        # on a busy 2-core machine), instead of holding the worker for the 46 images it asks for.
        assert max(under_attack) < alone + 10, (alone, under_attack)
    finally:
        stop(server)


def test_only_the_first_stop_signal_interrupts():
    import signal as signals

    from imgcls.serving.server import _Stop, _StopOnce

    handler = _StopOnce()
    with pytest.raises(_Stop):
        handler(signals.SIGTERM, None)
    handler(signals.SIGTERM, None)  # a second one, e.g. inside the clean-up, must not raise
    handler(signals.SIGINT, None)
    assert handler.received == "SIGTERM"


def test_a_storm_of_sigterms_still_cleans_up_everything(trained_model_dir, tmp_path):
    import os
    import signal as signals

    server = start_server(trained_model_dir, tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    wait_for_ping(server, timeout=240)
    processes = server.descendants()
    assert list(server.tmp_dir.glob("imgcls-serve-*"))
    started = time.monotonic()
    while server.process.poll() is None and time.monotonic() - started < 60:
        os.kill(server.process.pid, signals.SIGTERM)
        time.sleep(0.002)
    assert server.process.wait(timeout=5) == 0
    assert time.monotonic() - started < 30  # SageMaker sends SIGKILL 30 s after SIGTERM on endpoints
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert not alive, [p.cmdline() for p in alive]
    assert list(server.tmp_dir.iterdir()) == []


def test_a_killed_worker_fails_at_most_the_requests_it_held(trained_model_dir, tmp_path, good_jpeg):
    import os
    import signal as signals

    clients = 4
    server = start_server(trained_model_dir, tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    stop_at = [time.monotonic() + 600]
    try:
        wait_for_ping(server, timeout=240)
        (victim,) = worker_pids(server)
        # the listener that forks workers has imported torch and the handler once: a replacement skips the imports
        listener = psutil.Process(victim).parent()
        assert "libtorch" in Path(f"/proc/{listener.pid}/maps").read_text(), listener.cmdline()
        replies: list[tuple[float, int, bytes]] = []
        lock = threading.Lock()

        def client():
            while time.monotonic() < stop_at[0]:
                reply = server.invoke(good_jpeg, "image/jpeg")
                with lock:
                    replies.append((time.monotonic(), reply.status, reply.body))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        killed_at, killed_since_boot = time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME)
        os.kill(victim, signals.SIGKILL)
        deadline = killed_at + 180
        while not (replacements := worker_pids(server) - {victim}):
            assert time.monotonic() < deadline, "no replacement worker"
            time.sleep(0.05)
        # the first restart is immediate (MMS waited 1 s): the replacement is forked well within that second
        forked_after = started_since_boot(replacements.pop()) - killed_since_boot
        assert forked_after < 0.8, f"replacement forked {forked_after:.2f} s after the kill"
        wait_for_ping(server, timeout=180)
        recovered = time.monotonic() - killed_at
        stop_at[0] = time.monotonic() + 5
        for thread in threads:
            thread.join(timeout=120)
        failed = [(status, body) for _, status, body in replies if status != 200]
        assert len(failed) <= clients, failed  # only those the dead worker held
        for status, body in failed:
            error = json.loads(body)
            assert error["status"] == status >= 500 and "Worker died" not in error["message"]
        assert any(at > killed_at + recovered and status == 200 for at, status, _ in replies)  # the new worker serves
        print(f"worker killed: {len(failed)} request(s) failed, replacement forked after {forked_after:.2f} s, ready after {recovered:.1f} s")
    finally:
        stop_at[0] = 0  # the clients stop, also when an assertion failed
        stop(server)


@pytest.mark.parametrize("script, imports_torch", [("model_service_worker.py", True), ("metric_collector.py", False)])
def test_the_backend_imports_torch_for_the_worker_listener_only(tmp_path, script, imports_torch):
    """MMS runs every Python script through the same executable: its periodic metric collector must
    not pay for torch."""
    import subprocess
    import sys
    probe = tmp_path / script
    probe.write_text("import sys\nprint('torch' in sys.modules, sys.argv[1:])\n")
    backend = Path(sys.executable).parent / "imgcls-mms-backend"
    done = subprocess.run([str(backend), str(probe), "--sock-type", "unix"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{imports_torch} ['--sock-type', 'unix']"


def test_worker_restarts_leave_no_threads_or_descriptors_behind(trained_model_dir, tmp_path):
    """Each worker writes its output to two pipes that the frontend reads with a thread each; MMS kept
    a dead worker's readers and pipe ends for good (two threads and two descriptors per restart)."""
    import signal as signals

    server = start_server(trained_model_dir, tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    try:
        wait_for_ping(server, timeout=240)
        java = next(p for p in server.descendants() if p.name() == "java")

        def kill_worker_and_wait() -> None:
            (victim,) = worker_pids(server)
            os.kill(victim, signals.SIGKILL)
            deadline = time.monotonic() + 120
            while not worker_pids(server) - {victim}:
                assert time.monotonic() < deadline, "no replacement worker"
                time.sleep(0.05)
            wait_for_ping(server, timeout=120)
            time.sleep(1.0)  # the replacement's readers are attached once its model has loaded

        def readers() -> int:  # named W-<model>-<n>-stdout/-stderr ("W-model-1-stdou" once the kernel cuts it)
            return sum(Path(f"/proc/{java.pid}/task/{t.id}/comm").read_text().startswith("W-model-") for t in java.threads())

        kill_worker_and_wait()  # the first restart starts the frontend's restart machinery (its pool thread)
        threads, files = readers(), java.num_fds()
        for _ in range(3):
            kill_worker_and_wait()
        assert readers() == threads, f"output readers: {threads} -> {readers()} after 3 restarts"
        assert java.num_fds() <= files, f"open descriptors: {files} -> {java.num_fds()} after 3 restarts"
    finally:
        stop(server)
