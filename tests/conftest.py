"""Shared fixtures: generated datasets and a model that real training produced in this test session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgcls.sample_data import make_sample_dataset

REPO = Path(__file__).resolve().parents[1]

# Small and fast settings for CPU tests; the same flags users pass.
FAST_TRAIN_ARGS = ["--backbone", "resnet18", "--weights", "none", "--image-size", "64",
                   "--batch-size", "16", "--workers", "0", "--finetune", "all"]


def run_imgcls(*args, env=None, check=True, timeout=600, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"imgcls {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """4 classes of shapes, dogImages layout."""
    return make_sample_dataset(tmp_path_factory.mktemp("data") / "dogImages", num_classes=4, per_class=(24, 8, 8), image_size=80)


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory, sample_dataset) -> Path:
    """A model directory written by the real `imgcls train` (resnet18, 64 px, from scratch)."""
    out = tmp_path_factory.mktemp("trained")
    proc = run_imgcls("train", "--data", sample_dataset, "--model-dir", out / "model", "--output-dir", out / "output",
               "--epochs", "3", *FAST_TRAIN_ARGS)
    (out / "train.log").write_text(proc.stdout + proc.stderr)
    return out / "model"
