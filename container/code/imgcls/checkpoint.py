"""Checkpoints for spot training: atomic writes, newest-complete-wins resume, SIGTERM to a saved state."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import time
from pathlib import Path

import torch

from .artifacts import atomic_write_bytes, tensor_bytes
from .engine import Hook
from .errors import UserError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-e(\d{4})-s(\d{7})\.pt$")
_TEMP = re.compile(r"^\.checkpoint-e\d{4}-s\d{7}\.pt\..*\.tmp$")  # artifacts.atomic_write_bytes' temp names
KEEP = 2
STALE_DIR = "stale"

# Hyperparameters that cannot change the weights a run produces: a checkpoint written under other
# values is still the same job. `epochs` may grow (the run continues), but not fall below the
# checkpoint's epoch. Everything else (amp and deterministic too: they change the numerics) must match.
RESUME_IGNORES = ("epochs", "log-interval", "workers", "checkpoint-dir", "checkpoints", "allow-download", "insights-report")


def checkpoint_path(directory: Path, epoch: int, step: int) -> Path:
    """`epoch` is the epoch in progress (0-based), `step` the steps of it already done."""
    return Path(directory) / f"checkpoint-e{epoch:04d}-s{step:07d}.pt"


def save_checkpoint(directory: Path, state: dict) -> Path:
    path = checkpoint_path(directory, state["epoch"], state["step"])
    remove_temp_files(directory)
    atomic_write_bytes(path, lambda f: torch.save(state, f), size_hint=tensor_bytes(state))
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
            state["path"] = str(path)
            return state
        except Exception as exc:
            log.warning("ignoring damaged checkpoint %s: %s", path.name, exc)
    return None


def data_fingerprint(splits) -> str:
    """Hash of the train and valid samples (path relative to the split root, size, label): what the weights depend on."""
    digest = hashlib.sha256()
    for split in (splits.train, splits.valid):
        root = Path(split.root)
        for path, label in sorted(split.samples):
            digest.update(f"{split.name}\0{Path(path).relative_to(root).as_posix()}\0{os.path.getsize(path)}\0{label}\n".encode())
    return digest.hexdigest()


def job_identity(hyperparameters: dict, class_names: list[str], fingerprint: str) -> dict:
    """What a checkpoint must share with this run to be resumed; saved in every checkpoint under "job"."""
    return {"hyperparameters": {k: v for k, v in hyperparameters.items() if k not in RESUME_IGNORES},
            "class_names": list(class_names), "data": fingerprint}


def job_differences(saved: dict | None, job: dict) -> list[str]:
    """Why a checkpoint's job is not this one (empty: the same job)."""
    if not saved:
        return ["the checkpoint records no job (written by an older version)"]
    out = []
    old_hp, new_hp = saved.get("hyperparameters", {}), job["hyperparameters"]
    for name in sorted(set(old_hp) | set(new_hp)):
        if old_hp.get(name) != new_hp.get(name):
            out.append(f"{name} {old_hp.get(name)!r} -> {new_hp.get(name)!r}")
    if saved.get("class_names") != job["class_names"]:
        out.append(f"classes ({len(saved.get('class_names') or [])} -> {len(job['class_names'])}, or renamed)")
    if saved.get("data") != job["data"]:
        out.append("data (train/valid files or sizes changed)")
    return out


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete temp files that killed checkpoint writes left behind (only one process ever writes here)."""
    directory = Path(directory)
    removed = [p for p in directory.iterdir() if _TEMP.match(p.name)] if directory.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint write", path.name)
    return removed


def _move_aside(directory: Path) -> Path:
    target = Path(directory) / STALE_DIR / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for path in list_checkpoints(directory):
        path.rename(target / path.name)
    return target


def resume_state(directory: Path, job: dict, epochs: int, *, manage_files: bool = True) -> dict | None:
    """The newest checkpoint of this same job, or None to start fresh.

    A checkpoint of another job (other hyperparameters, classes or data; or past this run's
    `epochs`) is never resumed: its files are moved to `stale/<time>/` (kept, not deleted) and the
    run starts fresh, with a WARNING naming the differences. Only the main process
    (`manage_files`) removes or moves files.
    """
    directory = Path(directory)
    if manage_files:
        remove_temp_files(directory)
    state = load_latest_checkpoint(directory)
    if state is None:
        return None
    name = Path(state.pop("path")).name
    differences = job_differences(state.get("job"), job)
    if not differences and state["epoch"] > epochs:
        differences = [f"epochs: the checkpoint has {state['epoch']} epochs done, this run asks for {epochs}"]
    if differences:
        where = _move_aside(directory) if manage_files else directory / STALE_DIR
        log.warning("checkpoint %s in %s belongs to another job (%s): starting fresh; its checkpoints were moved to %s",
                    name, directory, "; ".join(differences), where)
        return None
    if state["epoch"] >= epochs:  # (a run that stopped early is reported by BestWeights, which owns that state)
        log.info("the run in %s already finished (%d of %d epochs): no training; its best weights are evaluated and written",
                 directory, state["epoch"], epochs)
    else:
        log.info("resuming from %s at epoch %d/%d, step %d", name, state["epoch"] + 1, epochs, state["step"])
    return state


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
    """SIGTERM (or Ctrl-C) arrived: state is saved and the job can be resumed."""

    def __init__(self, message: str, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


class Checkpointer(Hook):
    """The one owner of a checkpoint's contents: the loop's state plus every hook's own state.

    Saves at every epoch end and, when SIGTERM arrives, at the end of the current step; then stops
    the job with a resumable reason. `resume()` restores the newest complete checkpoint. Disabled
    (`checkpoints off`), it neither saves nor resumes, and a signal still stops the job at a step's end.
    """

    def __init__(self, directory: Path, hooks: list[Hook], job: dict, enabled: bool = True):
        self.directory, self.hooks, self.job, self.enabled = Path(directory), hooks, job, enabled

    def snapshot(self, loop) -> dict:
        state = loop.state_dict()
        state["job"] = self.job
        state["hooks"] = {hook.name: hook.state_dict() for hook in self.hooks if hook is not self}
        return state

    def save(self, loop) -> Path:
        path = save_checkpoint(self.directory, self.snapshot(loop))
        if loop.timeline is not None:
            loop.timeline.mark("checkpoint", epoch=loop.epoch + (loop.step > 0), step=loop.global_step)
        return path

    def resume(self, loop) -> bool:
        if not self.enabled:
            return False
        state = resume_state(self.directory, self.job, loop.hp.epochs, manage_files=loop.rt.is_main)
        if state is None:
            return False
        loop.load_state_dict(state)
        saved = state.get("hooks", {})
        for hook in self.hooks:
            if hook is not self:
                hook.load_state_dict(saved.get(hook.name, {}))
        return True

    def after_epoch(self, loop) -> None:
        if loop.rt.is_main and self.enabled:
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
        where = f"stopped by signal at epoch {loop.epoch + 1} step {loop.step}/{loop.steps_per_epoch}"
        if not self.enabled:
            raise TrainingInterrupted(f"{where}; checkpoints are off, nothing to resume", loop.stop_signal.received)
        if loop.rt.is_main:
            log.warning("checkpoint saved to %s", self.save(loop))
        raise TrainingInterrupted(f"{where}; state saved in {self.directory}, a restarted job resumes from it", loop.stop_signal.received)
