"""SageMaker SDK local mode, really run: Estimator.fit and .deploy on the image, through docker compose.

Dummy credentials and region, telemetry off, every path file://: nothing leaves this machine.
"""
from __future__ import annotations

import os
import shutil

import boto3
import pytest

from docker_helpers import IMAGE, docker, free_port, image, wait_for_http  # noqa: F401
from imgcls.sample_data import make_sample_dataset

pytestmark = pytest.mark.docker

SDK_CONFIG = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


def docker_ids(kind: str) -> set[str]:
    return set(docker(kind, "ls", "-aq" if kind == "container" else "-q").stdout.split())


@pytest.fixture
def leave_no_containers_behind():
    """Remove the containers and networks that docker compose created during the test."""
    containers, networks = docker_ids("container"), docker_ids("network")
    yield
    new_containers = docker_ids("container") - containers
    if new_containers:
        docker("rm", "-f", *new_containers, check=False)
    new_networks = docker_ids("network") - networks
    if new_networks:
        docker("network", "rm", *new_networks, check=False)


@pytest.fixture
def local_session(tmp_path, monkeypatch):
    if shutil.which("docker-compose") is None and docker("compose", "version", check=False).returncode != 0:
        pytest.fail("SageMaker local mode needs docker compose (apt-get install docker-compose)")
    (tmp_path / "sdk-config.yaml").write_text(SDK_CONFIG)
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(tmp_path / "sdk-config.yaml"))
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    from sagemaker.local import LocalSession

    boto_session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    session = LocalSession(boto_session=boto_session)
    session.config = {"local": {"local_code": True, "container_root": str(tmp_path / "containers"),
                                "serving_port": free_port()}}
    (tmp_path / "containers").mkdir()
    return session


def test_local_mode_fit_deploy_predict_delete(image, local_session, tmp_path, leave_no_containers_behind):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.estimator import Estimator
    from sagemaker.serializers import IdentitySerializer

    data = make_sample_dataset(tmp_path / "dataset", num_classes=3, per_class=(8, 3, 3), image_size=64)
    estimator = Estimator(
        image_uri=image, role="arn:aws:iam::123456789012:role/SageMakerRole",
        instance_count=1, instance_type="local", sagemaker_session=local_session,
        output_path=f"file://{tmp_path / 'output'}", base_job_name="imgcls-local",
        hyperparameters={"backbone": "resnet18", "weights": "none", "image-size": 64, "epochs": 1,
                         "batch-size": 8, "workers": 0},
    )
    estimator.fit({"train": f"file://{data}"}, wait=True, logs=False)
    model_data = estimator.model_data
    assert model_data.startswith("file://") and os.path.getsize(model_data[len("file://"):]) > 0

    predictor = estimator.deploy(initial_instance_count=1, instance_type="local",
                                 serializer=IdentitySerializer("image/jpeg"), deserializer=JSONDeserializer())
    try:
        jpeg = sorted((data / "test").rglob("*.jpg"))[0]
        top_k = predictor.predict(jpeg.read_bytes())
        assert isinstance(top_k, list) and 1 <= len(top_k) <= 3
        assert {entry["label"] for entry in top_k} <= {"Red_circle", "Blue_square", "Green_triangle"}
        probabilities = [entry["probability"] for entry in top_k]
        assert probabilities == sorted(probabilities, reverse=True)
    finally:
        predictor.delete_model()  # first: it finds the model through the endpoint config
        predictor.delete_endpoint()
    port = local_session.config["local"]["serving_port"]
    with pytest.raises(AssertionError):  # the endpoint is really gone
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=3)
