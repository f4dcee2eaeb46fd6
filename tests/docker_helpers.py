"""Helpers for the Docker-backed tests: engine detection, the image built once per session, containers.

Tests that need Docker are marked `@pytest.mark.docker` and call `require_docker()` (through the
fixtures below). Without an engine they skip, unless REQUIRE_DOCKER=1 (CI), where they fail.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_DIR = REPO / "local_test" / "test_dir"
# The image every Docker test runs. Its own tag: the tests build with BAKE_WEIGHTS=0 unless told
# otherwise, and must not replace the imgcls:latest that `make image` built with the weights.
IMAGE = os.environ.get("IMGCLS_TEST_IMAGE", "imgcls:test")
# Debian's 20.10 client understands DOCKER_BUILDKIT=1 without buildx; any client can run containers.
DOCKER = os.environ.get("DOCKER") or ("/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker")
CONTAINER_LABEL = "imgcls.test=1"  # every container the tests start carries it, for cleanup


def docker(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@functools.cache
def engine_problem() -> str | None:
    """None when a Docker engine answers, else why not."""
    if shutil.which(DOCKER) is None:
        return f"no docker client ({DOCKER})"
    try:
        proc = subprocess.run([DOCKER, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    return None if proc.returncode == 0 else f"no Docker engine answers: {proc.stderr.strip()[:300]}"


def require_docker() -> None:
    problem = engine_problem()
    if problem is None:
        return
    if os.environ.get("REQUIRE_DOCKER") == "1":
        pytest.fail(f"REQUIRE_DOCKER=1 but {problem}")
    pytest.skip(problem)


@functools.cache
def build_image() -> str:
    """Build IMAGE with scripts/build_image.sh; it reuses an image labelled with the same build inputs."""
    base = os.environ.get("BASE_IMAGE", "debian:bookworm-slim")
    extra_ca = os.environ.get("EXTRA_CA_BUNDLE", "")
    bake = os.environ.get("BAKE_WEIGHTS", "0")
    started = time.monotonic()
    proc = subprocess.run(["bash", "scripts/build_image.sh", IMAGE, base, extra_ca, bake], cwd=REPO,
                          capture_output=True, text=True, timeout=1800, env={**os.environ, "DOCKER": DOCKER})
    if proc.returncode != 0:
        raise AssertionError(f"image build failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    summary = [line for line in proc.stdout.splitlines() if line.startswith("build_image:")]
    print(f"\n[image] {' | '.join(summary)} (stage took {time.monotonic() - started:.0f} s)")
    return IMAGE


@pytest.fixture(scope="session")
def image() -> str:
    require_docker()
    return build_image()


def copy_test_dir(dest: Path, hyperparameters: dict | None = None) -> Path:
    """A private, writable copy of local_test/test_dir (it is mounted at /opt/ml)."""
    shutil.copytree(TEST_DIR, dest, ignore=shutil.ignore_patterns("model", "output", "checkpoints"))
    if hyperparameters is not None:
        (dest / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    return dest


def default_hyperparameters() -> dict:
    return json.loads((TEST_DIR / "input/config/hyperparameters.json").read_text())


def make_writable_for_all(root: Path) -> None:
    """So the container's non-root user can write into a host folder that root created."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_args(name: str) -> list[str]:
    """Flags every test container gets: a name, the cleanup label, a sane /dev/shm."""
    return ["--name", name, "--label", CONTAINER_LABEL, "--shm-size", "1g"]


def remove_container(name: str) -> None:
    docker("rm", "-f", name, check=False, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout: float, container: str | None = None, process: subprocess.Popen | None = None) -> None:
    """Poll until `url` answers 200; fail early, with its logs, when `container` has exited
    (a container that does not exist yet is still starting) or when `process` has ended."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = repr(exc)
        if container and docker("inspect", "--format", "{{.State.Status}}", container, check=False).stdout.strip() in ("exited", "dead"):
            raise AssertionError(f"container {container} exited before {url} answered:\n{container_logs(container)}")
        if process is not None and process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"{process.args} exited with {process.returncode} before {url} answered:\n{output[-4000:]}")
        time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})"
                         + (f"\n{container_logs(container)}" if container else ""))


def container_logs(name: str) -> str:
    proc = docker("logs", "--tail", "80", name, check=False)
    return (proc.stdout + proc.stderr)[-6000:]
