"""Divergence: a loss that runs away, finite or not, judged against chance as well as the run's own start (no torch here).

A too-high learning rate can drive the loss to 1e15 without ever reaching inf or NaN; the weights
are then useless. Two anchors make that visible early, even in a job with one progress check:

- chance: a classifier that predicts uniformly has a cross-entropy of ln(number of classes) (with
  label smoothing too). A loss 100x above it is never training; one 10x above it for a few checks
  in a row is not either.
- the run itself: the first interval's loss. The smoothed interval loss may not stay 10x above it.

The loop feeds the training side the running loss totals it reads at each progress check, and the
validation side each epoch's validation loss and accuracy.
"""
from __future__ import annotations

import math

FACTOR = 10.0       # times the starting level, or the chance level, the smoothed loss may not stay above
RUNAWAY = 100.0     # times the chance level no single check may reach
PATIENCE = 3        # consecutive checks above FACTOR (log intervals in logs; steps behind a progress bar)
SMOOTHING = 0.5     # weight of the previous smoothed value
MIN_START = 0.05    # floor of the starting level, so a near-zero first loss does not make noise look like divergence
CHANCE_ACCURACY = 1.5  # validation accuracy at most this many times 1/classes counts as chance


def chance_loss(num_classes: int) -> float:
    return math.log(max(2, num_classes))


class DivergenceDetector:
    def __init__(self, num_classes: int, factor: float = FACTOR, patience: int = PATIENCE, smoothing: float = SMOOTHING):
        self.num_classes, self.chance = num_classes, chance_loss(num_classes)
        self.factor, self.patience, self.smoothing = factor, patience, smoothing
        self.start: float | None = None
        self.smoothed: float | None = None
        self.checks_over = 0
        self._epoch, self._loss_total, self._seen_total = -1, 0.0, 0.0

    def _chance(self, loss: float) -> str:
        return f"{loss:.4g}, {loss / self.chance:.3g}x the chance level {self.chance:.3g} (ln {self.num_classes})"

    def update(self, epoch: int, loss_total: float, seen_total: float) -> str | None:
        """`loss_total`/`seen_total`: the epoch's running sum of per-sample losses and its sample count.

        Returns None while training is healthy, else the reason it diverged.
        """
        if epoch != self._epoch:  # the totals restart with each epoch
            self._epoch, self._loss_total, self._seen_total = epoch, 0.0, 0.0
        loss, seen = loss_total - self._loss_total, seen_total - self._seen_total
        if not math.isfinite(loss_total):
            return f"train loss is not finite ({loss_total})"
        if seen <= 0:
            return None
        self._loss_total, self._seen_total = loss_total, seen_total
        mean = loss / seen
        if mean > RUNAWAY * self.chance:
            return f"train loss {self._chance(mean)}"
        if self.start is None:
            self.start = self.smoothed = mean
        else:
            self.smoothed = self.smoothing * self.smoothed + (1 - self.smoothing) * mean
        limit = self.factor * min(max(self.start, MIN_START), self.chance)  # a start already far off is no baseline
        self.checks_over = self.checks_over + 1 if self.smoothed > limit else 0
        if self.checks_over >= self.patience:
            return (f"smoothed train loss {self.smoothed:.4g} above {limit:.4g} ({self.factor:g}x the lower of its starting "
                    f"level {self.start:.4g} and the chance level {self.chance:.3g}, ln {self.num_classes}) "
                    f"for {self.checks_over} consecutive checks")
        return None

    def check_validation(self, valid_loss: float, valid_accuracy: float) -> str | None:
        """An epoch's validation: not finite, a runaway, or far above chance loss with chance accuracy."""
        if not math.isfinite(valid_loss):
            return f"valid loss is not finite ({valid_loss})"
        at_chance = valid_accuracy <= CHANCE_ACCURACY / max(2, self.num_classes)
        if valid_loss > RUNAWAY * self.chance or (valid_loss > self.factor * self.chance and at_chance):
            return f"valid loss {self._chance(valid_loss)} (valid accuracy {valid_accuracy:.3g})"
        return None

    def state_dict(self) -> dict:
        return {"start": self.start, "smoothed": self.smoothed, "checks_over": self.checks_over,
                "epoch": self._epoch, "loss_total": self._loss_total, "seen_total": self._seen_total}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:  # a checkpoint from before the detector existed: start watching anew
            return
        self.start, self.smoothed, self.checks_over = state["start"], state["smoothed"], state["checks_over"]
        self._epoch, self._loss_total, self._seen_total = state["epoch"], state["loss_total"], state["seen_total"]


def suggested_lr(lr: float, default: float) -> float:
    """What to try next: the default where the run was above it, else a tenth."""
    return default if lr > default else lr / 10
