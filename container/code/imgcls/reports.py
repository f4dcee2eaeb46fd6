"""Training outputs for people: epoch history (JSON + CSV), learning curves and a confusion matrix.

Written to SageMaker's output data dir (/opt/ml/output/data), which ends up in output.tar.gz.
Figures are drawn on matplotlib's Agg canvas directly, never through pyplot: no display is needed,
no global backend is switched and no figure is left registered in a long training process.
They are drawn after the model is written: a figure that fails becomes a placeholder PNG that
says why, and a warning, never a failed job.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from .artifacts import atomic_write_bytes, atomic_write_json
from .figures import could_not_draw, label_text, literal_text

log = logging.getLogger(__name__)

HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
LEARNING_CURVES_PNG = "learning_curves.png"
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "lr", "epoch_seconds",
                   "images_per_sec"]
# Beyond this many classes, per-class tick labels overlap into a black smear; the CSV has the names.
MAX_LABELLED_CLASSES = 40
# Up to this many classes each cell is big enough to print its percentage.
MAX_ANNOTATED_CLASSES = 15
DPI = 100


# --- history -------------------------------------------------------------------------------------

def _plain_value(value):
    """JSON-safe scalar: numpy/torch scalars become Python numbers, NaN and infinity become None."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _columns(history: list[dict]) -> list[str]:
    """The standard columns first, then any extra keys in the order they first appear."""
    extra = []
    for entry in history:
        extra += [k for k in entry if k not in HISTORY_COLUMNS and k not in extra]
    return HISTORY_COLUMNS + extra


def write_history(output_dir: str | Path, history: list[dict]) -> Path:
    """Write history.json (a list of per-epoch dicts) and history.csv; returns the JSON path.

    Missing keys and None are empty CSV cells; non-finite numbers (a diverged loss) are stored as null.
    """
    output_dir = Path(output_dir)
    rows = [{k: _plain_value(v) for k, v in entry.items()} for entry in history]
    json_path = output_dir / HISTORY_JSON
    atomic_write_json(json_path, rows)

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    atomic_write_bytes(output_dir / HISTORY_CSV, lambda f: f.write(text.getvalue().encode()))
    return json_path


# --- learning curves -----------------------------------------------------------------------------

def _series(history: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) for the entries that have a finite `key`."""
    epochs, values = [], []
    for i, entry in enumerate(history):
        value = _plain_value(entry.get(key))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            epoch = _plain_value(entry.get("epoch"))
            epochs.append(i + 1 if epoch is None else epoch)
            values.append(value)
    return epochs, values


def _png_bytes(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _note_figure(note: str) -> Figure:
    fig = Figure(figsize=(8, 2))
    fig.text(0.5, 0.5, literal_text(note), ha="center", va="center", wrap=True, color="dimgrey")
    return fig


def _draw_png(what: str, draw, out_png: Path) -> Path:
    """Write the figure `draw()` returns; if drawing fails, a placeholder saying so (writing errors still raise)."""
    try:
        png = _png_bytes(draw())
    except Exception as exc:  # matplotlib raises many types (mathtext, layout, fonts); the model is already written
        note = could_not_draw(what, exc)
        log.warning("%s", note)
        png = _png_bytes(_note_figure(note))
    out_png = Path(out_png)
    atomic_write_bytes(out_png, lambda f: f.write(png))
    return out_png


def plot_learning_curves(history: list[dict], out_png: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs valid, with the epoch of lowest valid loss marked."""
    return _draw_png("the learning curves", lambda: _learning_curves_figure(history), Path(out_png))


def _learning_curves_figure(history: list[dict]) -> Figure:
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2, sharex=True)
    panels = ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy"))
    for ax, metric, title in panels:
        for split, colour in (("train", "tab:blue"), ("valid", "tab:orange")):
            epochs, values = _series(history, f"{split}_{metric}")
            if epochs:
                ax.plot(epochs, values, marker="o", markersize=3, color=colour, label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)

    _, accuracies = _series(history, "train_accuracy")
    _, valid_accuracies = _series(history, "valid_accuracy")
    accuracies += valid_accuracies
    if accuracies:
        # Fractions (0..1) or already percentages (0..100): label the axis in % either way.
        acc_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0 if max(accuracies) <= 1.0 else 100.0))

    epochs, valid_losses = _series(history, "valid_loss")
    if valid_losses:
        best = int(np.argmin(valid_losses))
        best_epoch, best_loss = epochs[best], valid_losses[best]
        for ax, _, _ in panels:
            ax.axvline(best_epoch, color="tab:green", linestyle="--", linewidth=1,
                       label=f"best valid loss (epoch {best_epoch})")
        loss_ax.plot([best_epoch], [best_loss], marker="*", markersize=14, color="tab:green", zorder=3)
        loss_ax.annotate(f"{best_loss:.4g}", (best_epoch, best_loss), textcoords="offset points", xytext=(6, 8),
                         color="tab:green")
        acc_epochs, acc_values = _series(history, "valid_accuracy")
        if best_epoch in acc_epochs:
            best_acc = acc_values[acc_epochs.index(best_epoch)]
            acc_ax.plot([best_epoch], [best_acc], marker="*", markersize=14, color="tab:green", zorder=3)

    for ax, _, _ in panels:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
    return fig


# --- confusion matrix ----------------------------------------------------------------------------

def _as_int_array(values, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, possibly on a GPU
        values = values.detach().cpu().numpy()
    array = np.asarray(values).ravel()
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"{what} must be class indices (integers), got dtype {array.dtype}")
    return array.astype(np.int64)


def confusion_matrix(targets, preds, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes]: row = true class, column = predicted class. Torch or numpy inputs."""
    targets = _as_int_array(targets, "targets")
    preds = _as_int_array(preds, "preds")
    if targets.shape != preds.shape:
        raise ValueError(f"targets and preds differ in length: {targets.size} vs {preds.size}")
    for what, array in (("targets", targets), ("preds", preds)):
        if array.size and (array.min() < 0 or array.max() >= num_classes):
            raise ValueError(f"{what} hold class indices outside 0..{num_classes - 1}: "
                             f"min {array.min()}, max {array.max()}")
    flat = np.bincount(targets * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _row_normalised(cm: np.ndarray) -> np.ndarray:
    totals = cm.sum(axis=1, keepdims=True)
    # A class absent from the evaluation set gets an all-zero row rather than NaNs.
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)


def write_confusion_matrix(cm, class_names: list[str], output_dir: str | Path,
                           prefix: str = "confusion_matrix") -> tuple[Path, Path]:
    """Write <prefix>.csv (counts, class names as header row and first column) and <prefix>.png.

    The PNG shows each row normalised to the fraction of that true class, so rare and common
    classes are comparable; the figure grows with the number of classes.
    """
    cm = np.asarray(cm)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {n} class names")
    if not np.issubdtype(cm.dtype, np.integer):
        raise ValueError(f"confusion matrix must hold integer counts, got dtype {cm.dtype}")
    output_dir = Path(output_dir)

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["true \\ predicted", *class_names])
    for name, row in zip(class_names, cm):
        writer.writerow([name, *(int(v) for v in row)])
    csv_path = output_dir / f"{prefix}.csv"
    atomic_write_bytes(csv_path, lambda f: f.write(text.getvalue().encode()))

    png_path = _draw_png("the confusion matrix", lambda: _confusion_figure(cm, class_names), output_dir / f"{prefix}.png")
    return csv_path, png_path


def _confusion_figure(cm: np.ndarray, class_names: list[str]) -> Figure:
    n = len(class_names)
    labelled = n <= MAX_LABELLED_CLASSES
    # About 0.3 in per labelled class plus room for the names; 0.1 in per cell when unlabelled.
    side = min(max(6.0, 0.3 * n + 3.0), 16.0) if labelled else min(max(12.0, 0.1 * n + 2.0), 24.0)
    # Big figures are looked at scaled down: larger text keeps title and axes legible.
    text_size = "medium" if side < 12 else "x-large"
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    fractions = _row_normalised(cm)
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("fraction of the true class", fontsize=text_size)
    colorbar.ax.tick_params(labelsize=text_size)
    colorbar.formatter = PercentFormatter(xmax=1.0)
    colorbar.update_ticks()

    total = int(cm.sum())
    accuracy = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"Confusion matrix: {n} classes, {total} images, accuracy {accuracy:.1%}", fontsize=text_size)
    if labelled:
        labels = [label_text(name) for name in class_names]
        ax.set_xticks(range(n), labels, rotation=90, fontsize="small")
        ax.set_yticks(range(n), labels, fontsize="small")
        ax.set_xlabel("predicted class", fontsize=text_size)
        ax.set_ylabel("true class", fontsize=text_size)
    else:
        # Index ticks only; the names are in the CSV in the same order.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
        ax.tick_params(labelsize=text_size)
        ax.set_xlabel("predicted class (index, names in the CSV)", fontsize=text_size)
        ax.set_ylabel("true class (index, names in the CSV)", fontsize=text_size)

    if n <= MAX_ANNOTATED_CLASSES:
        for (i, j), fraction in np.ndenumerate(fractions):
            if cm[i, j]:
                ax.text(j, i, f"{fraction:.0%}", ha="center", va="center", fontsize="small",
                        color="white" if fraction > 0.5 else "black")
    return fig
