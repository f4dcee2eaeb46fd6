"""`make audit` (scripts/audit.py): audits the lock where an advisory service answers, says so plainly where none does."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import audit  # noqa: E402

LOCKED = dict(audit.locked_packages(REPO / "uv.lock"))


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "audit.py"), *args], capture_output=True, text=True, timeout=120)


def test_no_advisory_service_means_nothing_audited_and_every_package_listed():
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    proc = _run("--osv-url", f"http://127.0.0.1:{port}", "--no-pypi", "--timeout", "5")
    assert proc.returncode == 2
    assert "NOT AUDITED: NOTHING WAS AUDITED" in proc.stdout and "No known vulnerabilities" not in proc.stdout
    assert f"torch=={LOCKED['torch']}" in proc.stdout and f"pillow=={LOCKED['pillow']}" in proc.stdout
    assert f"for {len(LOCKED)} locked packages" in proc.stdout


@pytest.fixture
def fake_osv():
    """OSV's /v1/querybatch over real HTTP on 127.0.0.1: one advisory, for pillow."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            results = [{"vulns": [{"id": "GHSA-test-0001", "modified": "2026-01-01T00:00:00Z"}]}
                       if q["package"]["name"] == "pillow" else {} for q in body["queries"]]
            reply = json.dumps({"results": results}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_a_reported_vulnerability_is_reported(fake_osv):
    url, seen = fake_osv
    proc = _run("--osv-url", url, "--no-pypi")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"VULNERABLE pillow=={LOCKED['pillow']}: GHSA-test-0001" in proc.stdout
    assert f"audited {len(LOCKED)} locked packages: 1 with known vulnerabilities" in proc.stdout
    queries = [q for path, body in seen for q in body["queries"]]
    assert {path for path, _ in seen} == {"/v1/querybatch"}
    assert {(q["package"]["name"], q["version"]) for q in queries} == set(LOCKED.items())
    assert {q["package"]["ecosystem"] for q in queries} == {"PyPI"}


def test_locked_packages_are_the_registry_ones():
    assert "imgcls" not in LOCKED and LOCKED["numpy"] == "1.26.4" and LOCKED["torch"] == "2.13.0"
