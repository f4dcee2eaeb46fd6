"""The notebook path: SageMaker SDK v2 objects built with imgcls_client.sdk from the same spec.
Their requests, read back from moto's recorder, agree with `imgcls aws tune/train --dry-run`."""
from __future__ import annotations

import json

import boto3
import pytest

from imgcls.cli import main
from imgcls.metrics import METRIC_DEFINITIONS
from imgcls_client import sdk
from imgcls_client.spec import load_spec, parse_spec
from moto_aws import ACCOUNT, REGION, ROLE, aws_env, moto_server  # noqa: F401 (moto_server: a fixture)

IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/imgcls:0123456789ab"
BUCKET = "imgcls-sdk-data"
SDK_CONFIG = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""
HYPERBAND = {
    "objective": {"metric": "valid_loss"},
    "parameters": {"lr": {"type": "continuous", "min": 1e-05, "max": 0.01, "scale": "log"},
                   "batch-size": {"type": "integer", "min": 16, "max": 128, "scale": "log"},
                   "optimizer": {"type": "categorical", "values": ["adamw", "sgd"]},
                   "label-smoothing": {"type": "continuous", "min": 0, "max": 0.2}},
    "static": {"epochs": 10, "backbone": "resnet50"},
    "strategy": "Hyperband", "budget": {"max_trials": 24, "max_parallel": 4, "max_runtime_s": 7200}, "seed": 11,
}


@pytest.fixture
def session(moto_server, monkeypatch, tmp_path):
    moto_server.reset()
    aws_env(monkeypatch, moto_server, tmp_path)
    (tmp_path / "sdk-config.yaml").write_text(SDK_CONFIG)
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(tmp_path / "sdk-config.yaml"))
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    import sagemaker
    boto_session = boto3.Session(region_name=REGION)
    boto_session.client("s3").create_bucket(Bucket=BUCKET)
    moto_server.recording.write_text("")
    return sagemaker.Session(boto_session=boto_session, default_bucket=BUCKET)


def dry_run(capsys, *argv) -> dict:
    rc = main(["aws", *argv, "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def ranges_by_name(ranges: dict) -> dict:
    return {r["Name"]: (kind, {k: v for k, v in r.items() if k != "Name"}) for kind, rs in ranges.items() for r in rs}


@pytest.mark.parametrize("spec_source", ["default", "hyperband"])
def test_sdk_tuner_sends_what_imgcls_aws_tune_dry_run_prints(session, moto_server, capsys, tmp_path, spec_source):
    from sagemaker.estimator import Estimator
    from sagemaker.tuner import HyperparameterTuner
    if spec_source == "default":
        spec, spec_args = load_spec(), []
    else:
        import yaml
        (tmp_path / "spec.yaml").write_text(yaml.safe_dump(HYPERBAND))
        spec, spec_args = parse_spec(HYPERBAND), ["--spec", str(tmp_path / "spec.yaml")]
    output, env = f"s3://{BUCKET}/tuning/", {"NCCL_DEBUG": "WARN"}
    estimator = Estimator(**sdk.estimator_kwargs(
        IMAGE, ROLE, hyperparameters=sdk.static_hyperparameters(spec, {"weights": "none"}), instance_type="ml.g5.2xlarge",
        output_path=output, max_run=3600, spot=True, max_wait=7200, network_isolation=True, environment=env, sagemaker_session=session))
    tuner = HyperparameterTuner(estimator, **sdk.tuner_kwargs(spec, max_jobs_not_improving=4, complete_on_convergence=True))
    tuner.fit({"train": f"s3://{BUCKET}/dogs/train/", "valid": f"s3://{BUCKET}/dogs/valid/"}, job_name="dogs-sdk", wait=False)
    sent = moto_server.only("CreateHyperParameterTuningJob")

    ours = dry_run(capsys, "tune", *spec_args, "--image-uri", IMAGE, "--role", ROLE, "--train", f"s3://{BUCKET}/dogs/train/",
                   "--valid", f"s3://{BUCKET}/dogs/valid/", "--output-path", output, "--instance-type", "ml.g5.2xlarge",
                   "--max-run", "3600", "--spot", "--max-wait", "7200", "--network-isolation", "--env", "NCCL_DEBUG=WARN",
                   "--hp", "weights=none", "--stop-after-not-improving", "4", "--complete-on-convergence", "--job-name", "dogs-sdk")
    assert sent["HyperParameterTuningJobName"] == ours["HyperParameterTuningJobName"]
    c_sdk, c_ours = sent["HyperParameterTuningJobConfig"], ours["HyperParameterTuningJobConfig"]
    for key in ("Strategy", "HyperParameterTuningJobObjective", "ResourceLimits", "TrainingJobEarlyStoppingType",
                "TuningJobCompletionCriteria", "StrategyConfig", "RandomSeed"):
        assert c_sdk.get(key) == c_ours.get(key), key
    assert ranges_by_name(c_sdk["ParameterRanges"]) == ranges_by_name(c_ours["ParameterRanges"])
    assert c_ours["HyperParameterTuningJobObjective"]["MetricName"] == spec.objective_metric

    d_sdk, d_ours = sent["TrainingJobDefinition"], ours["TrainingJobDefinition"]
    # the SDK also sends the objective's name as a static hyperparameter; imgcls ignores names starting with "_"
    assert {k: v for k, v in d_sdk["StaticHyperParameters"].items() if not k.startswith("_")} == d_ours["StaticHyperParameters"]
    assert d_sdk["AlgorithmSpecification"]["MetricDefinitions"] == d_ours["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    for key in ("TrainingImage", "TrainingInputMode"):
        assert d_sdk["AlgorithmSpecification"][key] == d_ours["AlgorithmSpecification"][key]
    for key in ("RoleArn", "OutputDataConfig", "StoppingCondition", "EnableManagedSpotTraining", "EnableNetworkIsolation",
                "Environment", "HyperParameterTuningResourceConfig"):
        assert d_sdk.get(key) == d_ours.get(key), key
    assert "CheckpointConfig" not in d_sdk and "CheckpointConfig" not in d_ours
    channels = lambda d: {c["ChannelName"]: c["DataSource"] for c in d["InputDataConfig"]}  # noqa: E731
    assert channels(d_sdk) == channels(d_ours)


def test_sdk_estimator_sends_what_imgcls_aws_train_dry_run_prints(session, moto_server, capsys):
    from sagemaker.estimator import Estimator
    hyperparameters = {"epochs": 3, "batch-size": 64, "lr": 0.01, "hflip": False}
    output = f"s3://{BUCKET}/training/"
    estimator = Estimator(**sdk.estimator_kwargs(
        IMAGE, ROLE, hyperparameters=hyperparameters, instance_count=2, output_path=output, max_run=7200, spot=True,
        checkpoint_s3_uri=f"s3://{BUCKET}/training/dogs-est/checkpoints/", tensorboard_s3_uri=f"s3://{BUCKET}/training/dogs-est/tensorboard/",
        network_isolation=True, environment={"NCCL_DEBUG": "WARN"}, sagemaker_session=session))
    estimator.fit({"train": f"s3://{BUCKET}/dogs/train/", "pretrained": f"s3://{BUCKET}/weights/"}, job_name="dogs-est", wait=False)
    sent = moto_server.only("CreateTrainingJob")
    ours = dry_run(capsys, "train", "--image-uri", IMAGE, "--role", ROLE, "--train", f"s3://{BUCKET}/dogs/train/",
                   "--pretrained", f"s3://{BUCKET}/weights/", "--output-path", output, "--instance-count", "2", "--max-run", "7200",
                   "--spot", "--tensorboard", "--network-isolation", "--env", "NCCL_DEBUG=WARN", "--job-name", "dogs-est",
                   "--hp", "epochs=3", "--hp", "batch-size=64", "--hp", "lr=0.01", "--hp", "hflip=false")
    assert sent["HyperParameters"] == ours["HyperParameters"] == {"epochs": "3", "batch-size": "64", "lr": "0.01", "hflip": "false"}
    for key in ("TrainingJobName", "RoleArn", "OutputDataConfig", "StoppingCondition", "EnableManagedSpotTraining",
                "CheckpointConfig", "TensorBoardOutputConfig", "EnableNetworkIsolation", "Environment", "ResourceConfig"):
        assert sent.get(key) == ours.get(key), key
    assert sent["AlgorithmSpecification"]["MetricDefinitions"] == ours["AlgorithmSpecification"]["MetricDefinitions"]
    assert sent["ProfilerConfig"]["DisableProfiler"] is True and ours["ProfilerConfig"]["DisableProfiler"] is True
    assert "DebugHookConfig" not in sent and "DebugHookConfig" not in ours
    assert [c["ChannelName"] for c in sent["InputDataConfig"]] == [c["ChannelName"] for c in ours["InputDataConfig"]]


def test_ranges_keep_the_specs_types_and_scaling():
    from sagemaker.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    ranges = sdk.hyperparameter_ranges(parse_spec(HYPERBAND))
    assert isinstance(ranges["lr"], ContinuousParameter) and ranges["lr"].scaling_type == "Logarithmic"
    assert (ranges["lr"].min_value, ranges["lr"].max_value) == (1e-05, 0.01)
    assert isinstance(ranges["batch-size"], IntegerParameter) and ranges["batch-size"].scaling_type == "Logarithmic"
    assert isinstance(ranges["optimizer"], CategoricalParameter) and ranges["optimizer"].values == ["adamw", "sgd"]
    assert ranges["label-smoothing"].scaling_type == "Linear"
    static = sdk.static_hyperparameters(parse_spec(HYPERBAND))
    assert static == {"epochs": "10", "backbone": "resnet50", "early-stopping-patience": "0"}
    with pytest.raises(Exception, match="hyperparameter lr"):
        sdk.estimator_kwargs(IMAGE, ROLE, hyperparameters={"lr": 50})
