"""Divergence: a training loss that runs away from its starting level, finite or not (no torch here).

A too-high learning rate can drive the loss to 1e15 without ever reaching inf or NaN; the weights
are then useless. The loop feeds the detector the running loss totals it already reads at each
progress check; the detector compares an exponentially smoothed interval loss with the loss of the
first interval, and calls it divergence after PATIENCE consecutive checks above FACTOR times it.
Healthy runs, even noisy ones with warm restarts, stay far below that.
"""
from __future__ import annotations

import math

FACTOR = 10.0     # times the starting loss level
PATIENCE = 3      # consecutive checks above it (log intervals in logs; steps behind a progress bar)
SMOOTHING = 0.5   # weight of the previous smoothed value
MIN_START = 0.05  # floor of the starting level, so a near-zero first loss does not make noise look like divergence


class DivergenceDetector:
    def __init__(self, factor: float = FACTOR, patience: int = PATIENCE, smoothing: float = SMOOTHING):
        self.factor, self.patience, self.smoothing = factor, patience, smoothing
        self.start: float | None = None
        self.smoothed: float | None = None
        self.checks_over = 0
        self._epoch, self._loss_total, self._seen_total = -1, 0.0, 0.0

    def update(self, epoch: int, loss_total: float, seen_total: float) -> str | None:
        """`loss_total`/`seen_total`: the epoch's running sum of per-sample losses and its sample count.

        Returns None while training is healthy, else the reason it diverged.
        """
        if epoch != self._epoch:  # the totals restart with each epoch
            self._epoch, self._loss_total, self._seen_total = epoch, 0.0, 0.0
        loss, seen = loss_total - self._loss_total, seen_total - self._seen_total
        if not math.isfinite(loss_total):
            return f"loss is not finite ({loss_total})"
        if seen <= 0:
            return None
        self._loss_total, self._seen_total = loss_total, seen_total
        mean = loss / seen
        if self.start is None:
            self.start = self.smoothed = mean
            return None
        self.smoothed = self.smoothing * self.smoothed + (1 - self.smoothing) * mean
        limit = self.factor * max(self.start, MIN_START)
        self.checks_over = self.checks_over + 1 if self.smoothed > limit else 0
        if self.checks_over >= self.patience:
            return (f"smoothed loss {self.smoothed:.4g} above {self.factor:g}x its starting level {self.start:.4g} "
                    f"for {self.checks_over} consecutive checks")
        return None

    def state_dict(self) -> dict:
        return {"start": self.start, "smoothed": self.smoothed, "checks_over": self.checks_over,
                "epoch": self._epoch, "loss_total": self._loss_total, "seen_total": self._seen_total}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:  # a checkpoint from before the detector existed: start watching anew
            return
        self.start, self.smoothed, self.checks_over = state["start"], state["smoothed"], state["checks_over"]
        self._epoch, self._loss_total, self._seen_total = state["epoch"], state["loss_total"], state["seen_total"]
