"""The loop's standard listeners: progress, metric lines, TensorBoard, history files, best weights and early stopping.

The checkpoint hook lives with the checkpoint format in checkpoint.py; the insights in insights/collect.py.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch

from . import reports
from .engine import Hook, LoopState
from .errors import UserError
from .metrics import format_metrics

log = logging.getLogger(__name__)


class Progress:
    """A bar in a terminal; plain lines every `interval` steps in SageMaker logs."""

    def __init__(self, total: int, desc: str, interval: int, enabled: bool, initial: int = 0):
        self.bar = None
        self.total, self.desc, self.interval, self.enabled = total, desc, interval, enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, step: int, **info) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=False)
        elif step % self.interval == 0 or step == self.total:
            print(f"{self.desc} step {step}/{self.total} " + " ".join(f"{k}={v:.4g}" for k, v in info.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class ProgressHook(Hook):
    """The train steps' progress (rank 0), with the running loss, lr and images/s."""

    def __init__(self):
        self.progress: Progress | None = None

    def before_epoch(self, loop: LoopState) -> None:
        self.progress = Progress(loop.steps_per_epoch, f"epoch {loop.epoch + 1}/{loop.hp.epochs}", loop.hp.log_interval,
                                 loop.rt.is_main, initial=loop.step)

    def after_step(self, loop: LoopState) -> None:
        if not loop.rt.is_main or not (loop.at_interval or self.progress.bar is not None):
            return
        loop.sync()  # a bar shows the running loss every step: this rank only, no collective
        p = loop.partial
        self.progress.update(loop.step, loss=p["loss"] / max(1.0, p["seen"]), lr=loop.optimizer.param_groups[0]["lr"],
                             img_s=p["seen"] * loop.rt.world_size / max(1e-9, p["data_wait"] + p["compute"]))

    def after_epoch(self, loop: LoopState) -> None:
        self.close()

    def after_train(self, loop: LoopState) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


class DivergenceGuard(Hook):
    """Stops a run whose training or validation loss runs away, finite or not; no model is written then.

    The reason has no "=": failure reasons are escaped so that they never read as metric lines.

    It sits after the history writer, so the epoch that diverged is in history.json and the insights report.
    """

    def __init__(self, num_classes: int):
        from .divergence import DivergenceDetector
        self.detector = DivergenceDetector(num_classes)

    def after_step(self, loop: LoopState) -> None:
        if not loop.at_interval:
            return
        loop.sync()
        self._stop_if(loop, self.detector.update(loop.epoch, loop.partial["loss"], loop.partial["seen"]),
                      f"epoch {loop.epoch + 1} step {loop.step}")

    def after_epoch(self, loop: LoopState) -> None:
        row = loop.history[-1]
        self._stop_if(loop, self.detector.check_validation(row["valid_loss"], row["valid_accuracy"]),
                      f"epoch {row['epoch']} validation")

    @staticmethod
    def _stop_if(loop: LoopState, diverged: str | None, where: str) -> None:
        if not diverged:
            return
        from .divergence import suggested_lr
        from .hyperparams import FIELDS
        hp = loop.hp
        now = f"lr {hp.lr:g}" + (f", head-lr {hp.head_lr:g}" if hp.head_lr else "")
        try_lr = f"{suggested_lr(hp.lr, FIELDS['lr'].default):g}"
        raise UserError(f"training diverged at {where}: {diverged}; no model was written; "
                        f"learning rate too high ({now})? try --lr {try_lr} (in a SageMaker job: lr {try_lr})")

    def state_dict(self) -> dict:
        return self.detector.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state)


class MetricLines(Hook):
    """The fixed `epoch=N/M train_loss=...` lines SageMaker's metric_definitions read (rank 0)."""

    def after_epoch(self, loop: LoopState) -> None:
        if loop.rt.is_main:
            row = loop.history[-1]
            print(format_metrics(f"epoch={row['epoch']}/{loop.hp.epochs}", {k: row[k] for k in
                  ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch_seconds")}), flush=True)


class TensorBoardHook(Hook):
    def __init__(self, logdir: Path):
        self.logdir, self.writer = logdir, None

    def before_train(self, loop: LoopState) -> None:
        if loop.rt.is_main:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.logdir))

    def after_epoch(self, loop: LoopState) -> None:
        if self.writer is not None:
            row = loop.history[-1]
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])

    def after_train(self, loop: LoopState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class HistoryWriter(Hook):
    """history.json/csv after every epoch, so a stopped job keeps them; learning curves at the end (rank 0)."""

    def __init__(self, output_data_dir: Path):
        self.out = Path(output_data_dir)

    def after_epoch(self, loop: LoopState) -> None:
        if loop.rt.is_main:
            reports.write_history(self.out, loop.history)

    def after_train(self, loop: LoopState) -> None:
        if loop.rt.is_main and loop.history:
            reports.write_history(self.out, loop.history)
            reports.plot_learning_curves(loop.history, self.out / reports.LEARNING_CURVES_PNG)


class BestWeights(Hook):
    """Keeps the weights of the lowest validation loss; ends training after `early-stopping-patience` epochs without one."""

    def __init__(self, patience: int):
        self.patience = patience
        self.valid_loss, self.epoch, self.weights, self.bad_epochs = math.inf, -1, None, 0

    def _exhausted(self) -> bool:
        return self.bad_epochs >= self.patience > 0

    def before_train(self, loop: LoopState) -> None:
        if self._exhausted() and loop.epoch < loop.hp.epochs:  # a resumed job that had already stopped early
            log.info("the run already finished (early stopping after %d of %d epochs): no training; its best weights "
                     "are evaluated and written", loop.epoch, loop.hp.epochs)
            loop.finish_early = True

    def after_epoch(self, loop: LoopState) -> None:
        row = loop.history[-1]
        if row["valid_loss"] < self.valid_loss:
            self.valid_loss, self.epoch, self.bad_epochs = row["valid_loss"], row["epoch"], 0
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in loop.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        if self._exhausted():
            log.info("early stopping: no better valid_loss for %d epochs (best at epoch %d)", self.bad_epochs, self.epoch)
            loop.finish_early = True

    def restore(self, model: torch.nn.Module) -> None:
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def state_dict(self) -> dict:
        return {"valid_loss": self.valid_loss, "epoch": self.epoch, "weights": self.weights, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.valid_loss, self.epoch, self.weights, self.bad_epochs = (state["valid_loss"], state["epoch"], state["weights"],
                                                                          state["bad_epochs"])
