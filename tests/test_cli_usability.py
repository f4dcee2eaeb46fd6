"""The CLI a user meets first: typos, aliases, --help, Ctrl-C, progress, clear messages (issue 7)."""
from __future__ import annotations

import io
import logging
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST_TRAIN_ARGS, run_imgcls


def test_a_typo_gets_a_did_you_mean(tmp_path):
    proc = run_imgcls("train", "--data", tmp_path, "--model-dir", tmp_path / "m", "--lerning-rate", "0.1", check=False)
    assert proc.returncode == 2
    assert "unrecognized arguments: --lerning-rate" in proc.stderr and "did you mean --learning-rate?" in proc.stderr


@pytest.mark.parametrize("flag, value, expected", [
    ("--learning_rate", "99", "hyperparameter lr: 99.0 is out of range"),
    ("--batch_size", "0", "hyperparameter batch-size: 0 is out of range"),
    ("--num_epochs", "0", "hyperparameter epochs: 0 is out of range"),
])
def test_readme_aliases_work_as_flags(tmp_path, flag, value, expected):
    proc = run_imgcls("train", "--data", tmp_path, "--model-dir", tmp_path / "m", "--output-dir", tmp_path / "o", flag, value, check=False)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr[-2000:]


def test_help_shows_one_default_per_flag():
    text = run_imgcls("train", "--help").stdout
    flags = re.split(r"\n  (?=-)", text.split("options:", 1)[1])  # one block per option
    assert len(flags) > 25
    for block in flags:
        assert len(re.findall(r"default", block)) <= 1, block
    assert "--learning_rate" not in text  # aliases work but do not clutter the help
    assert "default 10;" in text and "(default: output)" in text


def test_ctrl_c_exits_130_with_one_line(tmp_path, sample_dataset):
    cmd = [sys.executable, "-m", "imgcls", "train", "--data", str(sample_dataset), "--model-dir", str(tmp_path / "m"),
           "--output-dir", str(tmp_path / "o"), "--epochs", "3", *FAST_TRAIN_ARGS, "--batch-size", "8", "--log-interval", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if line.startswith("epoch 1/3 step 2/"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline
    proc.stdout.read()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "resume" in last, last
    assert "Traceback" not in stderr


def test_log_lines_do_not_break_the_progress_bar(monkeypatch):
    from tqdm import tqdm
    from imgcls.logs import configure_logging
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging()
    bar = tqdm(total=10, desc="epoch 1/3", file=stream)
    bar.update(3)
    logging.getLogger("imgcls.test").warning("a log line")
    bar.close()
    text = stream.getvalue()
    at = text.index("WARNING")
    line_start = max(text.rfind("\r", 0, at), text.rfind("\n", 0, at)) + 1
    prefix = text[line_start:at]  # what shares the terminal line with the log message
    assert "epoch 1/3" not in prefix and "|" not in prefix, repr(text)


def test_image_scan_reports_its_progress(tmp_path, caplog):
    from imgcls.data import scan_split
    from imgcls.sample_data import make_sample_dataset
    data = make_sample_dataset(tmp_path / "d", num_classes=2, per_class=(6, 2, 2), image_size=40)
    with caplog.at_level(logging.INFO):
        scan_split("train", data / "train", None, 1)
    assert re.search(r"train split: checked 12 files in [0-9.]+ s", caplog.text), caplog.text


def test_one_class_dataset_gets_a_clear_message(tmp_path):
    from imgcls.data import scan_split
    from imgcls.errors import UserError
    from imgcls.sample_data import make_sample_dataset
    data = make_sample_dataset(tmp_path / "d", num_classes=1, per_class=(6, 2, 2), image_size=40)
    with pytest.raises(UserError, match="only one class folder .*Red_circle.*at least two"):
        scan_split("train", data / "train", None, 1)


def test_finetune_beyond_the_backbones_stages_gets_a_clear_message():
    from imgcls.errors import UserError
    from imgcls.models import apply_finetune_policy, build_model
    model = build_model("resnet18", 2)
    apply_finetune_policy(model, "resnet18", 5)  # all five stages: fine
    with pytest.raises(UserError, match="hyperparameter finetune: resnet18 has 5 stages; use head, all or 0-5, not 6"):
        apply_finetune_policy(model, "resnet18", 6)
