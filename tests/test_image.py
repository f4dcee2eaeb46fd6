"""The real image, really run: metadata, tools, `train` on local_test/test_dir, `serve`, failures, SIGTERM."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from docker_helpers import (DOCKER, REPO, TEST_DIR, container_logs, copy_test_dir, docker, free_port, image,  # noqa: F401
                            make_writable_for_all, remove_container, run_args, default_hyperparameters,
                            unique_name, wait_for_http)

pytestmark = pytest.mark.docker

MAX_IMAGE_BYTES = 8 * 10**9
MODEL_FILES = ("model.pt", "labels.json", "model_config.json")


def docker_train(image: str, ml_dir: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`docker run IMAGE train` with ml_dir at /opt/ml; the hostname matches resourceconfig.json."""
    name = unique_name("imgcls-train")
    try:
        return docker("run", "--rm", *run_args(name), "--hostname", "algo-1", "-v", f"{ml_dir}:/opt/ml", *extra,
                      image, "train", check=False, timeout=timeout)
    finally:
        remove_container(name)


def test_image_metadata(image):
    info = json.loads(docker("image", "inspect", image).stdout)[0]
    config = info["Config"]
    labels = config["Labels"]
    assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert labels["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    assert labels["imgcls.build-inputs"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["SAGEMAKER_TRAINING_MODULE"] == "imgcls.sagemaker_train:main"
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["TORCH_HOME"] == "/opt/torch"
    assert config["Entrypoint"][0] == "/usr/bin/tini"
    assert info["Architecture"] == "amd64"
    print(f"\n[image] {image}: {info['Size'] / 1e9:.2f} GB")
    assert info["Size"] < MAX_IMAGE_BYTES, f"image is {info['Size'] / 1e9:.2f} GB, the goal is < 8 GB"


def test_image_has_its_tools_and_no_build_leftovers(image):
    script = r"""
set -e
# First, before anything below writes its own caches (matplotlib, torch) at run time.
for cache in /root/.cache /root/.cache/uv /root/.cache/pip; do if [ -e "$cache" ]; then echo "leftover $cache"; exit 1; fi; done
for tool in train serve imgcls java python; do command -v "$tool" >/dev/null || { echo "missing $tool"; exit 1; }; done
test "$(command -v train)" = /opt/venv/bin/train
java -version 2>&1 | grep -q 'version "17'
python -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
python -c 'import torch, torchvision, smdebug, sagemaker_training, sagemaker_inference, mms, imgcls.sagemaker_train, imgcls.serving.server'
# Baked weights (BAKE_WEIGHTS=1) land where torch.hub looks for ResNet50's IMAGENET1K_V2 file.
python -c 'import torch.hub, torchvision.models as m; assert torch.hub.get_dir() == "/opt/torch/hub", torch.hub.get_dir(); assert m.ResNet50_Weights.IMAGENET1K_V2.url.endswith("/resnet50-11ad3fa6.pth")'
# pip itself stays: sagemaker-training and sagemaker-inference depend on it (uv.lock pins it).
# The /ping readiness plugin is compiled at build time, so no JDK is left in the image.
test -f /opt/imgcls/readiness-plugin/META-INF/services/software.amazon.ai.mms.servingsdk.ModelServerEndpoint
for leftover in gcc cc uv javac; do if command -v "$leftover" >/dev/null; then echo "leftover $leftover"; exit 1; fi; done
test ! -e /run/secrets/extra_ca
echo tools-ok
"""
    proc = docker("run", "--rm", image, "bash", "-c", script, check=False)
    assert proc.returncode == 0 and "tools-ok" in proc.stdout, proc.stdout + proc.stderr


def test_entrypoint_without_command_prints_usage(image):
    proc = docker("run", "--rm", image, check=False)
    assert proc.returncode == 2
    assert "usage: docker run IMAGE train | serve" in proc.stderr


@pytest.fixture(scope="module")
def trained_ml_dir(image, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """local_test/test_dir after `docker run IMAGE train` (as root, like SageMaker)."""
    ml_dir = copy_test_dir(tmp_path_factory.mktemp("train-root") / "ml")
    return ml_dir, docker_train(image, ml_dir)


def test_train_produces_a_model(trained_ml_dir):
    ml_dir, proc = trained_ml_dir
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in MODEL_FILES:
        assert (ml_dir / "model" / name).stat().st_size > 0, f"model/{name} missing"
    labels = json.loads((ml_dir / "model/labels.json").read_text())
    class_folders = sorted(p.name for p in (TEST_DIR / "input/data/train/train").iterdir())
    assert sorted(labels.values()) == sorted(name.split(".", 1)[1] for name in class_folders)
    config = json.loads((ml_dir / "model/model_config.json").read_text())
    assert config["backbone"] == "resnet18" and config["num_classes"] == len(class_folders)
    assert (ml_dir / "output/success").exists()
    assert not (ml_dir / "output/failure").exists()


def test_train_runs_as_a_non_root_user(image, tmp_path):
    ml_dir = copy_test_dir(tmp_path / "ml")
    make_writable_for_all(ml_dir)
    proc = docker_train(image, ml_dir, "--user", "imgcls")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    weights = ml_dir / "model/model.pt"
    assert weights.exists() and weights.stat().st_uid == 1000


@pytest.mark.parametrize("bad, hyperparameter", [
    ({"learning-rat": "0.01"}, "learning-rat"),
    ({"epochs": "-1"}, "epochs"),
])
def test_training_failure_leaves_a_precise_one_line_reason(image, tmp_path, bad, hyperparameter):
    ml_dir = copy_test_dir(tmp_path / "ml", {**default_hyperparameters(), **bad})
    proc = docker_train(image, ml_dir, timeout=300)
    assert proc.returncode != 0
    failure = (ml_dir / "output/failure").read_text()
    assert failure.strip() and "\n" not in failure.strip(), f"not one line: {failure!r}"
    assert len(failure) <= 1024
    assert hyperparameter in failure, failure
    assert "Traceback" not in failure and "ExecuteUserScriptError" not in failure
    assert not (ml_dir / "model/model.pt").exists()


def test_sigterm_stops_training_promptly_with_a_checkpoint(image, tmp_path):
    ml_dir = copy_test_dir(tmp_path / "ml", {**default_hyperparameters(), "epochs": "1000", "early-stopping-patience": "0"})
    name = unique_name("imgcls-train-stop")
    docker("run", "-d", *run_args(name), "--hostname", "algo-1", "-v", f"{ml_dir}:/opt/ml", image, "train")
    try:
        # Stop mid-run: once an epoch has been checkpointed, so there is state worth keeping.
        deadline = time.monotonic() + 240
        while not any((ml_dir / "checkpoints").glob("*")):
            assert time.monotonic() < deadline, "no checkpoint after 240 s:\n" + container_logs(name)
            assert docker("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", container_logs(name)
            time.sleep(1)
        stopped_at = time.monotonic()
        docker("kill", "--signal", "TERM", name)
        docker("wait", name, timeout=60)
        took = time.monotonic() - stopped_at
        state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
        logs = container_logs(name)
        print(f"\n[sigterm train] exit {state['ExitCode']} after {took:.1f} s")
        assert took < 30, f"train took {took:.0f} s to stop after SIGTERM\n{logs}"
        # A handled stop: the job code exits on its own (0, or 1 with a reason), not killed by the signal.
        assert state["ExitCode"] in (0, 1), f"exit {state['ExitCode']}\n{logs}"
        assert "SIGTERM" in logs, logs
        failure = ml_dir / "output/failure"
        if failure.exists():
            assert "signal" in failure.read_text(), failure.read_text()
        assert any((ml_dir / "checkpoints").glob("*")), "the stop left no checkpoint"
    finally:
        remove_container(name)


@pytest.fixture(scope="module")
def serving_container(image, trained_ml_dir):
    """`docker run IMAGE serve` on the model trained above, published on a free 127.0.0.1 port."""
    ml_dir, proc = trained_ml_dir
    assert proc.returncode == 0, "training failed; nothing to serve"
    name, port = unique_name("imgcls-serve"), free_port()
    docker("run", "-d", *run_args(name), "-p", f"127.0.0.1:{port}:8080",
           "-v", f"{ml_dir / 'model'}:/opt/ml/model:ro", image, "serve")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=180, container=name)
        yield name, port, ml_dir
    finally:
        remove_container(name)


def test_serve_answers_ping_and_a_jpeg(serving_container):
    name, port, ml_dir = serving_container
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
        assert response.status == 200
    jpeg = sorted((TEST_DIR / "input/data/train/test").rglob("*.jpg"))[0]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=jpeg.read_bytes(), method="POST",
                                     headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        top_k = json.loads(response.read())
    class_names = set(json.loads((ml_dir / "model/labels.json").read_text()).values())
    assert 1 <= len(top_k) <= len(class_names)
    assert {entry["label"] for entry in top_k} <= class_names
    probabilities = [entry["probability"] for entry in top_k]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-5
    # MMS's Python listener (the child of the Java frontend) is ours: torch is imported before it forks workers
    probe = ("import json, psutil\n"
             "print(json.dumps([(' '.join(p.cmdline()), any('libtorch' in m.path for m in p.memory_maps()))\n"
             "                  for p in psutil.process_iter() if p.parent() and p.parent().name() == 'java']))")
    listeners = json.loads(docker("exec", name, "python", "-c", probe).stdout)
    assert all("imgcls-mms-backend" in command for command, _ in listeners), listeners
    assert [torch for command, torch in listeners if "model_service_worker.py" in command] == [True], listeners
    assert not [command for command, torch in listeners if torch and "model_service_worker.py" not in command], listeners


def test_sigterm_stops_serve_promptly_and_cleanly(serving_container):
    name, _, _ = serving_container
    stopped_at = time.monotonic()
    docker("kill", "--signal", "TERM", name)
    docker("wait", name, timeout=60)
    took = time.monotonic() - stopped_at
    exit_code = int(docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout)
    print(f"\n[sigterm serve] exit {exit_code} after {took:.1f} s")
    assert exit_code == 0, container_logs(name)
    assert took < 20, f"serve took {took:.0f} s to stop after SIGTERM"


def test_local_test_scripts_train_serve_predict(image, tmp_path):
    """local_test/train_local.sh, serve_local.sh and predict.sh, as a user runs them (on a copy of test_dir)."""
    env = {**os.environ, "TEST_DIR": str(copy_test_dir(tmp_path / "ml")), "PORT": str(free_port()), "DOCKER": DOCKER}
    train = subprocess.run(["bash", "local_test/train_local.sh", image], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert (tmp_path / "ml/model/model.pt").exists()
    # A second run of the same job finds its finished checkpoint: reported as such, the same model written again.
    first_config = json.loads((tmp_path / "ml/model/model_config.json").read_text())
    again = subprocess.run(["bash", "local_test/train_local.sh", image], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "already finished" in again.stdout + again.stderr
    assert not [line for line in again.stdout.splitlines() if line.startswith("epoch=")]  # no epoch trained again
    assert json.loads((tmp_path / "ml/model/model_config.json").read_text())["metrics"] == first_config["metrics"]

    name = unique_name("imgcls-serve-local")
    server = subprocess.Popen(["bash", "local_test/serve_local.sh", image, *run_args(name)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{env['PORT']}/ping", timeout=180, container=name, process=server)
        predict = subprocess.run(["bash", "local_test/predict.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert predict.returncode == 0, predict.stdout + predict.stderr
        top_k = json.loads(predict.stdout)
        assert top_k[0]["label"] in json.loads((tmp_path / "ml/model/labels.json").read_text()).values()
        server.terminate()  # `docker run` passes SIGTERM on to the container
        assert server.wait(timeout=60) == 0, server.stdout.read()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
        remove_container(name)


def test_serve_multi_model_endpoint_in_the_image(image, trained_ml_dir, tmp_path):
    """The multi-models label is honest: SAGEMAKER_MULTI_MODEL=true serves /opt/ml/models, loaded on request."""
    ml_dir, proc = trained_ml_dir
    assert proc.returncode == 0, "training failed; nothing to serve"
    models = tmp_path / "models"
    shutil.copytree(ml_dir / "model", models / "shapes")
    name, port = unique_name("imgcls-serve-mme"), free_port()
    docker("run", "-d", *run_args(name), "-p", f"127.0.0.1:{port}:8080", "-e", "SAGEMAKER_MULTI_MODEL=true",
           "-v", f"{models}:/opt/ml/models:ro", image, "serve")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/ping", timeout=180, container=name)
        # What SageMaker does before the first request for a model: load it through the management API.
        load = urllib.request.Request(f"{base}/models", method="POST", headers={"Content-Type": "application/json"},
                                      data=json.dumps({"model_name": "shapes", "url": "/opt/ml/models/shapes"}).encode())
        with urllib.request.urlopen(load, timeout=120) as response:
            assert response.status == 200
        jpeg = sorted((TEST_DIR / "input/data/train/test").rglob("*.jpg"))[0]
        invoke = urllib.request.Request(f"{base}/models/shapes/invoke", data=jpeg.read_bytes(), method="POST",
                                        headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
        deadline = time.monotonic() + 120
        while True:  # the worker may still be loading the model
            try:
                with urllib.request.urlopen(invoke, timeout=60) as response:
                    top_k = json.loads(response.read())
                break
            except urllib.error.HTTPError as exc:
                assert time.monotonic() < deadline, f"{exc.code} {exc.read()[:500]!r}\n{container_logs(name)}"
                time.sleep(1)
        class_names = set(json.loads((ml_dir / "model/labels.json").read_text()).values())
        assert top_k and {entry["label"] for entry in top_k} <= class_names
    finally:
        remove_container(name)


# ---- what the image's own Python (Debian 3.11.2) runs: archives, model loading, decoding (issue 7)

def test_in_image_checks_pass_with_the_images_python(image):
    """tests/image_checks.py (no pytest) inside the image: safe extraction, model loading, request decoding."""
    proc = docker("run", "--rm", "--label", "imgcls.test=1", "-v", f"{REPO / 'tests'}:/checks:ro", image,
                  "python", "/checks/image_checks.py", check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import image_checks
    assert f"image checks: {len(image_checks.CHECKS)} passed" in proc.stdout
    print(f"\n[image checks] {proc.stdout.splitlines()[0]}")


def test_serve_a_model_tar_gz_in_the_image(image, tmp_path):
    """SageMaker unpacks model.tar.gz itself; users (and `imgcls serve`) hand the archive over as it is."""
    import image_checks
    docker("run", "--rm", "--label", "imgcls.test=1", "-v", f"{REPO / 'tests'}:/checks:ro", "-v", f"{tmp_path}:/work",
           image, "python", "-c", "import sys; sys.path.insert(0, '/checks'); import image_checks, pathlib; "
           "image_checks.model_archive(pathlib.Path('/work'))", timeout=300)
    make_writable_for_all(tmp_path)
    assert (tmp_path / "model.tar.gz").is_file() and image_checks  # made by the image's own code
    shutil.rmtree(tmp_path / "model")
    name, port = unique_name("imgcls-serve-tgz"), free_port()
    docker("run", "-d", *run_args(name), "-p", f"127.0.0.1:{port}:8080", "-v", f"{tmp_path}:/opt/ml/model:ro", image, "serve")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=180, container=name)
    finally:
        remove_container(name)


@pytest.mark.parametrize("kind", ["symlink_out", "device", "link_chain"])
def test_serve_refuses_a_hostile_model_tar_gz_with_one_line(image, tmp_path, kind):
    import image_checks
    image_checks.hostile_archive(tmp_path / "model.tar.gz", kind)
    make_writable_for_all(tmp_path)
    name = unique_name("imgcls-serve-hostile")
    try:
        proc = docker("run", *run_args(name), "-v", f"{tmp_path}:/opt/ml/model:ro", image, "serve", check=False, timeout=120)
    finally:
        remove_container(name)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    failed = [line for line in output.splitlines() if "serve failed:" in line]
    assert len(failed) == 1 and "archive member" in failed[0], output[-2000:]
    assert "Traceback" not in output
