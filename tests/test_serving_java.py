"""Our Java classes for the MMS frontend, run on the real MMS jars (needs a JDK, as `make setup` installs)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from imgcls.serving.readiness import SOURCES
from imgcls.serving.server import MMS_JARS


@pytest.mark.skipif(shutil.which("javac") is None, reason="needs a JDK (make setup installs one)")
def test_worker_reply_split_anywhere_is_decoded_whole(tmp_path):
    check = Path(__file__).with_name("java") / "SplitReplyCheck.java"
    subprocess.run(["javac", "--release", "11", "-nowarn", "-d", str(tmp_path), "-cp", MMS_JARS, *SOURCES, str(check)],
                   check=True, capture_output=True, text=True)
    run = subprocess.run(["java", "-cp", f"{tmp_path}:{MMS_JARS}", "SplitReplyCheck"], capture_output=True, text=True,
                         cwd=tmp_path)  # MMS's bundled log4j config writes logs/ into the working folder
    assert run.returncode == 0 and run.stdout.splitlines()[-1].startswith("OK"), run.stdout + run.stderr[-2000:]
