"""The image's `train` path: the real sagemaker-training toolkit against an /opt/ml-shaped folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from imgcls.launch import torchrun_command

TOOLKIT_TRAIN = Path(sys.executable).parent / "train"  # the toolkit's console script
ENTRYPOINT = REPO / "container" / "entrypoint.sh"  # the image's: `docker run IMAGE train` runs it with `train`
FAST_HPS = {"backbone": "resnet18", "weights": "none", "image-size": "64", "batch-size": "16", "workers": "0", "epochs": "1"}


def make_job(base: Path, channels: dict[str, Path], hps: dict[str, str]) -> Path:
    config = base / "input" / "config"
    config.mkdir(parents=True)
    for name, source in channels.items():
        shutil.copytree(source, base / "input" / "data" / name)
    (config / "hyperparameters.json").write_text(json.dumps(hps))  # SageMaker writes every value as a string
    (config / "inputdataconfig.json").write_text(json.dumps({n: {"TrainingInputMode": "File"} for n in channels}))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "lo"}))
    return base


def run_toolkit(base: Path, extra_env=None, timeout=600, command=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_TRAINING_MODULE": "imgcls.sagemaker_train:main", **(extra_env or {})}
    return subprocess.run(command or [str(TOOLKIT_TRAIN)], check=False, env=env, capture_output=True, text=True, timeout=timeout)


def run_image_train(base: Path, extra_env=None, timeout=600) -> subprocess.CompletedProcess:
    """The image's `train`: its entrypoint, with the venv's console scripts first on PATH as in the image."""
    path = f"{TOOLKIT_TRAIN.parent}{os.pathsep}{os.environ['PATH']}"
    return run_toolkit(base, {"PATH": path, **(extra_env or {})}, timeout=timeout, command=["sh", str(ENTRYPOINT), "train"])


@pytest.mark.parametrize("layout", ["seed_channel_names", "one_channel_with_splits", "flat_train_only"])
def test_toolkit_trains_every_accepted_layout(tmp_path, sample_dataset, layout):
    channels = {
        "seed_channel_names": {"training": sample_dataset / "train", "validation": sample_dataset / "valid", "testing": sample_dataset / "test"},
        "one_channel_with_splits": {"train": sample_dataset},
        "flat_train_only": {"train": sample_dataset / "train"},
    }[layout]
    base = make_job(tmp_path / "ml", channels, FAST_HPS)
    proc = run_toolkit(base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert {p.name for p in (base / "model").iterdir()} == {"model.pt", "labels.json", "model_config.json"}
    assert (base / "output" / "data" / "history.json").exists()
    assert list((base / "output" / "tensorboard").glob("events.*"))
    assert list((base / "checkpoints").glob("checkpoint-*.pt"))
    has_test = layout != "flat_train_only"
    assert ("test_accuracy=" in proc.stdout) == has_test
    if layout == "flat_train_only":
        assert "carving 10% of train" in proc.stderr


def _empty_class(data: Path):
    for f in (data / "train" / "002.Blue_square").iterdir():
        f.unlink()


def _unreadable_class(data: Path):
    for f in (data / "train" / "003.Green_triangle").iterdir():
        f.write_bytes(b"garbage")


def _extra_valid_class(data: Path):
    (data / "valid" / "009.Unicorn").mkdir()
    shutil.copy(next((data / "valid" / "001.Red_circle").iterdir()), data / "valid" / "009.Unicorn" / "u.jpg")


@pytest.mark.parametrize("hps, break_data, channel_names, expected", [
    ({"epochs": "3", "batch_sise": "8"}, None, None, "hyperparameter batch_sise: unknown name; did you mean batch-size?"),
    ({"lr": "0.01x"}, None, None, "hyperparameter lr: expected a number, got '0.01x'"),
    ({"image-size": "4"}, None, None, "hyperparameter image-size: 4 is out of range [32, 1024]"),
    ({}, _empty_class, None, "class folder"),
    ({}, _unreadable_class, None, "003.Green_triangle has no readable image"),
    ({}, _extra_valid_class, None, "valid split"),
    ({}, None, ("trainning", "validation"), "channel trainning: unknown name"),
    ({"weights": "imagenet", "allow-download": "false"}, None, None, "provide it as a 'pretrained' input channel"),
    ({"weights": "/opt/missing.pth"}, None, None, "hyperparameter weights: file /opt/missing.pth does not exist"),
])
def test_failures_leave_one_precise_line(tmp_path, sample_dataset, hps, break_data, channel_names, expected):
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    if break_data:
        break_data(data)
    names = channel_names or ("train", "valid")
    base = make_job(tmp_path / "ml", {names[0]: data / "train", names[1]: data / "valid"}, {**FAST_HPS, **hps})
    proc = run_toolkit(base, {"TORCH_HOME": str(tmp_path / "empty_torch_home")})
    assert proc.returncode == 1
    reason = (base / "output" / "failure").read_text()
    assert expected in reason, reason
    assert "\n" not in reason.strip() and len(reason) <= 1024 and "Traceback" not in reason
    assert not (base / "output" / "success").exists()
    assert not (base / "model" / "model.pt").exists()


def _write(name: str, text: str):
    return lambda config: (config / name).write_text(text)


def _remove(name: str):
    return lambda config: (config / name).unlink()


LONG_NAME = "epochs" + "x" * 5000


@pytest.mark.parametrize("break_config, expected", [
    pytest.param(_write("hyperparameters.json", '{"epochs": "1",'), "input/config/hyperparameters.json: not valid JSON: Expecting property name", id="invalid_json"),
    pytest.param(_write("hyperparameters.json", ""), "input/config/hyperparameters.json: the file is empty; expected a JSON object", id="empty_file"),
    pytest.param(_write("hyperparameters.json", '["epochs", "1"]'), "input/config/hyperparameters.json: expected a JSON object, got an array", id="json_list"),
    pytest.param(_remove("resourceconfig.json"), "input/config/resourceconfig.json: the file is missing", id="no_resourceconfig"),
    pytest.param(_remove("inputdataconfig.json"), "input/config/inputdataconfig.json: the file is missing", id="no_inputdataconfig"),
    pytest.param(_write("hyperparameters.json", '{"epochs": 3}'),
                 "input/config/hyperparameters.json: epochs: expected a string (as SageMaker writes every value), got a number", id="value_not_string"),
    pytest.param(_write("hyperparameters.json", json.dumps({"epochs": "[" * 2000})),  # a string SageMaker accepts; the toolkit decodes it
                 "input/config/hyperparameters.json: epochs: the value nests too deeply", id="value_nests_too_deeply"),
    pytest.param(_write("hyperparameters.json", json.dumps({LONG_NAME: 3})), "input/config/hyperparameters.json: epochsxxx", id="long_name"),
    pytest.param(_write("resourceconfig.json", '{"hosts": ["algo-1"]}'), "input/config/resourceconfig.json: current_host: missing", id="no_current_host"),
    pytest.param(_write("resourceconfig.json", '{"current_host": "algo-2", "hosts": ["algo-1"]}'),
                 "input/config/resourceconfig.json: current_host: algo-2 is not one of hosts", id="current_host_not_in_hosts"),
    pytest.param(_write("resourceconfig.json", '{"current_host": "algo-1", "hosts": []}'),
                 "input/config/resourceconfig.json: hosts: expected a non-empty array of host names", id="no_hosts"),
    pytest.param(_write("inputdataconfig.json", '{"pretrained": {}}'), "input/config/inputdataconfig.json: no data channel", id="no_data_channel"),
    pytest.param(_write("inputdataconfig.json", '{"../train": {}}'), "input/config/inputdataconfig.json: channel ../train: invalid name", id="channel_path"),
])
@pytest.mark.parametrize("output_dir", ["missing", "with_stale_failure"])
def test_image_train_rejects_a_broken_job_config_in_one_line(tmp_path, break_config, expected, output_dir):
    (tmp_path / "data").mkdir()
    base = make_job(tmp_path / "ml", {"train": tmp_path / "data"}, FAST_HPS)  # the data is never read
    break_config(base / "input" / "config")
    if output_dir == "with_stale_failure":  # a local rerun: the folder holds an earlier job's reason
        (base / "output").mkdir()
        (base / "output" / "failure").write_text("an earlier job's reason")
    # The check comes before torch (and the toolkit): a torch that cannot be imported changes nothing.
    no_torch = tmp_path / "no_torch" / "torch"
    no_torch.mkdir(parents=True)
    (no_torch / "__init__.py").write_text("raise ImportError('torch imported by the config check')\n")
    proc = run_image_train(base, {"PYTHONPATH": str(no_torch.parent)}, timeout=60)
    assert proc.returncode == 1, proc.stderr[-3000:]
    reason = (base / "output" / "failure").read_text()
    assert reason.startswith(expected), reason
    assert "\n" not in reason and len(reason) <= 1024 and "Traceback" not in reason
    assert reason in proc.stderr  # the job's log says it too
    assert "Traceback" not in proc.stderr
    assert not (base / "output" / "success").exists()


def test_image_train_checks_a_good_config_then_trains(tmp_path, sample_dataset):
    base = make_job(tmp_path / "ml", {"train": sample_dataset}, FAST_HPS)
    proc = run_image_train(base)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert (base / "model" / "model.pt").exists()


def test_toolkit_launches_torchrun_ddp_with_two_cpu_processes(tmp_path, sample_dataset):
    base = make_job(tmp_path / "ml", {"train": sample_dataset}, {**FAST_HPS, "epochs": "2"})
    proc = run_toolkit(base, {"IMGCLS_NPROC_PER_NODE": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.distributed.run" in proc.stderr and "--nproc-per-node=2" in proc.stderr
    assert proc.stdout.count("epoch=2/2 ") == 1 and (base / "model" / "model.pt").exists()


def test_a_failing_rank_fails_the_job_with_its_reason(tmp_path, sample_dataset):
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    _empty_class(data)
    base = make_job(tmp_path / "ml", {"train": data}, FAST_HPS)
    proc = run_toolkit(base, {"IMGCLS_NPROC_PER_NODE": "2"})
    assert proc.returncode == 1
    assert "002.Blue_square has no readable image" in (base / "output" / "failure").read_text()
    assert not (base / "output" / "success").exists()


def test_multi_node_command_follows_sagemaker_conventions():
    cmd = torchrun_command(["imgcls.sagemaker_train"], hosts=["algo-1", "algo-2"], current_host="algo-2", nproc_per_node=8)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--nnodes=2", "--node-rank=1",
                       "--master-addr=algo-1", "--master-port=7777", "-m", "imgcls.sagemaker_train"]
