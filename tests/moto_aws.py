"""moto's server on 127.0.0.1 with its request recorder on: tests read back the exact requests
the client sent over HTTP (body as sent, operation from X-Amz-Target)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from docker_helpers import free_port

MOTO_SERVER = str(Path(sys.executable).parent / "moto_server")
ACCOUNT = "123456789012"  # moto's default account
ROLE = f"arn:aws:iam::{ACCOUNT}:role/imgcls-test"
REGION = "us-east-1"


class Moto:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.recording = workdir / "moto-recording.jsonl"
        env = {**os.environ, "MOTO_ENABLE_RECORDING": "True", "MOTO_RECORDER_FILEPATH": str(self.recording)}
        self.log = open(workdir / "moto.log", "w")
        self.process = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(self.port)], env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, f"moto_server exited with {self.process.returncode}"
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start within 60 s"
                time.sleep(0.2)
        self.reset()

    def reset(self) -> None:
        """Forget every resource and every recorded request."""
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10)
        self.recording.write_text("")

    def requests(self, operation: str | None = None) -> list[tuple[str, dict]]:
        """(operation, body) of the JSON-protocol requests recorded so far, in order."""
        found = []
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            target = next((v for k, v in entry["headers"].items() if k.lower() == "x-amz-target"), None)
            if not target:
                continue
            op = target.split(".")[-1]
            body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else (entry.get("body") or "{}")
            if operation is None or op == operation:
                found.append((op, json.loads(body or b"{}")))
        return found

    def only(self, operation: str) -> dict:
        bodies = [body for _, body in self.requests(operation)]
        assert len(bodies) == 1, f"expected one {operation}, got {len(bodies)}"
        return bodies[0]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def clean_aws_env(monkeypatch, tmp_path: Path) -> None:
    """No AWS_* or imgcls role/bucket variable, nothing read from ~/.aws. imgcls.cli.main points
    logging at the sys.stderr of the moment (pytest's capture): put it back afterwards."""
    import logging
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    for name in list(os.environ):
        if name.startswith("AWS_") or name in ("IMGCLS_SAGEMAKER_ROLE", "IMGCLS_BUCKET"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def aws_env(monkeypatch, moto: Moto, tmp_path: Path) -> None:
    """Dummy credentials, moto as every AWS endpoint, nothing read from ~/.aws."""
    clean_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("IMGCLS_AWS_POLL_S", "0.05")


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    """One moto server per test module (import this fixture into the module)."""
    server = Moto(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
