"""Checkpoints for spot training: atomic writes, newest-complete-wins resume, SIGTERM to a saved state."""
from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import torch

from .artifacts import atomic_write_bytes

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-e(\d{4})-s(\d{7})\.pt$")
KEEP = 2


def checkpoint_path(directory: Path, epoch: int, step: int) -> Path:
    """`epoch` is the epoch in progress (0-based), `step` the steps of it already done."""
    return Path(directory) / f"checkpoint-e{epoch:04d}-s{step:07d}.pt"


def save_checkpoint(directory: Path, state: dict) -> Path:
    path = checkpoint_path(directory, state["epoch"], state["step"])
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Newest first. Temp files of interrupted writes never match the name pattern."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: tuple(int(g) for g in _NAME.match(p.name).groups()), reverse=True)


def load_latest_checkpoint(directory: Path) -> dict | None:
    """The newest checkpoint that loads; a damaged one (e.g. a partial S3 sync) is skipped with a warning."""
    for path in list_checkpoints(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            log.info("resuming from %s (epoch %d, step %d)", path.name, state["epoch"] + 1, state["step"])
            return state
        except Exception as exc:
            log.warning("ignoring damaged checkpoint %s: %s", path.name, exc)
    return None


class StopSignal:
    """Turns SIGTERM (StopTrainingJob, spot reclaim: 120 s before SIGKILL) into a flag the loop polls."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received %s: saving a checkpoint at the end of this step", signal.Signals(signum).name)
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False
