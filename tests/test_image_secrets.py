"""Issue 8: no build-time CA bundle, token or credential is left in any layer of the built image.

`docker save` streams the image; every layer tar, the image config (with its history) and
`docker history --no-trunc` are scanned. The scan is first shown to fail on a small deliberately
leaky image built here from the base image, then run on the real image.

Limit, on purpose: file contents over SCAN_LIMIT bytes (shared libraries, model weights) are not
searched for PEM blocks or token patterns; they are still hashed when their size equals the extra
CA bundle's, so a copied bundle is found whatever its name.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from docker_helpers import DOCKER, docker, image, require_docker, unique_name  # noqa: F401 (image: fixture)

pytestmark = pytest.mark.docker

SCAN_LIMIT = 16 * 1024 * 1024
IMAGE_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
# Wheels installed from uv.lock (hash-checked) ship certificates of their own: Mozilla's roots
# (botocore, grpc) and test certificates (gevent, future). The build's extra certificates are looked
# for in them too; their other certificates are let be. Anywhere else, any unknown one is a finding.
FROM_LOCKED_WHEELS = re.compile(r"/site-packages/")

PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
SECRET_PATTERNS = {
    # Ids ending in EXAMPLE are AWS's documented placeholders (botocore's examples-1.json has them).
    "AWS access key id": re.compile(rb"\b(?:AKIA|ASIA)(?![0-9A-Z]{9}EXAMPLE\b)[0-9A-Z]{16}\b"),
    "aws_secret_access_key with a value": re.compile(
        rb"aws_secret_access_key[\"']?\s*[=:]\s*[\"']?[A-Za-z0-9/+]{40}", re.IGNORECASE),
    "PyPI token": re.compile(rb"pypi-AgEI[A-Za-z0-9_-]{20,}"),
    "GitHub token": re.compile(rb"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{50,})"),
}
# Files that carry credentials for pip/uv/twine/curl when they hold a password or user:pass@ URL.
CREDENTIAL_FILES = {".netrc", "_netrc", "pip.conf", "pip.ini", ".pypirc", "uv.toml"}
CREDENTIAL_CONTENT = re.compile(rb"password|://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
# A build arg or ENV whose name says secret, written into the history with a value.
SECRET_ARG = re.compile(r"\b\w*(?:TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY|CREDENTIAL)\w*=\S+", re.IGNORECASE)


def cert_bodies(data: bytes) -> set[bytes]:
    """The DER bytes of each PEM certificate in `data` (so line wrapping and comments don't matter)."""
    bodies = set()
    for match in PEM_CERT.finditer(data):
        try:
            bodies.add(base64.b64decode(b"".join(match.group(1).split())))
        except ValueError:
            continue
    return bodies


@dataclass
class Scan:
    findings: list[str] = field(default_factory=list)
    certs_at: dict[bytes, set[str]] = field(default_factory=dict)  # certificate -> where it was seen
    image_bundle: set[bytes] = field(default_factory=set)  # the last layer's ca-certificates.crt wins
    bundle_copies: list[str] = field(default_factory=list)  # files with the extra bundle's exact bytes
    layers: int = 0
    files: int = 0

    def scan_text(self, where: str, data: bytes) -> None:
        for what, pattern in SECRET_PATTERNS.items():
            if match := pattern.search(data):
                self.findings.append(f"{what} in {where}: {match.group(0)[:12].decode(errors='replace')}...")
        if b"-----BEGIN CERTIFICATE-----" in data:
            for body in cert_bodies(data):
                self.certs_at.setdefault(body, set()).add(where)


class _Prefixed(io.RawIOBase):
    """A stream that yields `head` and then the rest of `rest` (we read a member's head to sniff it)."""

    def __init__(self, head: bytes, rest):
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n], self.head = self.head[:n], self.head[n:]
            return n
        chunk = self.rest.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)


def scan_layer(scan: Scan, layer: str, stream, bundle_size: int, bundle_sha: str) -> None:
    scan.layers += 1
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            scan.files += 1
            where = f"{layer}:/{member.name}"
            name = member.name.rsplit("/", 1)[-1]
            if member.size > SCAN_LIMIT and member.size != bundle_size:
                continue
            data = tar.extractfile(member).read()
            if member.size == bundle_size and bundle_sha and hashlib.sha256(data).hexdigest() == bundle_sha:
                scan.bundle_copies.append(where)
            if member.size > SCAN_LIMIT:
                continue
            scan.scan_text(where, data)
            if name in CREDENTIAL_FILES and CREDENTIAL_CONTENT.search(data):
                scan.findings.append(f"credentials in {where}")
            if member.name.lstrip("./") == IMAGE_BUNDLE:
                scan.image_bundle = cert_bodies(data)


def scan_image(image_ref: str, extra_bundle: Path | None) -> Scan:
    """Stream `docker save IMAGE_REF` and scan every layer, the config and the history."""
    scan = Scan()
    bundle = extra_bundle.read_bytes() if extra_bundle else b""
    bundle_sha = hashlib.sha256(bundle).hexdigest() if bundle else ""
    save = subprocess.Popen([DOCKER, "save", image_ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=save.stdout, mode="r|") as outer:
            for member in outer:
                if not member.isfile():
                    continue
                stream = outer.extractfile(member)
                head = stream.read(512)
                if len(head) == 512 and head[257:262] == b"ustar":  # a layer (docker's layer.tar or an OCI blob)
                    scan_layer(scan, member.name, io.BufferedReader(_Prefixed(head, stream), 1 << 20),
                               len(bundle), bundle_sha)
                elif member.size <= SCAN_LIMIT:  # manifest, image config with its history
                    scan.scan_text(member.name, head + stream.read())
    finally:
        save.stdout.close()
        stderr = save.stderr.read().decode(errors="replace")
        assert save.wait(timeout=120) == 0, f"docker save {image_ref} failed: {stderr[-2000:]}"
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image_ref).stdout
    scan.scan_text("docker history", history.encode())
    for line in history.splitlines():
        if match := SECRET_ARG.search(line):
            scan.findings.append(f"secret-looking build arg in docker history: {match.group(0)[:40]}")
    # The build's extra certificates are those its bundle adds to Debian's: none may be anywhere.
    extra_certs = cert_bodies(bundle) - scan.image_bundle
    if extra_certs:  # (a bundle with nothing beyond Debian's may equal the image's own file)
        scan.findings += [f"a copy of the build's extra CA bundle at {where}" for where in scan.bundle_copies]
    for cert in extra_certs & scan.certs_at.keys():
        scan.findings.append(f"a certificate of the build's extra CA bundle in {sorted(scan.certs_at[cert])[:3]}")
    # Any other certificate not in the image's own bundle is reported too (it came from somewhere).
    for cert, places in scan.certs_at.items():
        places = {place for place in places if not FROM_LOCKED_WHEELS.search(place)}
        if places and cert not in scan.image_bundle and cert not in extra_certs:
            scan.findings.append(f"a certificate that is not in the image's {IMAGE_BUNDLE}: {sorted(places)[:3]}")
    return scan


def fake_ca_pem(tmp_path: Path) -> bytes:
    key, cert = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=imgcls leak test proxy CA", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert.read_bytes()


def test_scan_finds_a_leaked_ca_and_credentials_in_a_leaky_image(tmp_path):
    require_docker()
    base = os.environ.get("BASE_IMAGE", "debian:bookworm-slim")
    context = tmp_path / "context"
    context.mkdir()
    extra_bundle = tmp_path / "extra-ca.pem"
    extra_bundle.write_bytes(fake_ca_pem(tmp_path))
    # Each leak under another name, so the test shows the scan looks at contents, not at names.
    (context / "proxy.crt").write_bytes(extra_bundle.read_bytes())
    (context / "pem-inside.txt").write_bytes(b"some notes\n" + extra_bundle.read_bytes())
    key_id = "AKIA" + "Q3EXAMPLEQ3LEAKZ"[:16]
    (context / "env.sh").write_text(
        f"export AWS_ACCESS_KEY_ID={key_id}\naws_secret_access_key = {'a1B2' * 10}\n"
        f"PYPI=pypi-AgEIcHlwaS5vcmc{'x' * 40}\nGH=ghp_{'Z9' * 18}\n")
    (context / "netrc").write_text("machine example.invalid login ci password hunter2\n")
    (context / "pip.conf").write_text("[global]\nindex-url = https://ci:s3cret@packages.example.invalid/simple\n")
    (context / "Dockerfile").write_text(
        f"FROM {base}\nARG PYPI_TOKEN\nRUN echo built\n"
        "COPY proxy.crt /usr/local/share/certs/corp.crt\nCOPY pem-inside.txt env.sh /opt/\n"
        "COPY netrc /root/.netrc\nCOPY pip.conf /etc/pip.conf\n")
    leaky = f"imgcls-leaky:{unique_name('t')}"
    docker("build", "--build-arg", "PYPI_TOKEN=pypi-AgEIleak", "-t", leaky, str(context), timeout=300)
    try:
        scan = scan_image(leaky, extra_bundle)
    finally:
        docker("rmi", "-f", leaky, check=False, timeout=120)
    report = "\n".join(scan.findings)
    for expected in ["a copy of the build's extra CA bundle at", "/usr/local/share/certs/corp.crt",
                     "a certificate of the build's extra CA bundle", "/opt/pem-inside.txt",
                     "AWS access key id in", "aws_secret_access_key with a value in", "PyPI token in",
                     "GitHub token in", "credentials in", "/root/.netrc", "/etc/pip.conf",
                     "secret-looking build arg in docker history: PYPI_TOKEN="]:
        assert expected in report, f"{expected!r} not found by the scan:\n{report}"


def test_built_image_holds_no_build_time_ca_token_or_credential(image):  # noqa: F811 (the fixture)
    extra = os.environ.get("EXTRA_CA_BUNDLE")
    extra_bundle = Path(extra) if extra else None
    scan = scan_image(image, extra_bundle)
    print(f"\n[secrets scan] {scan.layers} layers, {scan.files} files, "
          f"{len(scan.image_bundle)} certificates in the image's bundle")
    assert scan.layers >= 3 and scan.files > 1000, "the scan did not see the image's layers"
    assert scan.image_bundle, f"no certificates found in the image's {IMAGE_BUNDLE}"
    assert not scan.findings, "\n".join(scan.findings)
