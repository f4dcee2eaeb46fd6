"""Training through the CLI: artifacts, outputs, metric lines, data hygiene, weights and resume."""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import FAST_TRAIN_ARGS, run_imgcls
from datasets import awkward_images, broken_files, write_digits_dataset
from imgcls.artifacts import load_model_dir
from imgcls.metrics import METRIC_DEFINITIONS
from imgcls.models import build_model, torchvision_cache_file


def test_training_writes_the_model_contract(trained_model_dir):
    model, names, config = load_model_dir(trained_model_dir)
    assert names == ["Red_circle", "Blue_square", "Green_triangle", "Yellow_cross"]  # "001." prefixes gone
    assert config["backbone"] == "resnet18" and config["image_size"] == 64 and config["num_classes"] == 4
    assert config["mean"] == pytest.approx([0.485, 0.456, 0.406]) and config["resize_size"] == 73
    state = torch.load(trained_model_dir / "model.pt", weights_only=True)
    assert state["fc.weight"].shape == (4, 512)
    # it learned something: 4 classes, chance is 25%
    assert config["metrics"]["test_accuracy"] >= 0.5


def test_outputs_for_people(trained_model_dir):
    out = trained_model_dir.parent / "output"
    history = json.loads((out / "data" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    header, *rows = (out / "data" / "history.csv").read_text().splitlines()
    assert header.split(",")[:5] == ["epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy"]
    assert float(rows[-1].split(",")[4]) == pytest.approx(history[-1]["valid_accuracy"])
    for name in ("learning_curves.png", "confusion_matrix.png"):
        with Image.open(out / "data" / name) as img:
            assert img.size[0] > 300
    rows = (out / "data" / "confusion_matrix.csv").read_text().splitlines()
    assert len(rows) == 5 and "Red_circle" in rows[0]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_metric_regexes_match_the_real_output(trained_model_dir):
    log = (trained_model_dir.parent / "train.log").read_text()
    history = json.loads((trained_model_dir.parent / "output" / "data" / "history.json").read_text())
    config = json.loads((trained_model_dir / "model_config.json").read_text())
    found = {d["Name"]: [float(v) for v in re.findall(d["Regex"], log)] for d in METRIC_DEFINITIONS}
    for name in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch_seconds"):
        assert found[name] == pytest.approx([row[name] for row in history], rel=1e-5), name
    assert found["test_loss"] == pytest.approx([config["metrics"]["test_loss"]], rel=1e-5)
    assert found["test_accuracy"] == pytest.approx([config["metrics"]["test_accuracy"]], rel=1e-5)
    # the kept epoch's values, printed once at the end: what tuning jobs rank by (a tuner keeps a job's last match)
    best = config["metrics"]["best_epoch"]
    assert found["best_valid_loss"] == pytest.approx([config["metrics"]["best_valid_loss"]], rel=1e-5)
    assert found["best_valid_accuracy"] == pytest.approx([history[best - 1]["valid_accuracy"]], rel=1e-5)


def test_digits_from_scratch_reach_95_percent(tmp_path):
    """Real data: scikit-learn's handwritten digits, trained from scratch on the CPU."""
    data = write_digits_dataset(tmp_path / "digits")
    run_imgcls("train", "--data", data, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "out",
               "--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "64",
               "--epochs", "12", "--lr", "0.003", "--hflip", "false", "--crop-scale", "0.7", "--workers", "0",
               "--amp", "off", timeout=840)  # fp32: at 32 px bf16 autocast costs more than it saves on a CPU
    metrics = json.loads((tmp_path / "model" / "model_config.json").read_text())["metrics"]
    assert metrics["test_accuracy"] >= 0.95, metrics


def test_bad_files_are_skipped_and_listed_awkward_ones_used(tmp_path, sample_dataset):
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    klass = data / "train" / "001.Red_circle"
    good = next(klass.glob("*.jpg"))
    with Image.open(good) as img:
        for name, blob in awkward_images(img.convert("RGB")).items():
            (klass / name).write_bytes(blob)
    for name, blob in broken_files(good.read_bytes()).items():
        (klass / name).write_bytes(blob)
    proc = run_imgcls("train", "--data", data, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "out",
                      "--epochs", "1", *FAST_TRAIN_ARGS)
    skipped = json.loads((tmp_path / "out" / "data" / "skipped_files.json").read_text())
    assert sorted(Path(s["path"]).name for s in skipped) == sorted(broken_files(b"x"))
    assert "skipped 4 unreadable file(s)" in proc.stderr
    assert "train 102" in proc.stderr  # 96 + the 6 awkward images


def test_weights_file_is_loaded_and_head_only_keeps_the_body(tmp_path, sample_dataset):
    """We cannot download ImageNet weights here, so we make a weights file and go through the real loading code."""
    torch.manual_seed(7)
    reference = build_model("resnet18", 1000).state_dict()  # a 1000-class file, like torchvision's
    weights = tmp_path / "resnet18-made-here.pth"
    torch.save(reference, weights)
    run_imgcls("train", "--data", sample_dataset, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "out",
               "--epochs", "1", *FAST_TRAIN_ARGS[:-2], "--finetune", "head", "--weights", weights, "--head-lr", "0.01")
    trained = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert torch.equal(trained["layer3.0.conv1.weight"], reference["layer3.0.conv1.weight"])
    assert trained["fc.weight"].shape == (4, 512)


def test_baked_torchvision_cache_is_used_before_any_download(tmp_path, sample_dataset):
    torch_home = tmp_path / "torch"
    cached = torch_home / "hub" / "checkpoints" / torchvision_cache_file("resnet18").name
    cached.parent.mkdir(parents=True)
    reference = build_model("resnet18", 1000).state_dict()
    torch.save(reference, cached)
    run_imgcls("train", "--data", sample_dataset, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "out",
               "--epochs", "1", *FAST_TRAIN_ARGS[:-2], "--finetune", "head", "--weights", "imagenet",
               "--allow-download", "false", env={"TORCH_HOME": str(torch_home)})
    trained = torch.load(tmp_path / "model" / "model.pt", weights_only=True)
    assert torch.equal(trained["layer4.1.conv2.weight"], reference["layer4.1.conv2.weight"])


def test_a_pickle_that_is_not_plain_weights_is_refused(tmp_path, sample_dataset):
    evil = tmp_path / "evil.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(1), "payload": Path("/etc/passwd")}, evil)
    proc = run_imgcls("train", "--data", sample_dataset, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "out",
                      "--weights", evil, *FAST_TRAIN_ARGS[:2], check=False)
    assert proc.returncode == 2
    assert "cannot be loaded safely" in (tmp_path / "out" / "failure").read_text()
    assert not (tmp_path / "model").exists()


def _history(out: Path) -> list[dict]:
    return json.loads((out / "data" / "history.json").read_text())


def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, sample_dataset):
    args = ["--epochs", "3", *FAST_TRAIN_ARGS, "--batch-size", "8", "--log-interval", "1", "--deterministic", "true"]
    run_imgcls("train", "--data", sample_dataset, "--model-dir", tmp_path / "m_full", "--output-dir", tmp_path / "full", *args)

    out = tmp_path / "resumed"
    cmd = [sys.executable, "-m", "imgcls", "train", "--data", str(sample_dataset), "--model-dir", str(tmp_path / "m_res"),
           "--output-dir", str(out), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # wait until epoch 2 is part-way through
        seen.append(line)
        if line.startswith("epoch 2/3 step 5/"):
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "".join(seen[-20:])
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 2, rest
    assert "stopped by signal at epoch 2" in (out / "failure").read_text()
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved[-1].startswith("checkpoint-e0001-s") and saved[-1] != "checkpoint-e0001-s0000000.pt"  # mid-epoch state
    assert [row["epoch"] for row in torch.load(out / "checkpoints" / saved[-1], weights_only=True)["history"]] == [1]

    (out / "failure").unlink()
    resumed = run_imgcls("train", "--data", sample_dataset, "--model-dir", tmp_path / "m_res", "--output-dir", out, *args)
    assert "epoch=1/3" not in resumed.stdout  # epoch 1 was not redone
    full, res = _history(tmp_path / "full"), _history(out)
    assert [r["epoch"] for r in res] == [1, 2, 3]
    for a, b in zip(full, res):
        for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a["epoch"])


def test_two_process_ddp_on_cpu_with_gloo(tmp_path, sample_dataset):
    proc = run_imgcls("train", "--nproc-per-node", "2", "--data", sample_dataset, "--model-dir", tmp_path / "model",
                      "--output-dir", tmp_path / "out", "--epochs", "2", *FAST_TRAIN_ARGS)
    assert len(re.findall(r"^epoch=\d/2 ", proc.stdout, re.M)) == 2  # rank 0 alone prints metrics
    assert proc.stderr.count("model written to") == 1  # and writes artifacts
    model, names, config = load_model_dir(tmp_path / "model")
    assert config["num_classes"] == 4
    history = _history(tmp_path / "out")
    # both ranks' shards count: 96 train images / batch 16 per rank / 2 ranks = 3 steps of 32 images
    assert history[-1]["valid_accuracy"] > 0
    # insights: per-rank step times gathered at every epoch end (stragglers), written by rank 0 alone
    ranks = json.loads((tmp_path / "out" / "data" / "insights" / "raw" / "ranks.json").read_text())
    assert [(r["epoch"], r["rank"], r["steps"]) for r in ranks] == [(1, 0, 3), (1, 1, 3), (2, 0, 3), (2, 1, 3)]
    assert all(0 < r["p50"] <= r["max"] and r["mean"] <= r["max"] for r in ranks)
    assert len((tmp_path / "out" / "data" / "insights" / "raw" / "steps.jsonl").read_text().splitlines()) == 6
