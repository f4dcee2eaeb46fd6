"""The training loop's event interface: the loop announces, hooks listen (detectron2's engine/hooks in small).

Events, in the order a job sees them:

    before_train                      once, after resume, before the first epoch
      before_epoch                    each epoch
        after_backward                each step, gradients ready, optimizer not yet stepped
        after_step                    each step, optimizer stepped
      after_epoch                     each epoch, after validation (`loop.history[-1]` is its row)
    after_train                       ALWAYS: also when a hook stopped the job, on SIGTERM or an error
                                      (`loop.failure` is the exception then, else None)

A hook stops the job by raising a `UserError` (its message becomes the one-line failure reason;
no model is written), or ends training early and normally by setting `loop.finish_early`.
A hook that keeps state across a spot restart returns it from `state_dict()` (plain Python values
and tensors only: checkpoints load with weights_only=True); the Checkpointer saves and restores it.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import UserError

log = logging.getLogger(__name__)

PHASES = ("data", "h2d", "forward", "backward", "optimizer")


class Hook:
    """Override the events you need. `name` keys the hook's state in the checkpoint."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def before_train(self, loop: "LoopState") -> None: ...
    def before_epoch(self, loop: "LoopState") -> None: ...
    def after_backward(self, loop: "LoopState") -> None: ...
    def after_step(self, loop: "LoopState") -> None: ...
    def after_epoch(self, loop: "LoopState") -> None: ...
    def after_train(self, loop: "LoopState") -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class Hooks(list):
    """The hooks of one job, called in order."""

    def call(self, event: str, loop: "LoopState") -> None:
        for hook in self:
            getattr(hook, event)(loop)

    def finish(self, loop: "LoopState") -> None:
        """after_train for every hook; one hook failing must neither skip the others nor hide the job's own error."""
        first = None
        for hook in self:
            try:
                hook.after_train(loop)
            except Exception as exc:
                if loop.failure is None and first is None:
                    first = exc
                else:
                    log.warning("hook %s failed in after_train: %s", hook.name, exc)
        if first is not None:
            raise first


class Timeline:
    """Job phases with their time since the process started (for the insights report)."""

    def __init__(self):
        import psutil
        self.process_start = psutil.Process().create_time()  # wall clock, so imports count too
        self.offset = time.time() - self.process_start - time.perf_counter()
        self.events: list[dict] = [{"event": "process_start", "t": 0.0}]

    def now(self) -> float:
        return time.perf_counter() + self.offset

    def mark(self, event: str, at: float | None = None, **info) -> None:
        """`at`: a time.perf_counter() value, when the event happened earlier than now."""
        t = self.now() if at is None else at + self.offset
        self.events.append({"event": event, "t": round(t, 6), **info})


class StepTimer:
    """Laps of one train step: data wait, host-to-device, forward, backward, optimizer; `other` is the rest.

    Host wall times by default. With `cuda_events` the device phases are also bracketed by CUDA
    events, read later (`resolve`) at points where the loop syncs anyway: no sync per step.
    With `keep`, every finished step is queued in `finished` for a listener to take.
    """

    def __init__(self, *, keep: bool = False, cuda_events: bool = False):
        self.keep, self.cuda_events = keep, cuda_events
        self.finished: list[dict] = []
        self.restart()

    def restart(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}
        self.events: list = []

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.laps[phase] = elapsed = now - self.last
        self.last = now
        if self.cuda_events:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.events.append(event)
        return elapsed

    def since_start(self) -> float:
        return time.perf_counter() - self.start

    def end_step(self, step: int) -> None:
        """Close the step (after every hook ran) and start timing the next one."""
        if self.keep:
            now = time.perf_counter()
            self.finished.append({"step": step, "end": now, "total": now - self.start, "laps": self.laps,
                                  "events": self.events})
        self.restart()

    @staticmethod
    def resolve(record: dict) -> dict[str, float]:
        """Seconds per phase; device phases from CUDA events where they were recorded."""
        laps = dict(record["laps"])
        events = record["events"]
        if len(events) == len(PHASES):  # events at the end of data, h2d, forward, backward, optimizer
            events[-1].synchronize()  # already complete where the loop synced; cheap then
            for i, phase in enumerate(PHASES[1:], start=1):
                laps[phase] = events[i - 1].elapsed_time(events[i]) / 1000.0
        laps["other"] = max(0.0, record["total"] - sum(laps.get(p, 0.0) for p in PHASES))
        return laps


def all_sum(values: list[float], rt) -> list[float]:
    if rt.world_size == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t)
    return t.tolist()


@dataclass
class LoopState:
    """What the loop and its hooks share. Fields below `# saved` are the loop's part of the checkpoint."""
    hp: Any
    rt: Any
    paths: Any
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    criterion: Any
    class_names: list[str]
    steps_per_epoch: int
    loaders: dict = field(default_factory=dict)
    splits: Any = None
    timeline: Timeline | None = None
    timer: StepTimer | None = None
    stop_signal: Any = None
    # this step (valid in after_backward / after_step)
    images: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    # outcome
    finish_early: bool = False
    failure: BaseException | None = None
    # saved
    epoch: int = 0  # the epoch in progress, 0-based (in after_epoch: the epochs completed)
    step: int = 0  # steps of it done (in after_epoch: 0)
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0.0, "seen": 0.0, "data_wait": 0.0, "compute": 0.0})
    # device-side running sums of this epoch, read (synced) only now and then
    running_loss: torch.Tensor | None = None
    running_correct: torch.Tensor | None = None

    @property
    def global_step(self) -> int:
        """Steps done since the job began (1-based once a step is done)."""
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def at_interval(self) -> bool:
        """A sync point: the same steps on every rank."""
        return self.step % self.hp.log_interval == 0 or self.step == self.steps_per_epoch

    def all_sum(self, values: list[float]) -> list[float]:
        return all_sum(values, self.rt)

    def sync(self) -> None:
        """Move the device-side running sums to `partial` (one host sync)."""
        self.partial["loss"] += self.running_loss.item()
        self.partial["correct"] += self.running_correct.item()
        self.running_loss.zero_()
        self.running_correct.zero_()
        if not math.isfinite(self.partial["loss"]):
            raise UserError(f"training diverged at epoch {self.epoch + 1} step {self.step}: loss is not finite; "
                            f"lower lr (now {self.hp.lr})")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(), "history": self.history,
                "partial": dict(self.partial), "class_names": self.class_names, "backbone": self.hp.backbone,
                "hyperparameters": self.hp.as_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.history, self.partial = state["history"], state["partial"]
        self.epoch, self.step = state["epoch"], state["step"]
