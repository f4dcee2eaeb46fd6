"""Training integrity: resume only the same job, no leftovers, clear full-disk and divergence reasons,
no forged metric lines, no symlink tricks (issue 7)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_imgcls
from imgcls.sample_data import make_sample_dataset

TINY_ARGS = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "8",
             "--workers", "0", "--log-interval", "2", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """3 classes of 8/4/4 images: a run of one epoch takes a few seconds."""
    return make_sample_dataset(tmp_path_factory.mktemp("tiny") / "data", num_classes=3, per_class=(8, 4, 4), image_size=40)


def _train(data, out, *args, check=True):
    return run_imgcls("train", "--data", data, "--model-dir", out / "model", "--output-dir", out / "output",
                      *TINY_ARGS, *args, check=check)


def _config(out):
    return json.loads((out / "model" / "model_config.json").read_text())


def _epochs_trained(proc) -> list[str]:
    return [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("epoch=")]


def test_rerun_with_other_hyperparameters_starts_fresh_and_says_why(tmp_path, tiny_dataset):
    _train(tiny_dataset, tmp_path, "--epochs", "1", "--image-size", "48")
    second = _train(tiny_dataset, tmp_path, "--epochs", "1", "--optimizer", "sgd")
    assert _epochs_trained(second) == ["epoch=1/1"]  # it trained, not 0 epochs
    assert "WARNING" in second.stderr and "image-size" in second.stderr and "starting fresh" in second.stderr
    stale = list((tmp_path / "output" / "checkpoints" / "stale").rglob("checkpoint-*.pt"))
    assert stale, "the other job's checkpoints are moved aside, not lost"
    config = _config(tmp_path)
    assert config["image_size"] == 32 and config["hyperparameters"]["optimizer"] == "sgd"


def test_finished_run_is_reported_as_finished_and_longer_run_continues(tmp_path, tiny_dataset):
    first = _train(tiny_dataset, tmp_path, "--epochs", "1")
    first_metrics = _config(tmp_path)["metrics"]
    again = _train(tiny_dataset, tmp_path, "--epochs", "1", "--log-interval", "5")  # log-interval cannot change the model
    assert _epochs_trained(again) == []
    assert "already finished" in again.stderr and "epoch 2" not in again.stderr
    assert _config(tmp_path)["metrics"] == pytest.approx(first_metrics)
    longer = _train(tiny_dataset, tmp_path, "--epochs", "2")
    assert _epochs_trained(longer) == ["epoch=2/2"]  # epoch 1 is not redone
    assert _config(tmp_path)["hyperparameters"]["epochs"] == 2
    shorter = _train(tiny_dataset, tmp_path, "--epochs", "1")  # a 2-epoch checkpoint cannot become a 1-epoch model
    assert _epochs_trained(shorter) == ["epoch=1/1"] and "starting fresh" in shorter.stderr
    assert "epoch=1/1" in first.stdout


def test_changed_data_starts_fresh(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    _train(data, tmp_path, "--epochs", "1")
    victim = sorted((data / "train").rglob("*.jpg"))[0]
    shutil.copy(victim, victim.with_name("copy_" + victim.name))
    second = _train(data, tmp_path, "--epochs", "1")
    assert _epochs_trained(second) == ["epoch=1/1"] and "data" in second.stderr and "starting fresh" in second.stderr


def test_a_later_successful_run_removes_a_stale_failure(tmp_path, tiny_dataset):
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "failure").write_text("an earlier run failed")
    proc = _train(tiny_dataset, tmp_path, "--epochs", "1", "--log-interval", "1")
    assert not (tmp_path / "output" / "failure").exists()
    # and (issue 7, CLI) the evaluation passes show progress, like training steps
    assert "valid 1/1 step 1/2" in proc.stdout and "test step 2/2" in proc.stdout, proc.stdout


def test_sagemaker_entry_removes_a_stale_failure(tmp_path, tiny_dataset):
    from test_sagemaker_contract import make_job, run_toolkit
    base = make_job(tmp_path / "ml", {"train": tiny_dataset},
                    {"backbone": "resnet18", "weights": "none", "image-size": "32", "batch-size": "8", "workers": "0", "epochs": "1"})
    (base / "output").mkdir()
    (base / "output" / "failure").write_text("an earlier job failed")
    proc = run_toolkit(base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()


# ---- checkpoint files: leftovers of killed writes, full disk

def _small_state(epoch: int, numel: int = 1000) -> dict:
    import torch
    return {"epoch": epoch, "step": 0, "model": {"w": torch.arange(numel, dtype=torch.float32)}, "job": None}


def test_temp_files_of_killed_checkpoint_writes_are_removed(tmp_path):
    from imgcls.checkpoint import list_checkpoints, resume_state, save_checkpoint
    # what artifacts.atomic_write_bytes leaves when SIGKILL lands mid-write
    leftover = tmp_path / ".checkpoint-e0003-s0000012.pt.k2j4h1.tmp"
    leftover.write_bytes(b"\0" * 4096)
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("not ours")
    save_checkpoint(tmp_path, _small_state(1))
    assert not leftover.exists() and unrelated.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-e0001-s0000000.pt"]
    leftover.write_bytes(b"\0" * 4096)  # killed again, then the job restarts
    resume_state(tmp_path, {"hyperparameters": {}, "class_names": [], "data": ""}, epochs=3)
    assert not leftover.exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 4 MB file system (needs root, as in CI's container); skips where mounting is not allowed."""
    import subprocess
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_names_the_path_and_the_space_and_keeps_older_checkpoints(small_tmpfs):
    import torch
    from imgcls.artifacts import DiskFullError
    from imgcls.checkpoint import list_checkpoints, save_checkpoint
    save_checkpoint(small_tmpfs, _small_state(1, numel=250_000))  # 1 MB: fits
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(small_tmpfs, _small_state(2, numel=1_500_000))  # 6 MB: does not
    message = str(caught.value)
    assert "\n" not in message
    assert f"disk full: writing {small_tmpfs}/checkpoint-e0002-s0000000.pt needs about 5.7 MB" in message
    assert "MB free on the file system of" in message and "inline_container" not in message
    assert [p.name for p in small_tmpfs.iterdir()] == ["checkpoint-e0001-s0000000.pt"]  # no temp file left
    assert torch.load(list_checkpoints(small_tmpfs)[0], weights_only=True)["epoch"] == 1


def test_full_disk_reported_by_a_writer_without_a_size_hint(tmp_path):
    import errno
    from imgcls.artifacts import DiskFullError, atomic_write_bytes
    target = tmp_path / "history.csv"
    target.write_text("the previous version")

    def writer(f):
        f.write(b"x" * 3 * 2**20)
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"disk full: writing .*history\.csv needs more than 3\.0 MB, .* MB free"):
        atomic_write_bytes(target, writer)
    assert target.read_text() == "the previous version" and [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_training_on_a_full_disk_fails_with_a_readable_reason(tmp_path, tiny_dataset, small_tmpfs):
    proc = _train(tiny_dataset, tmp_path, "--epochs", "1", "--checkpoint-dir", small_tmpfs, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    reason = (tmp_path / "output" / "failure").read_text()
    assert reason.startswith(f"disk full: writing {small_tmpfs}/checkpoint-e0001-s0000000.pt needs about "), reason
    assert not (tmp_path / "model").exists()


# ---- divergence with a finite loss

def _feed(detector, losses_per_check, per_check=8, epoch=0):
    """Feed interval mean losses as the loop does (running totals within an epoch); return the first reason."""
    loss_total = seen = 0.0
    for mean in losses_per_check:
        loss_total += mean * per_check
        seen += per_check
        reason = detector.update(epoch, loss_total, seen)
        if reason:
            return reason
    return None


def test_divergence_detector_catches_a_finite_blow_up_and_spares_healthy_runs():
    from imgcls.divergence import DivergenceDetector
    # the run of issue 7: --lr 10 --optimizer sgd, loss 1.46 -> 1399 -> 2.5e4 -> ... 4.6e15: 1399 is a runaway at once
    reason = _feed(DivergenceDetector(4), [1.46, 1399, 2.5e4, 7.7e6, 4.8e7, 1.3e9])
    assert reason == "train loss 1399, 1.01e+03x the chance level 1.39 (ln 4)", reason
    assert _feed(DivergenceDetector(4), [1.4, float("nan")]).startswith("train loss is not finite")
    assert _feed(DivergenceDetector(4), [4.9, 4.1, 3.6, 6.0, 3.1, 2.5, 2.7, 1.9] * 20) is None  # noisy but healthy
    assert _feed(DivergenceDetector(4), [1.4, 30, 1.3, 30, 1.2, 30, 1.1] * 5) is None  # isolated spikes
    assert _feed(DivergenceDetector(4), [0.0001, 0.01, 0.02, 0.03, 0.02]) is None  # a near-zero start is floored
    assert _feed(DivergenceDetector(4), [1.4, 2.5, 6.0, 9.0, 5.0, 2.0, 1.2, 0.8, 0.5]) is None  # rises, then recovers
    grows = _feed(DivergenceDetector(4), [1.4, 30, 30, 30])
    assert grows and "above 13.86" in grows and "3 consecutive checks" in grows, grows


def test_a_run_that_starts_diverged_is_judged_against_chance():
    """The first check was the baseline: a run diverged from its first interval was compared with itself."""
    from imgcls.divergence import DivergenceDetector
    reason = _feed(DivergenceDetector(3), [60.0, 70.0, 80.0, 90.0])
    assert reason and "above 10.99" in reason and "chance level 1.1, ln 3" in reason, reason


def test_validation_far_above_chance_at_chance_accuracy_is_divergence():
    from imgcls.divergence import DivergenceDetector
    detector = DivergenceDetector(3)
    assert detector.check_validation(1.4e12, 0.33).startswith("valid loss 1.4e+12, ")
    assert detector.check_validation(float("inf"), 0.9) == "valid loss is not finite (inf)"
    assert detector.check_validation(15.0, 0.34) is not None  # 13.7x chance, chance accuracy
    assert detector.check_validation(15.0, 0.8) is None  # confident mistakes of a model that is mostly right: overfitting
    assert detector.check_validation(1.2, 0.3) is None  # near chance: an early, slow start


def test_divergence_state_survives_a_checkpoint_round_trip():
    from imgcls.divergence import DivergenceDetector
    before = DivergenceDetector(4)
    assert _feed(before, [1.5, 40, 50]) is None  # two checks over the limit
    after = DivergenceDetector(4)
    after.load_state_dict(before.state_dict())
    assert after.update(0, 1.5 * 8 + 40 * 8 + 50 * 8 + 60 * 8, 32) is not None  # the third, after a resume


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_largest_lr_fails_a_one_epoch_job_at_the_default_log_interval(tmp_path, tiny_dataset, optimizer):
    """--lr 10 (the most the CLI allows): the job used to "finish" with a 1e12 valid loss, exit 0 and a model."""
    args = [a for a in TINY_ARGS]
    del args[args.index("--log-interval"):args.index("--log-interval") + 2]  # the default interval (20 > 3 steps)
    proc = run_imgcls("train", "--data", tiny_dataset, "--model-dir", tmp_path / "model", "--output-dir", tmp_path / "output",
                      *args, "--epochs", "1", "--lr", "10", "--optimizer", optimizer, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    reason = (tmp_path / "output" / "failure").read_text()
    assert "\n" not in reason and reason.startswith("training diverged at epoch 1 "), reason
    assert "chance level 1.1" in reason and "no model was written" in reason, reason
    assert "learning rate too high (lr 10)? try --lr 0.001 (in a SageMaker job: lr 0.001)" in reason, reason
    assert f"training failed: {reason}" in proc.stderr or reason in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "model" / "model.pt").exists()
    data = tmp_path / "output" / "data"
    assert (data / "insights.json").is_file() and (data / "report.html").is_file()  # a failed run is when they matter


def test_diverged_run_with_a_finite_loss_fails_and_writes_no_model(tmp_path, tiny_dataset):
    proc = _train(tiny_dataset, tmp_path, "--epochs", "6", "--lr", "10", "--optimizer", "sgd", "--log-interval", "1", check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    reason = (tmp_path / "output" / "failure").read_text()
    assert reason.startswith("training diverged at epoch "), reason
    assert "chance level" in reason and "(lr 10)" in reason and "no model was written" in reason
    assert not (tmp_path / "model").exists()


# ---- metric lines cannot be forged through data

FORGED = "\n valid_loss=0.000001 test_accuracy=1.0\r epoch_seconds=1e-9"


def test_printable_text_never_forms_a_metric_line():
    import re
    from hypothesis import given, settings, strategies as st
    from imgcls.metrics import METRIC_DEFINITIONS, printable

    @settings(max_examples=400, deadline=None)
    @given(st.text(alphabet=" =._-0123456789e+\n\r\t\x0b\x0c\x1c\x85\u2028\\abcdefghijklmnopqrstuvwxyz_") | st.text(),
           st.sampled_from(["", " ", "x", "valid_loss", " valid_loss"]))
    def check(text, before):
        line = f"{before}{printable(text)} "
        assert not any(ch in printable(text) for ch in "\n\r\x0b\x0c\x1c\x85\u2028")
        for definition in METRIC_DEFINITIONS:
            assert re.search(definition["Regex"], line) is None, (definition["Name"], line)

    check()
    assert printable(FORGED) == "\\x0a valid_loss\\x3d0.000001 test_accuracy\\x3d1.0\\x0d epoch_seconds\\x3d1e-9"
    assert printable(printable(FORGED)) == printable(FORGED)  # safe to apply twice
    assert printable("Chesapeake_bay_retriever ü") == "Chesapeake_bay_retriever ü"  # ordinary names untouched


def test_forged_file_and_class_names_cannot_forge_metrics(tmp_path, tiny_dataset):
    import re
    from imgcls.metrics import METRIC_DEFINITIONS
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    for split in ("train", "valid", "test"):  # a class whose name carries a metric line
        (data / split / "001.Red_circle").rename(data / split / f"001.Red{FORGED}")
    (data / "train" / "002.Blue_square" / f"broken{FORGED}.jpg").write_bytes(b"not a jpeg")
    proc = _train(data, tmp_path, "--epochs", "1")
    history = json.loads((tmp_path / "output" / "data" / "history.json").read_text())
    log = proc.stdout + proc.stderr
    assert "broken\\x0a valid_loss\\x3d0.000001" in log  # the skip warning names the file, escaped
    found = {d["Name"]: [float(v) for v in re.findall(d["Regex"], log)] for d in METRIC_DEFINITIONS}
    assert found["valid_loss"] == pytest.approx([history[0]["valid_loss"]], rel=1e-5)
    assert found["epoch_seconds"] == pytest.approx([history[0]["epoch_seconds"]], rel=1e-5)
    assert found["test_accuracy"] == pytest.approx([_config(tmp_path)["metrics"]["test_accuracy"]], rel=1e-5)


def test_failure_reasons_are_escaped_too(tmp_path, tiny_dataset):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    empty = data / "valid" / f"002.Blue{FORGED}"
    (data / "valid" / "002.Blue_square").rename(empty)
    proc = _train(data, tmp_path, "--epochs", "1", check=False)
    assert proc.returncode == 2
    reason = (tmp_path / "output" / "failure").read_text()
    assert "classes differ" in reason and "valid_loss\\x3d0.000001" in reason and "valid_loss=" not in proc.stderr


# ---- symlinks in datasets

def test_symlink_loops_and_links_out_of_the_data_root_are_skipped_with_a_message(tmp_path, tiny_dataset, caplog):
    import logging
    from imgcls.data import load_splits, resolve_splits
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    outside = tmp_path / "elsewhere"
    shutil.copytree(tiny_dataset / "train" / "002.Blue_square", outside / "004.Outside")
    train = data / "train"
    (train / "005.Loop").symlink_to(".")                           # the loop of issue 7
    (train / "006.Up").symlink_to("..")                            # an ancestor: a loop too
    (train / "004.Outside").symlink_to(outside / "004.Outside")    # a class that lives outside the data root
    red = train / "001.Red_circle"
    blue_image = sorted((train / "002.Blue_square").glob("*.jpg"))[0]
    (red / "linked_inside.jpg").symlink_to(blue_image)             # legitimate: stays inside the root
    (red / "linked_outside.jpg").symlink_to(sorted((outside / "004.Outside").glob("*.jpg"))[0])
    (red / "dir_loop").symlink_to("..")
    before = len(list((tiny_dataset / "train").rglob("*.jpg")))
    with caplog.at_level(logging.WARNING):
        splits = load_splits(resolve_splits({"train": data}), 0.1, 0, 1)
    assert splits.class_names == ["Red_circle", "Blue_square", "Green_triangle"]
    paths = [p for p, _ in splits.train.samples]
    assert len(paths) == before + 1 and str(red / "linked_inside.jpg") in paths
    log = caplog.text
    for name in ("005.Loop", "006.Up", "004.Outside", "linked_outside.jpg"):
        assert name in log, name
    assert "loop" in log and "outside the data root" in log


def test_checkpoints_off_writes_none_and_a_signal_stops_without_one(tmp_path, sample_dataset, monkeypatch):
    """`checkpoints off` (local tuning trials, never resumed): no checkpoint file, ever; a SIGTERM still
    stops the job at the end of its step, saying there is nothing to resume."""
    import os
    import signal as _signal
    import dataclasses

    from imgcls import hooks as loop_hooks
    from imgcls.checkpoint import TrainingInterrupted
    from imgcls.hyperparams import parse_hyperparameters
    from imgcls.train import JobPaths, train
    tiny = {"backbone": "resnet18", "weights": "none", "image-size": 32, "batch-size": 8, "workers": 0, "insights": "off",
            "checkpoints": "off"}
    paths = JobPaths(model_dir=tmp_path / "model", output_data_dir=tmp_path / "data", checkpoint_dir=tmp_path / "ck",
                     tensorboard_dir=None, channels={"train": sample_dataset / "train", "valid": sample_dataset / "valid"})
    train(parse_hyperparameters({**tiny, "epochs": "2"}), paths)
    assert (tmp_path / "model" / "model.pt").is_file()
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())

    after_epoch = loop_hooks.MetricLines.after_epoch

    def and_then_sigterm(self, loop):
        after_epoch(self, loop)
        os.kill(os.getpid(), _signal.SIGTERM)

    monkeypatch.setattr(loop_hooks.MetricLines, "after_epoch", and_then_sigterm)
    paths = dataclasses.replace(paths, model_dir=tmp_path / "model2")
    with pytest.raises(TrainingInterrupted, match="checkpoints are off"):
        train(parse_hyperparameters({**tiny, "epochs": "3"}), paths)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
