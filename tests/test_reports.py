"""imgcls.reports: history files, learning curves and confusion matrices written for people."""
from __future__ import annotations

import csv
import html
import json
import logging
import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from conftest import FAST_TRAIN_ARGS, run_imgcls
from datasets import AWKWARD_CLASS_NAMES, rename_classes
from imgcls import reports
from imgcls.figures import literal_text
from imgcls.hyperparams import parse_hyperparameters
from imgcls.insights import report as insights_report
from imgcls.reports import (
    HISTORY_COLUMNS,
    confusion_matrix,
    plot_learning_curves,
    write_confusion_matrix,
    write_history,
)
from imgcls.sample_data import make_sample_dataset
from imgcls.train import JobPaths, train


def assert_sane_png(path, min_side=300, max_side=3000):
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert min_side <= width <= max_side and min_side <= height <= max_side, img.size
        # More than a blank canvas: a plot has axes, text and coloured lines or cells.
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 20


def make_history(epochs=6):
    history = []
    for e in range(1, epochs + 1):
        history.append({"epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.3 + 0.1 * e,
                        "valid_loss": 2.2 / e + 0.05 * max(0, e - 4) ** 2, "valid_accuracy": 0.25 + 0.08 * e,
                        "lr": 1e-3 * 0.5 ** (e // 3), "epoch_seconds": 10.0 + e, "images_per_sec": 400.0})
    return history


# --- confusion_matrix ----------------------------------------------------------------------------

def test_confusion_matrix_counts_true_rows_predicted_columns():
    targets = [0, 0, 1, 2, 2, 2]
    preds = [0, 1, 1, 2, 0, 2]
    expected = np.array([[1, 1, 0],
                         [0, 1, 0],
                         [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(targets, preds, 3), expected)
    from_torch = confusion_matrix(torch.tensor(targets), torch.tensor(preds), 3)
    np.testing.assert_array_equal(from_torch, expected)
    assert np.issubdtype(from_torch.dtype, np.integer)


def test_confusion_matrix_accepts_batched_shapes_and_empty_input():
    targets = torch.tensor([[0, 1], [1, 1]])
    preds = np.array([[0, 1], [0, 1]])
    np.testing.assert_array_equal(confusion_matrix(targets, preds, 2), [[1, 0], [1, 2]])
    np.testing.assert_array_equal(confusion_matrix([], [], 4), np.zeros((4, 4)))


@pytest.mark.parametrize("targets, preds, message", [
    ([0, 1, 2], [0, 1], "differ in length"),
    ([0, 3], [0, 1], r"targets hold class indices outside 0\.\.2"),
    ([0, 1], [-1, 1], r"preds hold class indices outside 0\.\.2"),
    ([0.5, 1.0], [0, 1], "must be class indices"),
])
def test_confusion_matrix_rejects_bad_input(targets, preds, message):
    with pytest.raises(ValueError, match=message):
        confusion_matrix(targets, preds, 3)


# --- write_confusion_matrix ----------------------------------------------------------------------

def read_csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_confusion_matrix_csv_and_png(tmp_path):
    names = ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier"]
    cm = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # the last class is absent from the data
    csv_path, png_path = write_confusion_matrix(cm, names, tmp_path / "out")

    assert csv_path == tmp_path / "out" / "confusion_matrix.csv"
    assert png_path == tmp_path / "out" / "confusion_matrix.png"
    rows = read_csv_rows(csv_path)
    assert rows[0][1:] == names
    assert [r[0] for r in rows[1:]] == names
    np.testing.assert_array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), cm)
    assert_sane_png(png_path)


def test_confusion_matrix_prefix_names_both_files(tmp_path):
    csv_path, png_path = write_confusion_matrix(np.eye(2, dtype=int), ["a", "b"], tmp_path, prefix="test_cm")
    assert (csv_path.name, png_path.name) == ("test_cm.csv", "test_cm.png")
    assert csv_path.is_file() and png_path.is_file()


def test_133_class_matrix_stays_a_readable_size(tmp_path):
    rng = np.random.default_rng(0)
    n = 133
    names = [f"{i + 1:03d}.Breed_{i}" for i in range(n)]
    targets = rng.integers(0, n, 4000)
    preds = np.where(rng.random(4000) < 0.7, targets, rng.integers(0, n, 4000))
    cm = confusion_matrix(targets, preds, n)

    csv_path, png_path = write_confusion_matrix(cm, names, tmp_path)

    rows = read_csv_rows(csv_path)
    assert len(rows) == n + 1 and rows[0][1:] == names
    np.testing.assert_array_equal(np.array([[int(v) for v in r[1:]] for r in rows[1:]]), cm)
    assert_sane_png(png_path, min_side=1000, max_side=2600)


def test_confusion_matrix_rejects_mismatched_names_and_fractions(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(2, 2\) does not match 3 class names"):
        write_confusion_matrix(np.zeros((2, 2), dtype=int), ["a", "b", "c"], tmp_path)
    with pytest.raises(ValueError, match="integer counts"):
        write_confusion_matrix(np.full((2, 2), 0.5), ["a", "b"], tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- history -------------------------------------------------------------------------------------

def test_history_round_trips_through_json_and_csv(tmp_path):
    history = make_history()
    json_path = write_history(tmp_path, history)

    assert json_path == tmp_path / "history.json"
    assert json.loads(json_path.read_text()) == history
    with open(tmp_path / "history.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HISTORY_COLUMNS
        rows = list(reader)
    assert len(rows) == len(history)
    for row, entry in zip(rows, history):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(entry)


def test_history_with_missing_none_tensor_and_nan_values(tmp_path):
    history = [
        {"epoch": 1, "train_loss": torch.tensor(1.5), "train_accuracy": np.float32(0.25), "valid_loss": None},
        {"epoch": 2, "train_loss": float("nan"), "lr": 0.01, "grad_norm": 3.0},
    ]
    json_path = write_history(tmp_path, history)

    assert json.loads(json_path.read_text()) == [
        {"epoch": 1, "train_loss": 1.5, "train_accuracy": 0.25, "valid_loss": None},
        {"epoch": 2, "train_loss": None, "lr": 0.01, "grad_norm": 3.0},  # NaN is not valid JSON
    ]
    with open(tmp_path / "history.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == HISTORY_COLUMNS + ["grad_norm"]
        first, second = list(reader)
    assert first["train_loss"] == "1.5" and first["valid_loss"] == "" and first["lr"] == ""
    assert second["train_loss"] == "" and second["grad_norm"] == "3.0"


# --- learning curves -----------------------------------------------------------------------------

def test_learning_curves_png(tmp_path):
    out = plot_learning_curves(make_history(), tmp_path / "plots" / "learning_curves.png")
    assert out == tmp_path / "plots" / "learning_curves.png"
    assert_sane_png(out)


@pytest.mark.parametrize("history", [
    [],
    [{"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.6}],  # one epoch, no validation
    [{"train_loss": 1.0, "valid_loss": None}, {"train_loss": 0.8, "valid_loss": 0.7, "valid_accuracy": 55.0}],
    [{"epoch": 1, "train_loss": float("nan"), "valid_loss": math.inf}],
], ids=["empty", "single-epoch", "gaps-and-percent-accuracy", "diverged"])
def test_learning_curves_survive_sparse_history(tmp_path, history):
    # The plot is drawn at the end of training: odd histories must not fail the job.
    assert_sane_png(plot_learning_curves(history, tmp_path / "curves.png"))


# --- user strings in figures ---------------------------------------------------------------------

def _pixels(**text) -> np.ndarray:
    fig = Figure(figsize=(8, 1))
    canvas = FigureCanvasAgg(fig)
    fig.text(0.01, 0.5, **text)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())


@pytest.mark.parametrize("name", [*AWKWARD_CLASS_NAMES, "a\\$b$", "$", "$$", "\\$"])
def test_literal_text_is_drawn_as_typed(name):
    # The same pixels as matplotlib's own plain-text mode: no mathtext, no dropped backslash or dollar.
    assert np.array_equal(_pixels(s=literal_text(name)), _pixels(s=name, parse_math=False))


def test_confusion_matrix_draws_class_names_matplotlib_reads_as_math(tmp_path, caplog):
    n = len(AWKWARD_CLASS_NAMES)
    cm = np.eye(n, dtype=int) * 3 + 1
    with caplog.at_level(logging.WARNING):
        csv_path, png_path = write_confusion_matrix(cm, AWKWARD_CLASS_NAMES, tmp_path)
    assert read_csv_rows(csv_path)[0][1:] == AWKWARD_CLASS_NAMES
    assert_sane_png(png_path)
    assert "could not draw" not in caplog.text


def test_training_with_awkward_class_names_succeeds_with_its_plots(tmp_path):
    data = rename_classes(make_sample_dataset(tmp_path / "data", num_classes=len(AWKWARD_CLASS_NAMES), per_class=(4, 2, 2),
                                              image_size=64), AWKWARD_CLASS_NAMES)
    proc = run_imgcls("train", "--data", data, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "output",
                      "--epochs", "1", *FAST_TRAIN_ARGS)  # fails the test unless it exits 0

    labels = json.loads((tmp_path / "model" / "labels.json").read_text())
    assert [labels[str(i)] for i in range(len(labels))] == AWKWARD_CLASS_NAMES
    assert (tmp_path / "model" / "model.pt").is_file()
    out = tmp_path / "output" / "data"
    assert_sane_png(out / "confusion_matrix.png")
    assert_sane_png(out / "learning_curves.png")
    assert "could not draw" not in proc.stderr
    facts = json.loads((out / "insights.json").read_text())
    assert "section_errors" not in facts
    page = (out / "report.html").read_text()
    for name in AWKWARD_CLASS_NAMES:
        assert html.escape(name) in page, name
    assert "<b>&amp; co" not in page  # markup in a name stays text


def test_a_figure_that_fails_leaves_the_job_successful_and_says_what_it_could_not_draw(tmp_path, monkeypatch, caplog):
    def planted(*args, **kwargs):
        raise RuntimeError("planted\nover two lines " + "x" * 5000)

    monkeypatch.setattr(reports, "_confusion_figure", planted)
    monkeypatch.setattr(reports, "_series", planted)  # the learning curves
    monkeypatch.setattr(insights_report, "_timeline_chart", planted)
    hp = parse_hyperparameters({"backbone": "resnet18", "weights": "none", "image-size": 32, "batch-size": 8, "workers": 0,
                                "epochs": 1, "warmup-epochs": 0, "log-interval": 1000})
    paths = JobPaths(model_dir=tmp_path / "model", output_data_dir=tmp_path / "data", checkpoint_dir=tmp_path / "checkpoints",
                     tensorboard_dir=None,
                     channels={"train": make_sample_dataset(tmp_path / "shapes", num_classes=2, per_class=(8, 4, 2), image_size=40)})
    with caplog.at_level(logging.INFO):
        train(hp, paths)  # no exception: the job succeeds

    assert (tmp_path / "model" / "model.pt").is_file()
    out = tmp_path / "data"
    assert (out / "confusion_matrix.csv").is_file()
    for png in ("confusion_matrix.png", "learning_curves.png"):  # a placeholder that says what went wrong
        with Image.open(out / png) as img:
            assert img.format == "PNG"
    notes = [r.getMessage() for r in caplog.records if "could not draw" in r.getMessage()]
    assert sorted(n.split(":")[0] for n in notes) == ["could not draw Job summary", "could not draw the confusion matrix",
                                                      "could not draw the learning curves"], notes
    for note in notes:  # one line each, bounded, naming the reason
        assert "\n" not in note and len(note) < 400 and "RuntimeError: planted over two lines xxx" in note
    page = (out / "report.html").read_text()
    assert "could not draw Job summary: RuntimeError: planted over two lines" in page and "x" * 1000 not in page
    assert "Loss and accuracy" in page and "data:image/png;base64," in page  # the rest of the report is there
