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
from .metrics import format_metrics

log = logging.getLogger(__name__)


class ProgressHook(Hook):
    """A bar in a terminal; plain lines every `log-interval` steps in SageMaker logs (rank 0)."""

    def __init__(self):
        self.bar = None

    def before_epoch(self, loop: LoopState) -> None:
        if loop.rt.is_main and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=loop.steps_per_epoch, initial=loop.step, desc=self._desc(loop), leave=False, dynamic_ncols=True)

    @staticmethod
    def _desc(loop: LoopState) -> str:
        return f"epoch {loop.epoch + 1}/{loop.hp.epochs}"

    def after_step(self, loop: LoopState) -> None:
        if not loop.rt.is_main or not (loop.at_interval or self.bar is not None):
            return
        loop.sync()  # a bar shows the running loss every step: this rank only, no collective
        p = loop.partial
        info = {"loss": p["loss"] / max(1.0, p["seen"]), "lr": loop.optimizer.param_groups[0]["lr"],
                "img_s": p["seen"] * loop.rt.world_size / max(1e-9, p["data_wait"] + p["compute"])}
        if self.bar is not None:
            self.bar.update(loop.step - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in info.items()}, refresh=False)
        else:
            print(f"{self._desc(loop)} step {loop.step}/{loop.steps_per_epoch} " + " ".join(f"{k}={v:.4g}" for k, v in info.items()), flush=True)

    def after_epoch(self, loop: LoopState) -> None:
        self.close()

    def after_train(self, loop: LoopState) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
        loop.finish_early = loop.finish_early or self._exhausted()  # a resumed job that had already stopped

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
