"""Audit the locked dependencies (uv.lock) against an advisory service, and never claim what was not checked.

    uv run python scripts/audit.py            # `make audit`
    uv run python scripts/audit.py --osv-url http://127.0.0.1:8999 --no-pypi

Services, in order: OSV's batch API (`--osv-url`, or IMGCLS_AUDIT_OSV_URL), then PyPI's JSON API
through pip-audit for what OSV did not answer. A package counts as audited only when a service
answered for it. Exit status: 0 all audited and clean; 1 a known vulnerability; 2 some or all
packages unchecked (the output says "NOT AUDITED" and lists them).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess  # noqa: S404 - runs pip-audit, fixed argv
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OSV_URL = "https://api.osv.dev"
BATCH = 500  # OSV accepts up to 1000 queries per batch


def locked_packages(lock: Path) -> list[tuple[str, str]]:
    """(name, version) of every package in uv.lock from a registry (our own project is not one)."""
    data = tomllib.loads(lock.read_text())
    return sorted({(p["name"], p["version"]) for p in data.get("package", [])
                   if "version" in p and "registry" in p.get("source", {})})


def query_osv(base_url: str, packages: list[tuple[str, str]], timeout: float) -> tuple[dict[str, list[str]], str | None]:
    """{name: [advisory ids]} for the packages OSV answered for, and why it did not answer (None if it did)."""
    if not base_url.startswith(("http://", "https://")):
        return {}, f"not an http(s) URL: {base_url}"
    found: dict[str, list[str]] = {}
    for start in range(0, len(packages), BATCH):
        chunk = packages[start:start + BATCH]
        body = json.dumps({"queries": [{"package": {"name": n, "ecosystem": "PyPI"}, "version": v} for n, v in chunk]}).encode()
        request = urllib.request.Request(f"{base_url.rstrip('/')}/v1/querybatch", data=body,  # noqa: S310 - scheme checked above
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
                results = json.loads(response.read())["results"]
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            return found, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if len(results) != len(chunk):
            return found, f"answered {len(results)} results for {len(chunk)} queries"
        for (name, _), result in zip(chunk, results):
            found[name] = [v["id"] for v in result.get("vulns", [])]
    return found, None


def query_pypi(packages: list[tuple[str, str]], timeout: float) -> tuple[dict[str, list[str]], str | None]:
    """pip-audit against PyPI's JSON API; a package it skips ("not found") is not audited."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write("".join(f"{n}=={v}\n" for n, v in packages))
    try:
        proc = subprocess.run([sys.executable, "-m", "pip_audit", "--requirement", req.name, "--no-deps", "--disable-pip",  # noqa: S603 - fixed argv
                               "--vulnerability-service", "pypi", "--format", "json", "--progress-spinner", "off",
                               "--timeout", str(int(timeout))], capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"pip-audit did not run: {exc}"
    finally:
        os.unlink(req.name)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return {}, f"pip-audit exited {proc.returncode}: {proc.stderr.strip()[-300:]}"
    found = {d["name"].lower(): [v["id"] for v in d.get("vulns", [])] for d in report.get("dependencies", []) if "skip_reason" not in d}
    skipped = [d for d in report.get("dependencies", []) if "skip_reason" in d]
    return found, f"{len(skipped)} packages skipped ({skipped[0]['skip_reason']})" if skipped else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=REPO / "uv.lock")
    parser.add_argument("--osv-url", default=os.environ.get("IMGCLS_AUDIT_OSV_URL", DEFAULT_OSV_URL))
    parser.add_argument("--no-pypi", action="store_true", help="do not ask PyPI's JSON API (through pip-audit)")
    parser.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)

    packages = locked_packages(args.lock)
    answered: dict[str, list[str]] = {}
    problems = []
    osv, problem = query_osv(args.osv_url, packages, args.timeout)
    answered.update(osv)
    if problem:
        problems.append(f"OSV at {args.osv_url}: {problem}")
    rest = [(n, v) for n, v in packages if n not in answered]
    if rest and not args.no_pypi:
        pypi, problem = query_pypi(rest, args.timeout)
        answered.update(pypi)
        if problem:
            problems.append(f"PyPI JSON API (pip-audit): {problem}")

    vulnerable = {n: ids for n, ids in answered.items() if ids}
    versions = dict(packages)
    for name, ids in sorted(vulnerable.items()):
        print(f"VULNERABLE {name}=={versions.get(name, '?')}: {', '.join(ids)}")
    unchecked = [f"{n}=={v}" for n, v in packages if n not in answered]
    for problem in problems:
        print(f"no answer from {problem}")
    if unchecked:
        what = "NOTHING WAS AUDITED" if len(unchecked) == len(packages) else f"{len(packages) - len(unchecked)} of {len(packages)} packages audited"
        print(f"NOT AUDITED: {what}; no advisory service answered for {len(unchecked)} locked packages: {', '.join(unchecked)}")
        return 2
    print(f"audited {len(packages)} locked packages: "
          + (f"{len(vulnerable)} with known vulnerabilities" if vulnerable else "no known vulnerabilities"))
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main())
