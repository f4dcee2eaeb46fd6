"""CreateTrainingJob and CreateHyperParameterTuningJob requests, in boto3's field names.

Pure functions: no AWS call, no boto3 import. `imgcls aws train/tune` send what these build, and
`--dry-run` prints it. The metric definitions are imgcls.metrics.METRIC_DEFINITIONS, the regexes
the local study reads the same lines with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from imgcls.hyperparams import parse_hyperparameters
from imgcls.metrics import METRIC_DEFINITIONS

from ..spec import TuningSpec, as_hyperparameter_text

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"       # imgcls' default checkpoint-dir
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"  # where imgcls writes its event files
CHANNELS = ("train", "valid", "test", "pretrained")
DEFAULT_TRAINING_INSTANCE = "ml.g5.xlarge"
DEFAULT_MAX_RUN_S = 24 * 3600


@dataclass
class JobSettings:
    """What a training job and every training job of a tuning job share."""
    image_uri: str
    role_arn: str
    channels: dict[str, str]                 # channel name -> S3 URI
    output_path: str                         # S3 prefix; SageMaker adds <job>/output/model.tar.gz
    instance_type: str = DEFAULT_TRAINING_INSTANCE
    instance_count: int = 1
    volume_gb: int = 50
    max_run_s: int = DEFAULT_MAX_RUN_S
    spot: bool = False
    max_wait_s: int | None = None            # spot: wait for capacity + run
    network_isolation: bool = False
    environment: dict[str, str] = field(default_factory=dict)
    max_retries: int | None = None


def hyperparameter_text(raw: Mapping[str, Any]) -> dict[str, str]:
    """Validated by imgcls' own table (names, types, ranges; no torch), sent as strings."""
    parse_hyperparameters(raw)
    return as_hyperparameter_text(raw)


def _channels(channels: Mapping[str, str]) -> list[dict]:
    return [{"ChannelName": name,
             "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}},
             "InputMode": "File"}
            for name, uri in channels.items()]


def _common(s: JobSettings) -> dict:
    definition: dict[str, Any] = {
        "AlgorithmSpecification": {"TrainingImage": s.image_uri, "TrainingInputMode": "File",
                                   "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS]},
        "RoleArn": s.role_arn,
        "InputDataConfig": _channels(s.channels),
        "OutputDataConfig": {"S3OutputPath": s.output_path},
        "StoppingCondition": {"MaxRuntimeInSeconds": s.max_run_s},
        "EnableManagedSpotTraining": s.spot,
        "EnableNetworkIsolation": s.network_isolation,
    }
    if s.spot or s.max_wait_s is not None:  # without spot, validation refuses a max wait
        definition["StoppingCondition"]["MaxWaitTimeInSeconds"] = s.max_wait_s if s.max_wait_s is not None else 2 * s.max_run_s
    if s.environment:
        definition["Environment"] = dict(s.environment)
    if s.max_retries is not None:
        definition["RetryStrategy"] = {"MaximumRetryAttempts": s.max_retries}
    return definition


def training_job_request(name: str, s: JobSettings, hyperparameters: Mapping[str, Any], *,
                         checkpoint_s3_uri: str | None = None, tensorboard_s3_uri: str | None = None,
                         keep_alive_s: int | None = None, debugger: bool = False, profiler: bool = False) -> dict:
    """CreateTrainingJob. The Debugger hook is left out and the profiler disabled unless asked for:
    imgcls logs its own metrics, and the SDK's defaults would add both."""
    request = {"TrainingJobName": name, "HyperParameters": hyperparameter_text(hyperparameters), **_common(s)}
    request["ResourceConfig"] = {"InstanceType": s.instance_type, "InstanceCount": s.instance_count, "VolumeSizeInGB": s.volume_gb}
    if keep_alive_s:
        request["ResourceConfig"]["KeepAlivePeriodInSeconds"] = keep_alive_s
    if checkpoint_s3_uri:
        request["CheckpointConfig"] = {"S3Uri": checkpoint_s3_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    if tensorboard_s3_uri:
        request["TensorBoardOutputConfig"] = {"S3OutputPath": tensorboard_s3_uri, "LocalPath": TENSORBOARD_LOCAL_PATH}
    if debugger:
        request["DebugHookConfig"] = {"S3OutputPath": s.output_path, "CollectionConfigurations": []}
    request["ProfilerConfig"] = {"S3OutputPath": s.output_path, "DisableProfiler": False} if profiler else {"DisableProfiler": True}
    return request


def parameter_ranges(spec: TuningSpec) -> dict[str, list[dict]]:
    """The spec's parameters as SageMaker ranges; values as the SDK writes them (str())."""
    ranges: dict[str, list[dict]] = {"IntegerParameterRanges": [], "ContinuousParameterRanges": [], "CategoricalParameterRanges": []}
    for p in spec.parameters.values():
        if p.type == "categorical":
            ranges["CategoricalParameterRanges"].append({"Name": p.name, "Values": list(as_hyperparameter_text(dict(enumerate(p.values))).values())})
        else:
            kind = "IntegerParameterRanges" if p.type == "integer" else "ContinuousParameterRanges"
            ranges[kind].append({"Name": p.name, "MinValue": str(p.min), "MaxValue": str(p.max), "ScalingType": p.sagemaker_scaling})
    return ranges


@dataclass
class CompletionCriteria:
    target_objective: float | None = None
    max_jobs_not_improving: int | None = None
    complete_on_convergence: bool | None = None

    def request(self) -> dict | None:
        criteria: dict[str, Any] = {}
        if self.target_objective is not None:
            criteria["TargetObjectiveMetricValue"] = float(self.target_objective)
        if self.max_jobs_not_improving is not None:
            criteria["BestObjectiveNotImproving"] = {"MaxNumberOfTrainingJobsNotImproving": self.max_jobs_not_improving}
        if self.complete_on_convergence is not None:
            criteria["ConvergenceDetected"] = {"CompleteOnConvergence": "Enabled" if self.complete_on_convergence else "Disabled"}
        return criteria or None


def tuning_job_request(name: str, spec: TuningSpec, s: JobSettings, *, extra_static: Mapping[str, Any] | None = None,
                       completion: CompletionCriteria | None = None, warm_start_parents: list[str] | None = None,
                       warm_start_type: str = "IdenticalDataAndAlgorithm", hyperband_min_epochs: int = 1) -> dict:
    """CreateHyperParameterTuningJob from a spec. The training jobs get no CheckpointConfig: it is not
    documented to be made unique per job, and a trial must never resume another trial's checkpoint."""
    static = {**spec.fixed_hyperparameters(), **(extra_static or {})}
    parse_hyperparameters(static)
    config: dict[str, Any] = {
        "Strategy": spec.strategy,
        "HyperParameterTuningJobObjective": {"Type": spec.direction.capitalize(), "MetricName": spec.objective_metric},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": spec.max_trials, "MaxParallelTrainingJobs": spec.max_parallel},
        "ParameterRanges": parameter_ranges(spec),
        "TrainingJobEarlyStoppingType": spec.early_stopping,
    }
    if spec.max_runtime_s is not None:
        config["ResourceLimits"]["MaxRuntimeInSeconds"] = spec.max_runtime_s
    if spec.strategy == "Hyperband":
        config["StrategyConfig"] = {"HyperbandStrategyConfig": {"MinResource": hyperband_min_epochs, "MaxResource": int(static["epochs"])}}
    if spec.seed is not None:
        config["RandomSeed"] = spec.seed
    criteria = (completion or CompletionCriteria()).request()
    if criteria:
        config["TuningJobCompletionCriteria"] = criteria
    definition = {"StaticHyperParameters": as_hyperparameter_text(static), **_common(s)}
    # The tuner's own resource field (what the SDK sends); it has no warm-pool keep-alive.
    definition["HyperParameterTuningResourceConfig"] = {"InstanceType": s.instance_type, "InstanceCount": s.instance_count,
                                                        "VolumeSizeInGB": s.volume_gb}
    request = {"HyperParameterTuningJobName": name, "HyperParameterTuningJobConfig": config, "TrainingJobDefinition": definition}
    if warm_start_parents:
        request["WarmStartConfig"] = {"ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": p} for p in warm_start_parents],
                                      "WarmStartType": warm_start_type}
    return request
