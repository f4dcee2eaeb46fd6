"""Planted faults in real tiny trainings: each fires its rule; a healthy run fires no debugger rule.

ResNet18 from scratch at 32 px on generated shapes, in this process (no second torch import).
Faults are planted from the test only: hyperparameters (huge lr, lr ~ 0), the dataset's make-up,
and monkeypatched code (a loader that sleeps, a forward that stalls, a badly initialised layer).
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest
import torch
from torchvision.models.resnet import ResNet

from imgcls import cli, data
from imgcls.hyperparams import parse_hyperparameters
from imgcls.presets import TrainPreset
from imgcls.sample_data import make_sample_dataset
from imgcls.train import JobPaths, train

DEBUGGER_RULES = ("VanishingGradient", "ExplodingTensor", "LossNotDecreasing", "Overfit", "Overtraining",
                  "PoorWeightInitialization", "WeightUpdateRatio", "ClassImbalance", "DeadRelu")
TINY = {"backbone": "resnet18", "weights": "none", "image-size": 32, "batch-size": 8, "workers": 0, "warmup-epochs": 0,
        "early-stopping-patience": 0, "log-interval": 1000}
# The test's loader wrapper sleeps when this is set: "F" makes every training batch wait F times a step's
# compute (the median time between batches so far), "F@N" only every N-th batch. Relative, so a busy
# machine, whose steps take ten times longer, still gets the planted pattern.
SLEEP_ENV = "IMGCLS_TEST_LOADER_SLEEP"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """4 classes x 24 train / 8 valid images of 40 px."""
    return make_sample_dataset(tmp_path_factory.mktemp("faults") / "shapes", num_classes=4, per_class=(24, 8, 2), image_size=40)


def run_job(out: Path, dataset: Path, **hyperparameters) -> dict:
    """Train in this process; the job's own insights.json, as {rule: finding}."""
    hp = parse_hyperparameters({**TINY, **hyperparameters})
    torch.set_num_threads(2)
    paths = JobPaths(model_dir=out / "model", output_data_dir=out / "data", checkpoint_dir=out / "checkpoints",
                     tensorboard_dir=None, channels={"train": dataset})
    train(hp, paths)
    return findings(out)


def findings(out: Path) -> dict:
    facts = json.loads((out / "data" / "insights.json").read_text())
    return {rule["rule"]: rule for rule in facts["rules"]}


def fired(result: dict) -> set[str]:
    return {name for name, rule in result.items() if rule["triggered"]}


@pytest.fixture
def sleepy_loader(monkeypatch):
    """Training batches take longer to load when SLEEP_ENV says so (evaluation images do not)."""
    load, batch = data.ImageFiles.__getitem__, TINY["batch-size"]
    state = {"calls": 0, "last": None, "gaps": []}

    def slow_getitem(self, key):
        spec = os.environ.get(SLEEP_ENV, "")
        if spec and isinstance(self.preset, TrainPreset):
            n, state["calls"] = state["calls"], state["calls"] + 1
            if n % batch == 0:  # the first image of a batch: the time since the last image was the step's compute
                if state["last"] is not None:
                    state["gaps"].append(time.perf_counter() - state["last"])
                factor, _, every = spec.partition("@")
                if state["gaps"] and (not every or (n // batch) % int(every) == int(every) - 1):
                    time.sleep(float(factor) * statistics.median(state["gaps"]))
        item = load(self, key)
        if isinstance(self.preset, TrainPreset):
            state["last"] = time.perf_counter()
        return item

    monkeypatch.setattr(data.ImageFiles, "__getitem__", slow_getitem)
    return monkeypatch


def test_healthy_run_fires_no_debugger_rule(shapes, tmp_path):
    result = run_job(tmp_path, shapes, epochs=3, lr=2e-3)
    assert set(DEBUGGER_RULES) <= set(result)
    assert fired(result) & set(DEBUGGER_RULES) == set(), {k: result[k]["message"] for k in fired(result)}
    for name in DEBUGGER_RULES:
        assert result[name]["applicable"], (name, result[name]["message"])
    assert (tmp_path / "data" / "report.html").is_file() and (tmp_path / "model" / "model.pt").is_file()


def test_huge_lr_explodes_and_stops_the_job(shapes, tmp_path):
    out = tmp_path / "output"
    rc = cli.main(["train", "--data", str(shapes), "--model-dir", str(tmp_path / "model"), "--output-dir", str(out),
                   *[f"--{k}={v}" for k, v in TINY.items()], "--epochs=3", "--optimizer=sgd", "--lr=10", "--amp=off"])
    assert rc != 0
    reason = (out / "failure").read_text()
    # whichever sees it first: the rule at the first non-finite tensor, or the divergence guard at a runaway finite loss
    assert ("ExplodingTensor" in reason or "training diverged at epoch 1" in reason) and "step" in reason, reason
    assert not (tmp_path / "model" / "model.pt").exists()  # no model from diverged weights
    rule = findings(out)["ExplodingTensor"]
    assert rule["applicable"] and (rule["triggered"] and rule["stop"] or "ExplodingTensor" not in reason)
    steps = json.loads((out / "data" / "insights.json").read_text())["job"]["steps"]
    assert steps < 3 * 12, "training should stop at the first non-finite step, not run on"


def test_zero_lr_loss_not_decreasing(shapes, tmp_path):
    result = run_job(tmp_path, shapes, epochs=2, lr=1e-7, **{"head-lr": 1e-7})
    assert "LossNotDecreasing" in fired(result), result["LossNotDecreasing"]["message"]


def test_badly_initialised_layer(shapes, tmp_path, monkeypatch):
    init = ResNet.__init__

    def badly_initialised(self, *args, **kwargs):
        init(self, *args, **kwargs)
        with torch.no_grad():
            self.layer2[0].bn1.weight.mul_(1000.0)  # that ReLU's input variance grows a million times

    monkeypatch.setattr(ResNet, "__init__", badly_initialised)
    result = run_job(tmp_path, shapes, epochs=1)
    rule = result["PoorWeightInitialization"]
    assert rule["triggered"] and "layer2.0.relu" in rule["message"], rule["message"]


def test_tiny_train_set_overfits_and_overtrains(tmp_path):
    """Two images per class, no augmentation, many epochs: memorised, and the valid loss stops falling."""
    dataset = make_sample_dataset(tmp_path / "tiny", num_classes=4, per_class=(2, 8, 2), image_size=40)
    result = run_job(tmp_path / "job", dataset, epochs=14, lr=2e-3, scheduler="constant", hflip=False,
                     **{"label-smoothing": 0.0, "crop-scale": 1.0})
    assert {"Overfit", "Overtraining"} <= fired(result), {k: result[k]["message"] for k in ("Overfit", "Overtraining")}


def test_one_class_twenty_times_the_others(tmp_path):
    dataset = make_sample_dataset(tmp_path / "skewed", num_classes=4, per_class=(40, 4, 2), image_size=40)
    for folder in sorted((dataset / "train").iterdir())[1:]:
        for image in sorted(folder.iterdir())[2:]:
            image.unlink()  # 40 vs 2, 2, 2
    result = run_job(tmp_path / "job", dataset, epochs=1, **{"max-steps-per-epoch": 2})
    rule = result["ClassImbalance"]
    assert rule["triggered"] and "20x" in rule["message"], rule["message"]


def test_sleeping_loader_is_input_bound(shapes, tmp_path, sleepy_loader):
    sleepy_loader.setenv(SLEEP_ENV, "2")  # every batch waits twice a step's compute
    result = run_job(tmp_path, shapes, epochs=1)
    assert {"CPUBottleneck", "Dataloader"} <= fired(result), {k: result[k]["message"] for k in ("CPUBottleneck", "Dataloader")}
    assert result["CPUBottleneck"]["details"]["data_wait_share"] > 0.5


def test_long_data_stalls_are_step_outliers_named_data_wait(shapes, tmp_path, sleepy_loader):
    sleepy_loader.setenv(SLEEP_ENV, "15@4")  # every 4th batch waits fifteen steps' worth: 3 of 12 steps
    result = run_job(tmp_path, shapes, epochs=1, StepOutlier_n_outliers=1)
    rule = result["StepOutlier"]
    assert rule["triggered"], rule["message"]
    causes = rule["details"]["cause"]
    assert causes and set(causes.values()) == {"data"}, causes


def test_long_compute_stalls_are_step_outliers_named_forward(shapes, tmp_path, monkeypatch):
    forward, seconds = ResNet._forward_impl, []

    def stalling_forward(self, x):
        if not self.training:
            return forward(self, x)
        if len(seconds) % 4 == 3:  # every 4th training forward stalls for fifteen forwards' worth: 3 of 12 steps
            time.sleep(15 * statistics.median(seconds[1:] or seconds))
        start = time.perf_counter()
        out = forward(self, x)
        seconds.append(time.perf_counter() - start)
        return out

    monkeypatch.setattr(ResNet, "_forward_impl", stalling_forward)
    result = run_job(tmp_path, shapes, epochs=1, StepOutlier_n_outliers=1)
    rule = result["StepOutlier"]
    assert rule["triggered"], rule["message"]
    assert set(rule["details"]["cause"].values()) == {"forward"}, rule["details"]["cause"]
