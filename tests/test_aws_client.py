"""`imgcls aws ...` against moto's server on 127.0.0.1: the exact requests sent over HTTP (read back
from moto's recorder), the lifecycles moto supports, and --dry-run's validation. Where moto stops
(tuning progress, per-job listing, stop, binary invoke), botocore's Stubber or a small fake."""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import subprocess
import sys
import tarfile
import textwrap

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from imgcls.cli import main
from imgcls.hyperparams import parse_hyperparameters
from imgcls.metrics import METRIC_DEFINITIONS, format_metrics, last_values
from imgcls_client.aws import commands
from imgcls_client.aws.context import AwsContext, role_from_caller
from imgcls_client.aws.validate import RequestError, check_request
from moto_aws import ACCOUNT, REGION, ROLE, aws_env, moto_server  # noqa: F401 (moto_server: a fixture)

IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/imgcls:0123456789ab"
BUCKET = "imgcls-test-data"


@pytest.fixture
def moto(moto_server, monkeypatch, tmp_path):
    moto_server.reset()
    aws_env(monkeypatch, moto_server, tmp_path)
    boto3.client("s3", endpoint_url=moto_server.url, region_name=REGION).create_bucket(Bucket=BUCKET)
    moto_server.recording.write_text("")
    return moto_server


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["aws", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


TRAIN_ARGS = ["--image-uri", IMAGE, "--role", ROLE, "--train", f"s3://{BUCKET}/dogs/train/", "--valid", f"s3://{BUCKET}/dogs/valid/",
              "--pretrained", f"s3://{BUCKET}/weights/resnet50.pth", "--output-path", f"s3://{BUCKET}/out/",
              "--instance-type", "ml.g5.2xlarge", "--instance-count", "2", "--max-run", "7200", "--spot", "--max-wait", "10800",
              "--tensorboard", "--network-isolation", "--env", "IMGCLS_NPROC_PER_NODE=1", "--env", "NCCL_DEBUG=WARN",
              "--hp", "epochs=3", "--hp", "batch-size=64", "--hp", "lr=0.01", "--hp", "backbone=resnet18"]


def test_train_sends_exactly_the_dry_run_request(moto, capsys):
    rc, dry, err = run(capsys, "train", *TRAIN_ARGS, "--job-name", "dogs-1", "--dry-run")
    assert rc == 0, err
    assert moto.requests() == []  # a dry run sends nothing
    rc, out, err = run(capsys, "train", *TRAIN_ARGS, "--job-name", "dogs-1")
    assert rc == 0, err
    sent = moto.only("CreateTrainingJob")
    assert sent == json.loads(dry)

    assert sent["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert sent["HyperParameters"] == {"epochs": "3", "batch-size": "64", "lr": "0.01", "backbone": "resnet18"}
    assert sent["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert sent["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 50}
    assert sent["EnableManagedSpotTraining"] is True
    assert sent["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 10800}
    # the job's own checkpoint and TensorBoard prefixes, beside its outputs
    assert sent["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/out/dogs-1/checkpoints/", "LocalPath": "/opt/ml/checkpoints"}
    assert sent["TensorBoardOutputConfig"] == {"S3OutputPath": f"s3://{BUCKET}/out/dogs-1/tensorboard/",
                                               "LocalPath": "/opt/ml/output/tensorboard"}
    assert sent["EnableNetworkIsolation"] is True
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in sent["InputDataConfig"]}
    assert channels == {"train": f"s3://{BUCKET}/dogs/train/", "valid": f"s3://{BUCKET}/dogs/valid/",
                        "pretrained": f"s3://{BUCKET}/weights/resnet50.pth"}
    assert sent["Environment"] == {"IMGCLS_NPROC_PER_NODE": "1", "NCCL_DEBUG": "WARN"}
    assert sent["ProfilerConfig"] == {"DisableProfiler": True} and "DebugHookConfig" not in sent
    assert sent["OutputDataConfig"] == {"S3OutputPath": f"s3://{BUCKET}/out/"}
    assert "created training job dogs-1" in out and "imgcls aws stop dogs-1" in out
    assert "at most 4 instance-hours of ml.g5.2xlarge (2 instance(s) x 2 h max run)" in out
    described = boto3.client("sagemaker").describe_training_job(TrainingJobName="dogs-1")
    assert described["CheckpointConfig"]["S3Uri"] == sent["CheckpointConfig"]["S3Uri"]
    rc, out, err = run(capsys, "status", "dogs-1")
    assert rc == 0, err
    assert out.startswith("training job dogs-1: Completed") and "2 x ml.g5.2xlarge, spot True" in out
    assert f"model: {described['ModelArtifacts']['S3ModelArtifacts']}" in out


def test_metric_definitions_read_real_training_lines():
    """The regexes sent pick each metric out of the lines training prints, and nothing else."""
    epoch = format_metrics("epoch=2/3", {"train_loss": 0.8, "train_accuracy": 0.7, "valid_loss": 0.5,
                                         "valid_accuracy": 0.875, "epoch_seconds": 1.5})
    best = format_metrics("best epoch=2", {"best_valid_loss": 0.45, "best_valid_accuracy": 0.9})
    assert last_values([epoch, best], METRIC_DEFINITIONS) == {
        "train_loss": 0.8, "train_accuracy": 0.7, "valid_loss": 0.5, "valid_accuracy": 0.875, "epoch_seconds": 1.5,
        "best_valid_loss": 0.45, "best_valid_accuracy": 0.9}


def test_warm_pool_debugger_and_profiler_on_request(moto, capsys):
    args = [a for a in TRAIN_ARGS if a not in ("--spot", "--max-wait", "10800")]
    rc, out, err = run(capsys, "train", *args, "--job-name", "dogs-2", "--keep-alive", "900", "--debugger", "--profiler")
    assert rc == 0, err
    sent = moto.only("CreateTrainingJob")
    assert sent["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 900
    assert sent["DebugHookConfig"] == {"S3OutputPath": f"s3://{BUCKET}/out/", "CollectionConfigurations": []}
    assert sent["ProfilerConfig"] == {"S3OutputPath": f"s3://{BUCKET}/out/", "DisableProfiler": False}
    assert sent["EnableManagedSpotTraining"] is False and "CheckpointConfig" not in sent
    assert "MaxWaitTimeInSeconds" not in sent["StoppingCondition"]


def test_role_bucket_and_region_are_found_the_usual_way(moto, capsys, monkeypatch):
    base = ["train", "--image-uri", IMAGE, "--train", f"s3://{BUCKET}/dogs/train/", "--job-name", "dogs-3"]
    rc, out, err = run(capsys, *base)
    assert rc == 2 and "no SageMaker execution role" in err and "--role" in err
    assert moto.requests("CreateTrainingJob") == []

    monkeypatch.setenv("IMGCLS_SAGEMAKER_ROLE", ROLE)
    default_bucket = f"sagemaker-{REGION}-{ACCOUNT}"  # the SDK's default bucket, created on first use
    rc, out, err = run(capsys, *base[:4], f"s3://{BUCKET}/dogs/train", *base[5:])
    assert rc == 2 and "must end in '/'" in err
    with pytest.raises(boto3.client("s3").exceptions.ClientError):  # a refused request creates nothing
        boto3.client("s3").head_bucket(Bucket=default_bucket)
    rc, out, err = run(capsys, *base)
    assert rc == 0, err
    sent = moto.only("CreateTrainingJob")
    assert sent["RoleArn"] == ROLE
    assert sent["OutputDataConfig"]["S3OutputPath"] == f"s3://{default_bucket}/imgcls/training/"
    assert f"created bucket s3://{default_bucket}/" in out
    boto3.client("s3").head_bucket(Bucket=default_bucket)

    monkeypatch.setenv("IMGCLS_BUCKET", BUCKET)
    eu_image = IMAGE.replace(REGION, "eu-west-1")
    rc, out, err = run(capsys, base[0], base[1], eu_image, *base[3:-1], "dogs-4", "--region", "eu-west-1", "--dry-run")
    assert rc == 0, err
    assert json.loads(out)["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/imgcls/training/"


@pytest.mark.parametrize("bucket, message", [
    ("Dogs_Data", "lowercase letters"), ("ab", "3 to 63 characters"), ("dogs..data", "two adjacent periods"),
    ("192.168.5.4", "IP address"), ("xn--dogs", "reserved"), ("dogs-s3alias", "reserved"), ("x" * 5000, "3 to 63 characters")])
def test_an_invalid_bucket_name_is_refused(moto, capsys, monkeypatch, bucket, message):
    argv = ["train", "--image-uri", IMAGE, "--role", ROLE, "--train", f"s3://{BUCKET}/dogs/train/", "--job-name", "dogs-b"]
    for how in ("flag", "env"):
        if how == "env":
            monkeypatch.setenv("IMGCLS_BUCKET", bucket)
        rc, _, err = run(capsys, *argv, *(["--bucket", bucket] if how == "flag" else []), "--dry-run")
        assert rc == 2 and message in err, err
        assert ("--bucket '" if how == "flag" else "IMGCLS_BUCKET '") in err and "not a valid S3 bucket name" in err, err
        assert len(err.strip().splitlines()) == 1 and len(err) < 300, err  # one line, the value shortened
    assert moto.requests() == []


def test_role_of_a_notebook_comes_from_its_assumed_role():
    assert role_from_caller(f"arn:aws:sts::{ACCOUNT}:assumed-role/AmazonSageMaker-ExecutionRole-2024/SageMaker") == \
        f"arn:aws:iam::{ACCOUNT}:role/service-role/AmazonSageMaker-ExecutionRole-2024"
    assert role_from_caller(f"arn:aws:sts::{ACCOUNT}:assumed-role/MyRole/me") == f"arn:aws:iam::{ACCOUNT}:role/MyRole"
    assert role_from_caller(f"arn:aws:iam::{ACCOUNT}:user/moto") is None


BAD_TRAIN = [
    (["--train", f"s3://{BUCKET}/dogs/train"], "InputDataConfig[0].DataSource.S3DataSource.S3Uri", "must end in '/'"),
    (["--output-path", f"s3://{BUCKET}/out"], "OutputDataConfig.S3OutputPath", "must end in '/'"),
    (["--spot", "--max-run", "3600", "--max-wait", "1800"], "StoppingCondition.MaxWaitTimeInSeconds", "less than MaxRuntimeInSeconds"),
    (["--max-wait", "7200"], "StoppingCondition.MaxWaitTimeInSeconds", "only applies to managed spot"),
    (["--spot", "--keep-alive", "600"], "ResourceConfig.KeepAlivePeriodInSeconds", "warm pools"),
    (["--instance-type", "ml.g5.xlarg"], "ResourceConfig.InstanceType", "did you mean ml.g5.xlarge"),
    (["--keep-alive", "30000"], "ResourceConfig.KeepAlivePeriodInSeconds", "at most 21600"),
    (["--job-name", "x" * 64], "TrainingJobName", "at most 63"),
    (["--job-name", "dogs_1"], "TrainingJobName", "does not match"),
    (["--env", "1BAD=x"], "Environment key '1BAD'", "does not match"),
    (["--hp", "lr=11"], "hyperparameter lr", "out of range"),
    (["--hp", "batchsize=8"], "hyperparameter batchsize", "did you mean batch-size"),
    # limits the service model leaves open (0 is there for instance groups and serverless training)
    (["--instance-count", "0"], "ResourceConfig.InstanceCount", "0; at least 1 allowed"),
    (["--volume-gb", "0"], "ResourceConfig.VolumeSizeInGB", "0; at least 1 allowed"),
    (["--max-run", "2419201"], "StoppingCondition.MaxRuntimeInSeconds", "at most 2419200"),
    (["--max-run", str(28_000_000 * 3600)], "StoppingCondition.MaxRuntimeInSeconds", "at most 2419200"),
    (["--image-uri", "imgcls:latest"], "AlgorithmSpecification.TrainingImage", "not an ECR image URI"),
    (["--image-uri", f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/Imgcls:1"], "AlgorithmSpecification.TrainingImage", "not an ECR image URI"),
    (["--image-uri", f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/imgcls:1"], "AlgorithmSpecification.TrainingImage",
     f"is in eu-west-1; SageMaker in {REGION}"),
    (["--train", "s3://Dogs_Data/train/"], "InputDataConfig[0].DataSource.S3DataSource.S3Uri", "not a valid S3 bucket name"),
    (["--pretrained", "s3://dogs..weights/resnet50.pth"], "InputDataConfig[1].DataSource.S3DataSource.S3Uri", "not a valid S3 bucket name"),
    (["--role", "imgcls-role"], "--role 'imgcls-role'", "not an IAM role ARN"),  # the default bucket's account comes from it
    (["--region", "us_east_1"], "--region 'us_east_1'", "not an AWS region"),
    (["--region", "us-east-9"], "--region 'us-east-9'", "not an AWS region (did you mean us-east-"),
]


@pytest.mark.parametrize("extra, field, message", BAD_TRAIN, ids=[b[1].split()[0] + "-" + b[2][:12] for b in BAD_TRAIN])
def test_dry_run_refuses_what_sagemaker_would(moto, capsys, extra, field, message):
    base = {"--image-uri": IMAGE, "--role": ROLE, "--train": f"s3://{BUCKET}/dogs/train/", "--output-path": f"s3://{BUCKET}/out/",
            "--job-name": "dogs-5"}
    for flag, value in zip(extra, extra[1:] + [None]):
        if flag in base and value is not None:
            base[flag] = value
    rest = [a for i, a in enumerate(extra) if not (a in base or (i and extra[i - 1] in base))]
    argv = [x for pair in base.items() for x in pair] + rest
    rc, out, err = run(capsys, "train", *argv, "--dry-run")
    assert rc == 2, (out, err)
    assert field in err and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    rc, out, err = run(capsys, "train", *argv)  # and without --dry-run nothing reaches AWS either
    assert rc == 2 and moto.requests() == []


def test_botocore_alone_accepts_what_the_dry_run_refuses():
    """botocore checks types and minimums only: these pass its validator but SageMaker rejects them."""
    from botocore.validate import ParamValidator
    from imgcls_client.aws.training import JobSettings, training_job_request
    settings = JobSettings(IMAGE, ROLE, {"train": f"s3://{BUCKET}/dogs/train"}, f"s3://{BUCKET}/out/",
                           instance_type="ml.g5.xlarg", spot=True, max_run_s=3600, max_wait_s=60)
    request = training_job_request("x" * 70, settings, {})
    from botocore.loaders import Loader
    from botocore.model import ServiceModel
    shape = ServiceModel(Loader().load_service_model("sagemaker", "service-2")).operation_model("CreateTrainingJob").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()
    with pytest.raises(RequestError):
        check_request("sagemaker", "CreateTrainingJob", request)


SPEC_HYPERBAND = """
objective: {metric: valid_loss, direction: minimize}
parameters:
  lr: {type: continuous, min: 0.0001, max: 0.1, scale: log}
  batch-size: {type: categorical, values: [16, 32, 64]}
  warmup-epochs: {type: continuous, min: 0, max: 2}
  finetune: {type: categorical, values: [head, all]}
static: {epochs: 12, backbone: resnet50, image-size: 224}
strategy: Hyperband
budget: {max_trials: 30, max_parallel: 3, max_runtime_s: 36000}
seed: 7
"""

TUNE_ARGS = ["--image-uri", IMAGE, "--role", ROLE, "--train", f"s3://{BUCKET}/dogs/train/", "--valid", f"s3://{BUCKET}/dogs/valid/",
             "--output-path", f"s3://{BUCKET}/tuning/", "--instance-type", "ml.g5.xlarge", "--max-run", "3600",
             "--spot", "--max-wait", "7200", "--network-isolation", "--env", "NCCL_DEBUG=WARN"]


def test_tune_creates_the_job_the_default_spec_describes(moto, capsys):
    args = [*TUNE_ARGS, "--job-name", "dogs-tune-1", "--stop-after-not-improving", "5", "--complete-on-convergence",
            "--warm-start", "dogs-tune-0", "--hp", "weights=none"]
    rc, dry, err = run(capsys, "tune", *args, "--dry-run")
    assert rc == 0, err
    rc, out, err = run(capsys, "tune", *args)
    assert rc == 0, err
    sent = moto.only("CreateHyperParameterTuningJob")
    assert sent == json.loads(dry)
    config, definition = sent["HyperParameterTuningJobConfig"], sent["TrainingJobDefinition"]
    assert config["Strategy"] == "Bayesian"
    # training keeps its best epoch, and a tuner ranks by a job's last value: the default objective is the best epoch's
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "best_valid_loss"}
    assert config["ParameterRanges"] == {
        "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "10", "ScalingType": "Linear"}],
        "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}],
        "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ["16", "32", "64", "128", "256"]}]}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 20, "MaxParallelTrainingJobs": 2, "MaxRuntimeInSeconds": 86400}
    assert config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["TuningJobCompletionCriteria"] == {"BestObjectiveNotImproving": {"MaxNumberOfTrainingJobsNotImproving": 5},
                                                     "ConvergenceDetected": {"CompleteOnConvergence": "Enabled"}}
    assert sent["WarmStartConfig"] == {"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "dogs-tune-0"}],
                                       "WarmStartType": "IdenticalDataAndAlgorithm"}
    assert definition["StaticHyperParameters"] == {"backbone": "resnet50", "weights": "none"}
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert "CheckpointConfig" not in definition  # a checkpoint never crosses jobs
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert definition["EnableNetworkIsolation"] is True and definition["Environment"] == {"NCCL_DEBUG": "WARN"}
    assert definition["HyperParameterTuningResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert "created tuning job dogs-tune-1" in out
    assert "at most 20 instance-hours of ml.g5.xlarge (20 jobs x 1 instance(s) x 1 h max run); spot prices" in out
    echoed = boto3.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="dogs-tune-1")
    assert echoed["HyperParameterTuningJobConfig"]["ParameterRanges"] == config["ParameterRanges"]


def test_tune_hyperband_turns_training_early_stopping_off(moto, capsys, tmp_path):
    spec = tmp_path / "hyperband.yaml"
    spec.write_text(SPEC_HYPERBAND)
    rc, out, err = run(capsys, "tune", *TUNE_ARGS, "--spec", str(spec), "--job-name", "dogs-hb", "--max-trials", "12")
    assert rc == 0, err
    sent = moto.only("CreateHyperParameterTuningJob")
    config, definition = sent["HyperParameterTuningJobConfig"], sent["TrainingJobDefinition"]
    assert config["Strategy"] == "Hyperband" and config["TrainingJobEarlyStoppingType"] == "Off"
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 12}}
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "valid_loss"}
    assert config["RandomSeed"] == 7
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3, "MaxRuntimeInSeconds": 36000}
    assert definition["StaticHyperParameters"] == {"epochs": "12", "backbone": "resnet50", "image-size": "224",
                                                   "early-stopping-patience": "0"}
    assert config["ParameterRanges"]["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"},
        {"Name": "warmup-epochs", "MinValue": "0", "MaxValue": "2", "ScalingType": "Linear"}]
    assert config["ParameterRanges"]["CategoricalParameterRanges"][1] == {"Name": "finetune", "Values": ["head", "all"]}


@pytest.mark.parametrize("spec_text, extra, message", [
    (SPEC_HYPERBAND, ["--job-name", "a" * 33], "HyperParameterTuningJobName: 33 characters; at most 32"),
    (SPEC_HYPERBAND, ["--hp", "lr=0.1"], "the spec tunes lr"),
    (SPEC_HYPERBAND, ["--hp", "batch_size=8"], "the spec tunes batch-size"),
    (SPEC_HYPERBAND, ["--hp", "early-stopping-patience=3"], "must be 0 with Hyperband"),
    (SPEC_HYPERBAND, ["--stop-after-not-improving", "2"], "MaxNumberOfTrainingJobsNotImproving: 2; at least 3"),
    (SPEC_HYPERBAND.replace("strategy: Hyperband", "strategy: Grid"), [], "Grid"),
    (SPEC_HYPERBAND.replace("static: {epochs: 12, ", "static: {"), [], "static.epochs"),
    (SPEC_HYPERBAND, ["--warm-start", "a", "--warm-start", "b", "--warm-start", "c", "--warm-start", "d", "--warm-start", "e",
                      "--warm-start", "f"], "ParentHyperParameterTuningJobs: 6 entries; at most 5"),
    (SPEC_HYPERBAND, ["--instance-count", "0"], "TrainingJobDefinition.HyperParameterTuningResourceConfig.InstanceCount: 0; at least 1"),
    (SPEC_HYPERBAND, ["--volume-gb", "0"], "TrainingJobDefinition.HyperParameterTuningResourceConfig.VolumeSizeInGB: 0; at least 1"),
    (SPEC_HYPERBAND, ["--max-run", "2419201"], "TrainingJobDefinition.StoppingCondition.MaxRuntimeInSeconds: 2419201 s; at most 2419200"),
    (SPEC_HYPERBAND, ["--image-uri", IMAGE.replace(REGION, "eu-west-1")], "TrainingJobDefinition.AlgorithmSpecification.TrainingImage"),
])
def test_tune_dry_run_refuses_what_sagemaker_would(moto, capsys, tmp_path, spec_text, extra, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text)
    rc, out, err = run(capsys, "tune", *TUNE_ARGS, "--spec", str(spec), *extra, "--dry-run")
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert moto.requests() == []


def test_tuning_jobs_never_share_a_checkpoint():
    from imgcls_client.aws.training import JobSettings, tuning_job_request
    from imgcls_client.spec import load_spec
    request = tuning_job_request("t", load_spec(), JobSettings(IMAGE, ROLE, {"train": "s3://bkt/t/"}, "s3://bkt/o/"))
    request["TrainingJobDefinition"]["CheckpointConfig"] = {"S3Uri": "s3://bkt/ckpt/"}
    with pytest.raises(RequestError, match="trials could share it and one resume another's checkpoint"):
        check_request("sagemaker", "CreateHyperParameterTuningJob", request)


# ---------------------------------------------------------------- deploy, invoke, delete

def test_deploy_with_autoscaling_then_delete_in_order(moto, capsys):
    rc, out, err = run(capsys, "train", *TRAIN_ARGS, "--job-name", "dogs-6")
    assert rc == 0, err
    model_data = boto3.client("sagemaker").describe_training_job(TrainingJobName="dogs-6")["ModelArtifacts"]["S3ModelArtifacts"]
    moto.recording.write_text("")
    rc, out, err = run(capsys, "deploy", "--training-job", "dogs-6", "--name", "dogs-ep", "--role", ROLE,
                       "--instance-type", "ml.c5.xlarge", "--instance-count", "2", "--autoscale", "2:6",
                       "--target-invocations", "300", "--env", "IMGCLS_DEFAULT_TOP_K=3")
    assert rc == 0, err
    ops = [op for op, _ in moto.requests()]
    assert ops.index("CreateModel") < ops.index("CreateEndpointConfig") < ops.index("CreateEndpoint") \
        < ops.index("DescribeEndpoint") < ops.index("RegisterScalableTarget") < ops.index("PutScalingPolicy")
    assert moto.only("CreateModel") == {"ModelName": "dogs-ep", "ExecutionRoleArn": ROLE, "EnableNetworkIsolation": False,
                                        "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": model_data,
                                                             "Environment": {"IMGCLS_DEFAULT_TOP_K": "3"}}}
    assert moto.only("CreateEndpointConfig") == {"EndpointConfigName": "dogs-ep", "ProductionVariants": [
        {"VariantName": "AllTraffic", "ModelName": "dogs-ep", "InitialVariantWeight": 1.0,
         "InstanceType": "ml.c5.xlarge", "InitialInstanceCount": 2}]}
    assert moto.only("CreateEndpoint") == {"EndpointName": "dogs-ep", "EndpointConfigName": "dogs-ep"}
    assert moto.only("RegisterScalableTarget") == {
        "ServiceNamespace": "sagemaker", "ResourceId": "endpoint/dogs-ep/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount", "MinCapacity": 2, "MaxCapacity": 6}
    policy = moto.only("PutScalingPolicy")
    assert policy["PolicyType"] == "TargetTrackingScaling"
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 300.0
    assert policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
    for what in ("created model dogs-ep", "created endpoint config dogs-ep", "created endpoint dogs-ep", "created autoscaling 2:6"):
        assert what in out

    rc, out, err = run(capsys, "status", "dogs-ep")
    assert rc == 0 and "endpoint dogs-ep: InService" in out, (out, err)

    moto.recording.write_text("")
    rc, out, err = run(capsys, "delete", "dogs-ep")
    assert rc == 0, err
    deletes = [op for op, _ in moto.requests() if op.startswith(("Delete", "Deregister"))]
    assert deletes == ["DeregisterScalableTarget", "DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]
    sm = boto3.client("sagemaker")
    for call, kwargs in ((sm.describe_endpoint, {"EndpointName": "dogs-ep"}),
                         (sm.describe_endpoint_config, {"EndpointConfigName": "dogs-ep"}),
                         (sm.describe_model, {"ModelName": "dogs-ep"})):
        with pytest.raises(sm.exceptions.ClientError):
            call(**kwargs)


def test_deploy_from_a_model_tar_serverless_dry_run(moto, capsys):
    rc, out, err = run(capsys, "deploy", "--model-data", f"s3://{BUCKET}/models/model.tar.gz", "--image-uri", IMAGE,
                       "--name", "dogs-sl", "--role", ROLE, "--serverless-memory", "4096", "--serverless-concurrency", "2", "--dry-run")
    assert rc == 0, err
    requests = json.loads(out)
    assert requests["CreateEndpointConfig"]["ProductionVariants"] == [
        {"VariantName": "AllTraffic", "ModelName": "dogs-sl", "InitialVariantWeight": 1.0,
         "ServerlessConfig": {"MemorySizeInMB": 4096, "MaxConcurrency": 2}}]
    assert requests["CreateModel"]["PrimaryContainer"]["ModelDataUrl"] == f"s3://{BUCKET}/models/model.tar.gz"
    assert moto.requests() == []
    rc, out, err = run(capsys, "deploy", "--model-data", f"s3://{BUCKET}/models/", "--image-uri", IMAGE, "--role", ROLE, "--dry-run")
    assert rc == 2 and "model.tar.gz" in err


MODEL_TAR = f"s3://{BUCKET}/models/model.tar.gz"
BAD_DEPLOY = [
    (["--serverless-memory", "2048", "--network-isolation"], "--network-isolation", "serverless endpoints do not support network isolation"),
    (["--serverless-memory", "2048", "--instance-type", "ml.c5.xlarge"], "--instance-type", "a serverless endpoint has no instances"),
    (["--serverless-memory", "2048", "--instance-count", "2"], "--instance-count", "a serverless endpoint has no instances"),
    (["--serverless-concurrency", "2"], "--serverless-concurrency", "only with --serverless-memory"),
    (["--instance-count", "0"], "ProductionVariants[0].InitialInstanceCount", "0; at least 1"),
    (["--image-uri", "docker.io/library/imgcls:1"], "CreateModel PrimaryContainer.Image", "not an ECR image URI"),
    (["--image-uri", IMAGE.replace(REGION, "ap-south-1")], "CreateModel PrimaryContainer.Image", f"is in ap-south-1; SageMaker in {REGION}"),
    (["--model-data", "s3://Models/model.tar.gz"], "CreateModel PrimaryContainer.ModelDataUrl", "not a valid S3 bucket name"),
    (["--region", "eu-west-7x"], "--region 'eu-west-7x'", "not an AWS region"),
]


@pytest.mark.parametrize("extra, field, message", BAD_DEPLOY, ids=[b[1].split()[-1] + "-" + b[2][:12] for b in BAD_DEPLOY])
def test_deploy_refuses_what_sagemaker_would(moto, capsys, extra, field, message):
    argv = ["--model-data", MODEL_TAR, "--image-uri", IMAGE, "--name", "dogs-bad", "--role", ROLE]
    for flag in ("--model-data", "--image-uri"):
        if flag in extra:
            i = argv.index(flag)
            del argv[i:i + 2]
    for dry_run in (["--dry-run"], []):
        rc, out, err = run(capsys, "deploy", *argv, *extra, *dry_run)
        assert rc == 2, (out, err)
        assert field in err and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert moto.requests() == []


# ---------------------------------------------------------------- a dry run sends nothing

class NoNetwork:
    """Every connection made in this process is recorded and refused; AWS_ENDPOINT_URL points at a
    local server that records any connection that reaches it all the same."""

    def __init__(self, monkeypatch):
        import socket
        import threading
        self.attempts: list = []
        self.reached: list = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

        def connect(sock, address, *args):
            self.attempts.append(address)
            raise ConnectionRefusedError(f"test: no network ({address})")

        def connect_ex(sock, address):
            self.attempts.append(address)
            return 111  # ECONNREFUSED

        def create_connection(address, *args, **kwargs):
            self.attempts.append(address)
            raise ConnectionRefusedError(f"test: no network ({address})")
        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "create_connection", create_connection)

    def _accept(self):
        try:
            while True:
                conn, peer = self.server.accept()
                self.reached.append(peer)
                conn.close()
        except OSError:  # closed
            pass

    def close(self):
        self.server.close()


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No credentials, the region in the config file only, IMDS not turned off (botocore would
    probe it for credentials), and no connection possible."""
    from moto_aws import clean_aws_env
    clean_aws_env(monkeypatch, tmp_path)
    (tmp_path / "aws-config").write_text(f"[default]\nregion = {REGION}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    guard = NoNetwork(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", guard.url)
    yield guard
    guard.close()


DRY_RUNS = {  # every command with --dry-run (the test checks this list against the parser)
    "train": [["--image-uri", IMAGE, "--role", ROLE, "--train", f"s3://{BUCKET}/dogs/train/", "--job-name", "dogs-dry",
               "--spot", "--tensorboard", "--network-isolation", "--dry-run"]],
    "tune": [["--image-uri", IMAGE, "--role", ROLE, "--train", f"s3://{BUCKET}/dogs/train/", "--job-name", "dogs-dry", "--dry-run"]],
    "deploy": [["--model-data", MODEL_TAR, "--image-uri", IMAGE, "--role", ROLE, "--name", "dogs-dry", "--dry-run"],
               ["--training-job", "dogs-1", "--role", ROLE, "--name", "dogs-dry", "--autoscale", "1:3", "--dry-run"],
               ["--training-job", "dogs-1", "--image-uri", IMAGE, "--role", ROLE, "--serverless-memory", "2048", "--dry-run"]],
}
# what only AWS could tell (the caller's role): refused, naming the flag, rather than asked
DRY_RUNS_WITHOUT_ROLE = [["train", *DRY_RUNS["train"][0][:2], *DRY_RUNS["train"][0][4:]],
                         ["tune", *DRY_RUNS["tune"][0][:2], *DRY_RUNS["tune"][0][4:]],
                         ["deploy", "--model-data", MODEL_TAR, "--image-uri", IMAGE, "--dry-run"]]


def dry_run_commands() -> list[str]:
    import argparse

    from imgcls_client.aws.cli import add_aws_parser

    def subcommands(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    top = argparse.ArgumentParser()
    add_aws_parser(top.add_subparsers())
    return sorted(name for name, p in subcommands(subcommands(top)["aws"]).items()
                  if any("--dry-run" in a.option_strings for a in p._actions))


def test_every_dry_run_sends_nothing(no_network, capsys):
    assert dry_run_commands() == sorted(DRY_RUNS), "a new --dry-run command: add it to DRY_RUNS"
    printed = {}
    for command, runs in DRY_RUNS.items():
        for argv in runs:
            rc, out, err = run(capsys, command, *argv)
            assert rc == 0, (command, argv, err)
            printed.setdefault(command, []).append((json.loads(out), err))
    for argv in DRY_RUNS_WITHOUT_ROLE:
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and "--dry-run needs --role" in err and len(err.strip().splitlines()) == 1, err
    assert no_network.attempts == [] and no_network.reached == []

    # the default bucket's account comes from the role ARN, not from STS
    train = printed["train"][0][0]
    assert train["OutputDataConfig"]["S3OutputPath"] == f"s3://sagemaker-{REGION}-{ACCOUNT}/imgcls/training/"
    # a training job's model and image are known to AWS only: placeholders that say so
    (deploy, err), (serverless, _) = printed["deploy"][1:]
    container = deploy["CreateModel"]["PrimaryContainer"]
    assert "dogs-1" in container["ModelDataUrl"] and "only AWS can tell" in container["ModelDataUrl"]
    assert "dogs-1" in container["Image"] and "only AWS can tell" in container["Image"]
    assert "placeholder" in err and "--model-data" in err
    assert serverless["CreateModel"]["PrimaryContainer"]["Image"] == IMAGE

    # the guard is real: a command that does need AWS tries to connect (here: IMDS, for credentials)
    rc, out, err = run(capsys, "status", "dogs-1")
    assert rc == 1 and no_network.attempts, err


def stubbed(monkeypatch, **clients):
    """AwsContext hands out these (Stubber-backed) clients; any other service is an error."""
    def client(self, name):
        assert name in clients, f"unexpected {name} client"
        return clients[name]
    monkeypatch.setattr(AwsContext, "client", client)


def fake_client(service: str):
    return boto3.client(service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x",
                        endpoint_url="http://127.0.0.1:9")  # never reached: every call is stubbed


def test_invoke_prints_each_answer_like_predict_sh(monkeypatch, capsys, tmp_path):
    """moto's runtime cannot take binary bodies: Stubber checks the exact InvokeEndpoint parameters."""
    jpeg, png = tmp_path / "a.jpg", tmp_path / "b.PNG"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0jpeg")
    png.write_bytes(b"\x89PNG\r\n\x1a\npng")
    runtime = fake_client("sagemaker-runtime")
    answers = [b'[{"label": "Red_circle", "index": 0, "probability": 0.91}]', b'[{"label": "Blue_square", "index": 1, "probability": 0.8}]']
    with Stubber(runtime) as stub:
        for path, content_type, answer in ((jpeg, "image/jpeg", answers[0]), (png, "image/png", answers[1])):
            stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
                              {"EndpointName": "dogs-ep", "ContentType": content_type, "Accept": "application/json",
                               "Body": path.read_bytes(), "CustomAttributes": "top_k=1"})
        stubbed(monkeypatch, **{"sagemaker-runtime": runtime})
        rc, out, err = run(capsys, "invoke", "dogs-ep", str(jpeg), str(png), "--top-k", "1", "--region", REGION)
        stub.assert_no_pending_responses()
    assert rc == 0, err
    assert out == answers[0].decode() + "\n" + answers[1].decode() + "\n"  # body + newline, as predict.sh's curl + echo
    assert f"invoke: {jpeg} -> dogs-ep" in err


# ---------------------------------------------------------------- status, stop, logs, waiting

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.timezone.utc)


def job_summary(name, status, params, value=None, objective_status="Succeeded", minutes=10, reason=None):
    summary = {"TrainingJobName": name, "TrainingJobArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{name}",
               "CreationTime": T0, "TrainingStartTime": T0, "TrainingEndTime": T0 + dt.timedelta(minutes=minutes),
               "TrainingJobStatus": status, "TunedHyperParameters": params, "ObjectiveStatus": objective_status}
    if value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {"MetricName": "best_valid_loss", "Value": value}
    if reason:
        summary["FailureReason"] = reason
    return summary


def test_status_lists_a_tuning_jobs_training_jobs_and_stop_stops_it(monkeypatch, capsys):
    sm = fake_client("sagemaker")
    with Stubber(sm) as stub:
        described = {"HyperParameterTuningJobName": "dogs-tune-1", "HyperParameterTuningJobArn": "arn:aws:sagemaker:x:1:hyper-parameter-tuning-job/dogs-tune-1",
                     "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {"MaxParallelTrainingJobs": 2}},
                     "HyperParameterTuningJobStatus": "InProgress", "CreationTime": T0,
                     "TrainingJobStatusCounters": {"Completed": 1, "InProgress": 1, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0},
                     "ObjectiveStatusCounters": {"Succeeded": 1, "Pending": 1, "Failed": 0}}
        stub.add_client_error("describe_training_job", "ValidationException", "Requested resource not found.",
                              expected_params={"TrainingJobName": "dogs-tune-1"})
        stub.add_response("describe_hyper_parameter_tuning_job", described, {"HyperParameterTuningJobName": "dogs-tune-1"})
        stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": [
            job_summary("dogs-tune-1-001-aaaaaaaa", "Completed", {"lr": "0.01"}, 0.42)], "NextToken": "t2"},
            {"HyperParameterTuningJobName": "dogs-tune-1", "MaxResults": 100})
        stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": [
            job_summary("dogs-tune-1-002-bbbbbbbb", "InProgress", {"lr": "0.0003"})]},
            {"HyperParameterTuningJobName": "dogs-tune-1", "MaxResults": 100, "NextToken": "t2"})
        # stop: found as a tuning job, then stopped
        stub.add_client_error("describe_training_job", "ValidationException", "Requested resource not found.")
        stub.add_response("describe_hyper_parameter_tuning_job", described, {"HyperParameterTuningJobName": "dogs-tune-1"})
        stub.add_response("stop_hyper_parameter_tuning_job", {}, {"HyperParameterTuningJobName": "dogs-tune-1"})
        stubbed(monkeypatch, sagemaker=sm)
        rc, out, err = run(capsys, "status", "dogs-tune-1", "--region", REGION)
        assert rc == 0, err
        assert "tuning job dogs-tune-1: InProgress" in out and "1 completed, 1 inprogress" in out
        assert re.search(r"dogs-tune-1-001-aaaaaaaa\s+Completed\s+0.42\s+lr=0.01", out)
        assert re.search(r"dogs-tune-1-002-bbbbbbbb\s+InProgress\s+lr=0.0003", out)
        rc, out, err = run(capsys, "stop", "dogs-tune-1", "--region", REGION)
        assert rc == 0 and "stopping tuning job dogs-tune-1" in out
        stub.assert_no_pending_responses()


def test_stop_a_training_job(monkeypatch, capsys):
    sm = fake_client("sagemaker")
    with Stubber(sm) as stub:
        stub.add_response("describe_training_job", {"TrainingJobName": "dogs-1", "TrainingJobArn": "arn:aws:sagemaker:x:1:training-job/dogs-1",
                                                    "ModelArtifacts": {"S3ModelArtifacts": ""}, "TrainingJobStatus": "InProgress",
                                                    "SecondaryStatus": "Training", "AlgorithmSpecification": {"TrainingInputMode": "File"},
                                                    "ResourceConfig": {"VolumeSizeInGB": 50}, "StoppingCondition": {}, "CreationTime": T0})
        stub.add_response("stop_training_job", {}, {"TrainingJobName": "dogs-1"})
        stubbed(monkeypatch, sagemaker=sm)
        rc, out, err = run(capsys, "stop", "dogs-1", "--region", REGION)
        stub.assert_no_pending_responses()
    assert rc == 0 and "stopping training job dogs-1" in out and "SIGTERM" in out


def test_ctrl_c_while_waiting_leaves_the_job_running(monkeypatch, capsys):
    sm = fake_client("sagemaker")
    with Stubber(sm) as stub:
        stub.add_response("describe_training_job", {"TrainingJobName": "dogs-1", "TrainingJobArn": "arn:aws:sagemaker:x:1:training-job/dogs-1",
                                                    "ModelArtifacts": {"S3ModelArtifacts": ""}, "TrainingJobStatus": "InProgress",
                                                    "SecondaryStatus": "Downloading", "AlgorithmSpecification": {"TrainingInputMode": "File"},
                                                    "ResourceConfig": {"VolumeSizeInGB": 50}, "StoppingCondition": {}, "CreationTime": T0})

        def interrupt(_seconds):
            raise KeyboardInterrupt
        monkeypatch.setattr(commands.time, "sleep", interrupt)
        with pytest.raises(SystemExit) as exited:
            commands.wait_training(sm, "dogs-1")
        stub.assert_no_pending_responses()  # and no StopTrainingJob: Stubber would have refused it
    assert exited.value.code == 130
    err = capsys.readouterr().err
    assert "dogs-1 keeps running" in err and "imgcls aws stop dogs-1" in err


def test_logs_print_a_training_jobs_cloudwatch_stream(moto, capsys):
    rc, out, err = run(capsys, "train", *TRAIN_ARGS, "--job-name", "dogs-7")
    assert rc == 0, err
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="dogs-7/algo-1-1764072000")
    lines = ["classes: 3; images 90/30/30", "epoch=1/1 train_loss=1.000000 valid_loss=0.900000", "best epoch=1 best_valid_loss=0.900000"]
    now = int(T0.timestamp() * 1000)
    logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="dogs-7/algo-1-1764072000",
                        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)])
    rc, out, err = run(capsys, "logs", "dogs-7", "--follow")  # moto's jobs are Completed at once: follow ends
    assert rc == 0, err
    assert out.splitlines() == lines
    # train --wait prints the same log while it waits
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="dogs-7b/algo-1-1764072000")
    logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName="dogs-7b/algo-1-1764072000",
                        logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)])
    rc, out, err = run(capsys, "train", *TRAIN_ARGS, "--job-name", "dogs-7b", "--wait")
    assert rc == 0, err
    assert out.splitlines()[-4:] == [lines[0], lines[1], lines[2], out.splitlines()[-1]]
    assert re.fullmatch(r"\d\d:\d\d:\d\d training job dogs-7b: Completed - Completed", out.splitlines()[-1])


# ---------------------------------------------------------------- results

def output_tar(history: list[dict]) -> bytes:
    """An output.tar.gz as SageMaker packs /opt/ml/output/data, with imgcls' own history writer."""
    import tempfile
    from pathlib import Path

    from imgcls.reports import write_history
    with tempfile.TemporaryDirectory() as folder:
        write_history(folder, history)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(Path(folder) / "history.csv", arcname="history.csv")
            tar.add(Path(folder) / "history.json", arcname="history.json")
        return buf.getvalue()


class TuningFake:
    """moto's SageMaker for everything it has (the tuning job as created), plus what it lacks:
    the per-job listing and the training jobs a tuning job ran."""

    def __init__(self, real, summaries, jobs):
        self.real, self.summaries, self.jobs = real, summaries, jobs

    def __getattr__(self, name):
        return getattr(self.real, name)

    def list_training_jobs_for_hyper_parameter_tuning_job(self, **kwargs):
        return {"TrainingJobSummaries": self.summaries}

    def describe_training_job(self, TrainingJobName):
        return self.jobs[TrainingJobName]


def test_results_pull_a_tuning_job_into_the_local_format(moto, capsys, tmp_path, monkeypatch):
    spec = tmp_path / "hyperband.yaml"
    spec.write_text(SPEC_HYPERBAND)
    rc, out, err = run(capsys, "tune", *TUNE_ARGS, "--spec", str(spec), "--job-name", "dogs-hb")
    assert rc == 0, err
    s3 = boto3.client("s3")
    histories = {"001-aaaaaaaa": [0.9, 0.6, 0.5], "002-bbbbbbbb": [1.2, 1.1], "003-cccccccc": [], "004-dddddddd": [0.8, 0.4]}
    summaries = [
        job_summary("dogs-hb-001-aaaaaaaa", "Completed", {"lr": "0.01", "batch-size": "32", "warmup-epochs": "0.5", "finetune": "all"}, 0.5),
        job_summary("dogs-hb-002-bbbbbbbb", "Stopped", {"lr": "0.09", "batch-size": "64", "warmup-epochs": "1.5", "finetune": "head"}, 1.1),
        job_summary("dogs-hb-003-cccccccc", "Failed", {"lr": "0.001", "batch-size": "16", "warmup-epochs": "1", "finetune": "all"},
                    reason="AlgorithmError: hyperparameter image-size: 2000 is out of range [32, 1024]"),
        job_summary("dogs-hb-004-dddddddd", "Completed", {"lr": "0.003", "batch-size": "16", "warmup-epochs": "0", "finetune": "head"}, 0.4),
    ]
    jobs = {}
    for summary in summaries:
        name = summary["TrainingJobName"]
        jobs[name] = {"TrainingJobName": name, "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/tuning"}, **(
            {"FailureReason": summary["FailureReason"]} if "FailureReason" in summary else {})}
        values = histories[name.removeprefix("dogs-hb-")]
        if values:
            rows = [{"epoch": e, "train_loss": v + 0.1, "valid_loss": v, "valid_accuracy": 1 - v / 2, "epoch_seconds": 3.0}
                    for e, v in enumerate(values, 1)]
            s3.put_object(Bucket=BUCKET, Key=f"tuning/{name}/output/output.tar.gz", Body=output_tar(rows))
    real = boto3.client("sagemaker")
    fake = TuningFake(real, summaries, jobs)
    original = AwsContext.client
    monkeypatch.setattr(AwsContext, "client", lambda self, name: fake if name == "sagemaker" else original(self, name))

    rc, out, err = run(capsys, "results", "dogs-hb", "--out", str(tmp_path / "res"))
    assert rc == 0, err
    import csv
    table = list(csv.DictReader(open(tmp_path / "res" / "results.csv")))
    number = lambda text: float(text) if text else None  # noqa: E731
    assert [(r["trial"], r["status"], number(r["valid_loss"]), number(r["epochs"])) for r in table] == [
        ("001-aaaaaaaa", "COMPLETE", 0.5, 3), ("002-bbbbbbbb", "PRUNED", 1.1, 2),
        ("003-cccccccc", "FAIL", None, None), ("004-dddddddd", "COMPLETE", 0.4, 2)]
    assert "image-size: 2000 is out of range" in table[2]["reason"]
    assert (number(table[0]["lr"]), number(table[0]["batch-size"]), number(table[0]["seconds"])) == (0.01, 32, 600)
    best = json.loads((tmp_path / "res" / "best_hyperparameters.json").read_text())
    assert best["lr"] == "0.003" and best["early-stopping-patience"] == "0" and best["epochs"] == "12"
    parse_hyperparameters(best)  # `imgcls train` takes it as it is
    for png in ("objective.png", "parameter_slices.png", "curves.png"):
        assert (tmp_path / "res" / png).stat().st_size > 5000
    assert "wrote" in out and "4 training jobs" in out

    # the same jobs as finished trials of a local study of the same spec (made by `imgcls tune`'s own code)
    import optuna
    from imgcls_client import study as local_study
    from imgcls_client.spec import load_spec
    local = local_study.Study(load_spec(spec), data=tmp_path, out=tmp_path / "study")
    local._lock.close()  # as when imgcls tune has exited
    for attempt in (1, 2):
        rc, out, err = run(capsys, "results", "dogs-hb", "--out", str(tmp_path / "res"), "--add-to-study", str(tmp_path / "study"))
        assert rc == 0, err
        assert f"added {3 if attempt == 1 else 0} finished trials" in out  # pulling twice adds nothing
    trials = optuna.load_study(study_name=local_study.STUDY_NAME, storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}").get_trials()
    assert [(t.state.name, t.value, t.user_attrs["sagemaker_training_job"]) for t in trials] == [
        ("COMPLETE", 0.5, "dogs-hb-001-aaaaaaaa"), ("PRUNED", None, "dogs-hb-002-bbbbbbbb"), ("COMPLETE", 0.4, "dogs-hb-004-dddddddd")]
    assert trials[2].params == {"lr": 0.003, "batch-size": 16, "warmup-epochs": 0.0, "finetune": "head"}
    assert trials[1].intermediate_values == {1: 1.2, 2: 1.1}


@pytest.mark.parametrize("argv", [
    ["tune", "--image-uri", IMAGE, "--role", ROLE, "--train", "s3://bkt/t/", "--output-path", "s3://bkt/o/", "--dry-run"],
    ["train", "--image-uri", IMAGE, "--role", ROLE, "--train", "s3://bkt/t/", "--output-path", "s3://bkt/o/", "--dry-run"],
    ["status", "dogs-8"],
])
def test_commands_that_need_no_model_import_neither_torch_nor_the_sdk(moto, argv):
    """They stay fast: no torch, and not the 7-second SageMaker SDK either."""
    run_training_job = boto3.client("sagemaker").create_training_job
    run_training_job(TrainingJobName="dogs-8", AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
                     RoleArn=ROLE, OutputDataConfig={"S3OutputPath": "s3://b/o/"}, StoppingCondition={"MaxRuntimeInSeconds": 60},
                     ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5})
    code = textwrap.dedent(f"""
        import sys
        from imgcls.cli import main
        rc = main({["aws", *argv]!r})
        print("HEAVY", sorted(m for m in ("torch", "torchvision", "sagemaker", "optuna") if m in sys.modules), file=sys.stderr)
        sys.exit(rc)
    """)
    import os
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr
    assert proc.stdout.strip()


# ---------------------------------------------------------------- invoke against the real model server

class RuntimeFake:
    """SageMaker's runtime API (POST /endpoints/NAME/invocations) in front of a real `imgcls serve`,
    passing on the body and the headers SageMaker passes to the container."""

    def __init__(self, endpoint: str, server_port: int):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        self.paths: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.paths.append(self.path)
                if self.path != f"/endpoints/{endpoint}/invocations":
                    self.send_error(404)
                    return
                headers = {k: self.headers[k] for k in ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes") if self.headers[k]}
                connection = http.client.HTTPConnection("127.0.0.1", server_port, timeout=60)
                connection.request("POST", "/invocations", body=body, headers=headers)
                reply = connection.getresponse()
                answer = reply.read()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.getheader("Content-Type", "application/json"))
                self.send_header("x-Amzn-Invoked-Production-Variant", "AllTraffic")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_invoke_prints_exactly_what_predict_sh_prints_from_the_same_model(trained_model_dir, tmp_path, monkeypatch, capsys):
    from test_serving import start_server, stop, wait_for_ping
    from conftest import REPO
    import shutil
    import tempfile
    from pathlib import Path
    # MMS binds a unix socket in the server's TMPDIR: pytest's long tmp paths exceed AF_UNIX's 108 bytes
    short = Path(tempfile.mkdtemp(prefix="imgcls-iv-"))
    server = start_server(trained_model_dir, short, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    runtime = None
    try:
        wait_for_ping(server, timeout=240)
        runtime = RuntimeFake("dogs-ep", server.port)
        images = sorted((REPO / "local_test" / "test_dir" / "input" / "data" / "train" / "test").rglob("*.jpg"))[:2]
        expected = ""
        for image in images:
            curl = subprocess.run(["bash", str(REPO / "local_test" / "predict.sh"), str(image), f"http://127.0.0.1:{server.port}/invocations"],
                                  capture_output=True, text=True, timeout=60)
            assert curl.returncode == 0, curl.stderr
            expected += curl.stdout
        for name in list(__import__("os").environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", runtime.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        import logging
        monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
        rc, out, err = run(capsys, "invoke", "dogs-ep", *map(str, images), "--region", REGION)
        assert rc == 0, err
        assert runtime.paths == ["/endpoints/dogs-ep/invocations"] * len(images)
        assert out == expected and json.loads(out.splitlines()[0])[0]["label"]
    finally:
        if runtime:
            runtime.close()
        stop(server)
        shutil.rmtree(short, ignore_errors=True)


def test_the_service_model_subset_is_cached_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    from imgcls_client.aws import validate
    from imgcls_client.aws.training import JobSettings, training_job_request
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    request = training_job_request("dogs-9", JobSettings(IMAGE, ROLE, {"train": "s3://b/t/"}, "s3://b/o/", instance_type="ml.g5.xlarg"), {})
    for damage in (None, "{not json", json.dumps({"operations": {}})):
        validate.service_model.cache_clear()
        cached = list((tmp_path / "imgcls").glob("sagemaker-service-model-*.json"))
        if damage is not None:
            cached[0].write_text(damage)
        with pytest.raises(RequestError, match="did you mean ml.g5.xlarge"):
            check_request("sagemaker", "CreateTrainingJob", request)
        assert json.loads(next((tmp_path / "imgcls").glob("sagemaker-service-model-*.json")).read_text())["operations"]
    validate.service_model.cache_clear()


def test_the_spec_is_rebuilt_from_a_tuning_job_description():
    """What `results` does when no --spec is given: the SDK- or CLI-made description gives the spec back."""
    from imgcls_client.aws.results import spec_from_tuning_job
    from imgcls_client.aws.training import JobSettings, tuning_job_request
    from imgcls_client.spec import load_spec, parse_spec
    import yaml
    settings = JobSettings(IMAGE, ROLE, {"train": "s3://b/t/"}, "s3://b/o/")
    grid = parse_spec({"parameters": {"batch-size": {"type": "categorical", "values": [16, 32]},
                                      "optimizer": {"type": "categorical", "values": ["adamw", "sgd"]}},
                       "static": {"epochs": 3}, "strategy": "Grid"})
    for spec in (load_spec(), parse_spec(yaml.safe_load(SPEC_HYPERBAND)), grid):
        request = tuning_job_request("t", spec, settings)
        described = {**request, "TrainingJobDefinition": {**request["TrainingJobDefinition"], "StaticHyperParameters": {
            **request["TrainingJobDefinition"]["StaticHyperParameters"], "_tuning_objective_metric": spec.objective_metric}}}
        if spec.strategy == "Grid":
            del described["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"]
        rebuilt = spec_from_tuning_job(described)
        assert rebuilt.parameters == spec.parameters
        text = lambda values: {k: str(v) for k, v in values.items()}  # noqa: E731
        assert text(rebuilt.fixed_hyperparameters()) == text(spec.fixed_hyperparameters())
        assert (rebuilt.objective_metric, rebuilt.direction, rebuilt.strategy, rebuilt.early_stopping, rebuilt.max_trials,
                rebuilt.max_parallel, rebuilt.seed) == (spec.objective_metric, spec.direction, spec.strategy, spec.early_stopping,
                                                         spec.max_trials, spec.max_parallel, spec.seed)


def test_logs_of_a_multi_host_job_name_each_host(moto, capsys):
    logs = boto3.client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    now = int(T0.timestamp() * 1000)
    for host in ("algo-1", "algo-2"):
        logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"dogs-10/{host}-1764072000")
        logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=f"dogs-10/{host}-1764072000",
                            logEvents=[{"timestamp": now, "message": f"hello from {host}"}])
    tail = commands.LogTail(logs, "/aws/sagemaker/TrainingJobs", "dogs-10/")
    tail.drain()
    tail.drain()  # nothing new: nothing printed twice
    assert capsys.readouterr().out.splitlines() == ["[algo-1] hello from algo-1", "[algo-2] hello from algo-2"]
