"""scripts/build_and_push.sh, for real: moto answers STS/ECR, Debian's docker-registry receives the push.

The registry asks for the password ECR hands out (moto's `<account>-auth-token`), so the test
also proves that the script logs in with `aws ecr get-login-password`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import bcrypt
import boto3
import pytest

from docker_helpers import DOCKER, REPO, docker, free_port, image, require_docker  # noqa: F401

MOTO_ACCOUNT = "123456789012"  # moto's default account; its ECR password is f"{account}-auth-token"
REPOSITORY = "imgcls-pushtest"
VENV_BIN = str(Path(sys.executable).parent)  # aws and moto_server


def wait_until_listening(url: str, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers, even if not with 200
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{what} did not answer on {url} within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def moto(tmp_path):
    port = free_port()
    log = open(tmp_path / "moto.log", "w")
    process = subprocess.Popen([os.path.join(VENV_BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(f"http://127.0.0.1:{port}/moto-api/", process, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()


# Docker compresses every layer it pushes (minutes for the 6 GB image) unless the registry already
# has it under the same repository name. So the registry keeps its storage and port between runs:
# on a warm machine only the layers that changed are pushed.
REGISTRY_DIR = Path(os.environ.get("IMGCLS_TEST_REGISTRY_DIR", "/var/tmp/imgcls-test-registry"))
REGISTRY_PORT = int(os.environ.get("IMGCLS_TEST_REGISTRY_PORT", "5055"))


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the registry itself binds
        try:
            probe.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def registry(tmp_path):
    """Debian's docker-registry on 127.0.0.1 (Docker trusts plain HTTP there), htpasswd user AWS."""
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not os.path.exists(binary):
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail("docker-registry is not installed (apt-get install docker-registry)")
        pytest.skip("docker-registry is not installed")
    port = REGISTRY_PORT if port_is_free(REGISTRY_PORT) else free_port()  # a busy port only costs speed
    password = f"{MOTO_ACCOUNT}-auth-token".encode()
    (tmp_path / "htpasswd").write_bytes(b"AWS:" + bcrypt.hashpw(password, bcrypt.gensalt(rounds=5)) + b"\n")
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    (tmp_path / "registry.yml").write_text(json.dumps({  # JSON is YAML
        "version": 0.1,
        "storage": {"filesystem": {"rootdirectory": str(REGISTRY_DIR)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "imgcls-test"},
        "auth": {"htpasswd": {"realm": "imgcls-test", "path": str(tmp_path / "htpasswd")}},
    }))
    log = open(tmp_path / "registry.log", "w")
    process = subprocess.Popen([binary, "serve", str(tmp_path / "registry.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(f"http://127.0.0.1:{port}/v2/", process, "docker-registry")
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)
        log.close()


def script_env(tmp_path: Path, **extra: str) -> dict:
    """Dummy AWS credentials and a private docker config (the login must not touch ~/.docker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PATH=f"{VENV_BIN}:{env['PATH']}", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"), AWS_EC2_METADATA_DISABLED="true",
               DOCKER_CONFIG=str(tmp_path / "docker-config"), DOCKER=DOCKER, BAKE_WEIGHTS=env.get("BAKE_WEIGHTS", "0"))
    env.update(extra)
    return env


def run_script(env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/build_and_push.sh", REPOSITORY], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.docker
def test_build_and_push_to_ecr_then_pull_back(image, moto, registry, tmp_path):
    started = time.monotonic()
    proc = run_script(script_env(tmp_path, AWS_ENDPOINT_URL=moto, ECR_REGISTRY_HOST=registry))
    pushed_in = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    image_uri = proc.stdout.strip().splitlines()[-1]
    repo_uri, tag = image_uri.rsplit(":", 1)
    local_tag = f"{REPOSITORY}:{tag}"
    pushed_tags = [image_uri, f"{repo_uri}:latest"]
    try:
        assert repo_uri == f"{registry}/{REPOSITORY}"
        # The tag is a commit of this repository (HEAD may move meanwhile), marked when the tree was dirty.
        assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", tag), tag
        assert subprocess.run(["git", "cat-file", "-e", f"{tag.removesuffix('-dirty')}^{{commit}}"], cwd=REPO).returncode == 0
        assert "Login Succeeded" in proc.stdout

        ecr = boto3.client("ecr", endpoint_url=moto, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        created = ecr.describe_repositories(repositoryNames=[REPOSITORY])["repositories"][0]
        assert created["imageScanningConfiguration"]["scanOnPush"] is True

        # Drop the local names, pull both tags back and check they are the image that was built.
        built_id = docker("image", "inspect", "--format", "{{.Id}}", local_tag).stdout.strip()
        docker("rmi", *pushed_tags)
        pull_env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
        for pushed in pushed_tags:
            docker("pull", pushed, env=pull_env)
            assert docker("image", "inspect", "--format", "{{.Id}}", pushed).stdout.strip() == built_id
            assert docker("image", "inspect", "--format", "{{.Architecture}}", pushed).stdout.strip() == "amd64"
        print(f"\n[build_and_push] {image_uri} built, pushed and pulled back; script took {pushed_in:.0f} s")
    finally:
        # Untag only: the layers are shared with the main test image.
        docker("rmi", *pushed_tags, local_tag, check=False)


def test_build_and_push_without_region_says_so(tmp_path):
    env = script_env(tmp_path)
    del env["AWS_REGION"]
    proc = run_script(env, timeout=120)
    assert proc.returncode == 1
    assert "no AWS region: set AWS_REGION" in proc.stderr


def test_build_and_push_without_credentials_says_so(tmp_path):
    env = script_env(tmp_path)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    proc = run_script(env, timeout=120)
    assert proc.returncode == 1
    assert "no usable AWS credentials" in proc.stderr and "Unable to locate credentials" in proc.stderr


def test_build_and_push_without_docker_says_so(moto, tmp_path):
    proc = run_script(script_env(tmp_path, AWS_ENDPOINT_URL=moto, DOCKER=str(tmp_path / "no-docker")), timeout=120)
    assert proc.returncode == 1
    assert "is not installed" in proc.stderr and "no-docker" in proc.stderr
