"""Builds our MMS class-path folder from java/: the /ping readiness plugin (ReadinessPing.java), our
own classes (ConnectionGuard, BatchDelay) and the ones that replace MMS 1.1.11's classes of the same
name, being first on the class path (ModelResponseDecoder, ServerInitializer, WorkerThread).

MMS loads endpoint plugins with Java's ServiceLoader from its class path, and a plugin registered
for "ping" takes precedence over the built-in handler, which answers 200 before any model is loaded.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = sorted(str(p) for p in (Path(__file__).with_name("java")).glob("*.java"))
PLUGIN_CLASS = "imgcls.serving.ReadinessPing"
SERVICE_FILE = "META-INF/services/software.amazon.ai.mms.servingsdk.ModelServerEndpoint"


PREBUILT_ENV = "IMGCLS_READINESS_PLUGIN"  # set by the image, which compiles the plugin at build time


def plugin_class_path(mms_jar_glob: str, scratch: Path) -> Path | None:
    """The prebuilt plugin when there is one (the image), else one compiled now (needs a JDK)."""
    prebuilt = os.environ.get(PREBUILT_ENV)
    if prebuilt and (Path(prebuilt) / SERVICE_FILE).is_file():
        return Path(prebuilt)
    return build_plugin(mms_jar_glob, scratch)


def build_plugin(mms_jar_glob: str, dest: Path, javac: str | None = None, sources: list[str] = SOURCES) -> Path | None:
    """Compile the plugin into `dest` (a class-path folder); None when no JDK compiler is installed.
    `sources` defaults to all of java/ (a benchmark leaves one out to compare with MMS's own class)."""
    javac = javac or shutil.which("javac")
    if javac is None:
        log.warning("javac not found: /ping falls back to MMS's own check, which answers 200 before the model is loaded")
        return None
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([javac, "--release", "11", "-nowarn", "-d", str(dest), "-cp", mms_jar_glob, *sources],  # noqa: S603 - javac on our own sources
                   check=True, capture_output=True, text=True)
    service = dest / SERVICE_FILE
    service.parent.mkdir(parents=True, exist_ok=True)
    service.write_text(PLUGIN_CLASS + "\n")
    return dest
