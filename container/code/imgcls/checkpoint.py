"""Checkpoints for spot training: atomic writes, newest-complete-wins resume, SIGTERM to a saved state."""
from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

import torch

from .artifacts import atomic_write_bytes
from .engine import Hook
from .errors import UserError

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


class TrainingInterrupted(UserError):
    """SIGTERM arrived: state is saved and the job can be resumed."""


class Checkpointer(Hook):
    """The one owner of a checkpoint's contents: the loop's state plus every hook's own state.

    Saves at every epoch end and, when SIGTERM arrives, at the end of the current step; then stops
    the job with a resumable reason. `resume()` restores the newest complete checkpoint.
    """

    def __init__(self, directory: Path, hooks: list[Hook]):
        self.directory, self.hooks = Path(directory), hooks

    def snapshot(self, loop) -> dict:
        state = loop.state_dict()
        state["hooks"] = {hook.name: hook.state_dict() for hook in self.hooks if hook is not self}
        return state

    def save(self, loop) -> Path:
        path = save_checkpoint(self.directory, self.snapshot(loop))
        if loop.timeline is not None:
            loop.timeline.mark("checkpoint", epoch=loop.epoch + (loop.step > 0), step=loop.global_step)
        return path

    def resume(self, loop) -> bool:
        state = load_latest_checkpoint(self.directory)
        if state is None:
            return False
        if state["class_names"] != loop.class_names or state["backbone"] != loop.hp.backbone:
            raise UserError(f"checkpoint in {self.directory} belongs to another model (backbone or classes differ); "
                            "empty that folder or point checkpoint-dir elsewhere")
        loop.load_state_dict(state)
        saved = state.get("hooks", {})
        for hook in self.hooks:
            if hook is not self:
                hook.load_state_dict(saved.get(hook.name, {}))
        return True

    def after_epoch(self, loop) -> None:
        if loop.rt.is_main:
            self.save(loop)

    def after_step(self, loop) -> None:
        received = bool(loop.stop_signal.received)
        # Single process: stop at once. DDP: ranks agree at sync points, so all stop at the same step.
        if loop.rt.world_size > 1:
            if not loop.at_interval:
                return
            received = loop.all_sum([float(received)])[0] > 0
        if not received:
            return
        loop.sync()
        if loop.rt.is_main:
            log.warning("checkpoint saved to %s", self.save(loop))
        raise TrainingInterrupted(f"stopped by signal at epoch {loop.epoch + 1} step {loop.step}/{loop.steps_per_epoch}; "
                                  f"state saved in {self.directory}, a restarted job resumes from it")
