"""CI helpers: the Debian mirror comes from the machine's own apt sources, never from the repository."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "apt_mirror.sh"


def _mirror(apt_etc: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), str(apt_etc)], capture_output=True, text=True, timeout=30)


def test_mirror_from_deb822_sources_skips_security(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.example.invalid/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example.invalid/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n")
    proc = _mirror(tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "http://mirror.example.invalid/debian", proc.stderr


def test_mirror_from_one_line_sources_list(tmp_path):
    (tmp_path / "sources.list").write_text("# deb http://old.example.invalid/debian bookworm main\n"
                                           "deb [arch=amd64 signed-by=/k.gpg] http://local.example.invalid/debian bookworm main\n")
    proc = _mirror(tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "http://local.example.invalid/debian", proc.stderr


def test_no_source_is_a_clear_error(tmp_path):
    proc = _mirror(tmp_path)
    assert proc.returncode == 1 and "set DEBIAN_MIRROR" in proc.stderr


def test_docker_engine_setup_takes_the_mirror_from_apt_unless_overridden():
    text = (REPO / ".ci" / "docker_engine.sh").read_text()
    assert 'mirror="${DEBIAN_MIRROR:-}"' in text and "apt_mirror.sh" in text
    assert "http://" not in text and "https://" not in text  # no host of its own


def test_download_fetches_only_http_urls(tmp_path):
    import pytest
    from imgcls.download import download_dataset
    from imgcls.errors import UserError
    with pytest.raises(UserError, match="only http and https URLs are fetched"):
        download_dataset("file:///etc/passwd.zip", tmp_path, progress=False, timeout=5)
