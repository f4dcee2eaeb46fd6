"""Helpers for notebook users of the SageMaker Python SDK (v2): Estimator and HyperparameterTuner
arguments from the same spec and metric definitions `imgcls aws` uses.

    from sagemaker.estimator import Estimator
    from sagemaker.tuner import HyperparameterTuner
    from imgcls_client import sdk
    from imgcls_client.spec import load_spec

    spec = load_spec("tuning/default.yaml")
    estimator = Estimator(**sdk.estimator_kwargs(image_uri, role, hyperparameters=sdk.static_hyperparameters(spec),
                                                 output_path="s3://bucket/imgcls/tuning/"))
    tuner = HyperparameterTuner(estimator, **sdk.tuner_kwargs(spec))
    tuner.fit({"train": "s3://bucket/dogs/train/", "valid": "s3://bucket/dogs/valid/"}, wait=False)

The request this sends agrees with `imgcls aws tune --dry-run` on the image, hyperparameters,
ranges and scaling, objective, strategy, limits, early stopping, metric regexes, spot, network
isolation and environment (tests/test_sdk_helpers.py checks it against moto). The SDK itself is
imported only by the functions that build its objects.
"""
from __future__ import annotations

from typing import Any, Mapping

from imgcls.metrics import METRIC_DEFINITIONS

from .aws.training import CHECKPOINT_LOCAL_PATH, DEFAULT_MAX_RUN_S, DEFAULT_TRAINING_INSTANCE, TENSORBOARD_LOCAL_PATH, hyperparameter_text
from .spec import TuningSpec


def metric_definitions() -> list[dict[str, str]]:
    """imgcls' metric lines: Estimator(metric_definitions=...) and HyperparameterTuner(metric_definitions=...)."""
    return [dict(d) for d in METRIC_DEFINITIONS]


def static_hyperparameters(spec: TuningSpec, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The estimator's hyperparameters for a tuning job: the spec's static ones (and what its strategy
    implies: Hyperband turns training's own early stopping off), as strings."""
    static = {**spec.fixed_hyperparameters(), **(extra or {})}
    return hyperparameter_text(static)


def hyperparameter_ranges(spec: TuningSpec) -> dict:
    """{name: ContinuousParameter | IntegerParameter | CategoricalParameter} with the spec's scaling."""
    from sagemaker.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
    ranges = {}
    for p in spec.parameters.values():
        if p.type == "categorical":
            ranges[p.name] = CategoricalParameter(list(p.values))
        elif p.type == "integer":
            ranges[p.name] = IntegerParameter(p.min, p.max, scaling_type=p.sagemaker_scaling)
        else:
            ranges[p.name] = ContinuousParameter(p.min, p.max, scaling_type=p.sagemaker_scaling)
    return ranges


def estimator_kwargs(image_uri: str, role: str, *, hyperparameters: Mapping[str, Any] | None = None,
                     instance_type: str = DEFAULT_TRAINING_INSTANCE, instance_count: int = 1, volume_size: int = 50,
                     output_path: str | None = None, max_run: int = DEFAULT_MAX_RUN_S, spot: bool = False,
                     max_wait: int | None = None, checkpoint_s3_uri: str | None = None,
                     tensorboard_s3_uri: str | None = None, network_isolation: bool = False,
                     environment: Mapping[str, str] | None = None, keep_alive_period_in_seconds: int | None = None,
                     debugger: bool = False, profiler: bool = False, **more) -> dict:
    """Keyword arguments for sagemaker.estimator.Estimator, with imgcls' defaults: metric definitions
    from imgcls.metrics, hyperparameters validated and sent as strings, Debugger hook and profiler
    off unless asked (the SDK turns both on), spot with max_wait (default 2 x max_run)."""
    kwargs: dict[str, Any] = {
        "image_uri": image_uri, "role": role, "instance_type": instance_type, "instance_count": instance_count,
        "volume_size": volume_size, "max_run": max_run, "metric_definitions": metric_definitions(),
        "hyperparameters": hyperparameter_text(hyperparameters or {}),
        "enable_network_isolation": network_isolation, "disable_profiler": not profiler,
    }
    if not debugger:
        kwargs["debugger_hook_config"] = False
    if output_path:
        kwargs["output_path"] = output_path
    if spot:
        kwargs.update(use_spot_instances=True, max_wait=max_wait if max_wait is not None else 2 * max_run)
    if checkpoint_s3_uri:
        kwargs.update(checkpoint_s3_uri=checkpoint_s3_uri, checkpoint_local_path=CHECKPOINT_LOCAL_PATH)
    if tensorboard_s3_uri:
        from sagemaker.debugger import TensorBoardOutputConfig
        kwargs["tensorboard_output_config"] = TensorBoardOutputConfig(tensorboard_s3_uri, TENSORBOARD_LOCAL_PATH)
    if environment:
        kwargs["environment"] = dict(environment)
    if keep_alive_period_in_seconds:
        kwargs["keep_alive_period_in_seconds"] = keep_alive_period_in_seconds
    kwargs.update(more)
    return kwargs


def tuner_kwargs(spec: TuningSpec, *, target_objective: float | None = None, max_jobs_not_improving: int | None = None,
                 complete_on_convergence: bool | None = None, warm_start_parents: list[str] | None = None,
                 warm_start_type: str = "IdenticalDataAndAlgorithm", hyperband_min_epochs: int = 1) -> dict:
    """Keyword arguments for sagemaker.tuner.HyperparameterTuner(estimator, **kwargs) from a spec.
    The estimator must not set checkpoint_s3_uri: its training jobs could share it (see `imgcls aws tune`)."""
    from sagemaker.tuner import (HyperbandStrategyConfig, StrategyConfig, TuningJobCompletionCriteriaConfig, WarmStartConfig,
                                 WarmStartTypes)
    kwargs: dict[str, Any] = {
        "objective_metric_name": spec.objective_metric, "objective_type": spec.direction.capitalize(),
        "hyperparameter_ranges": hyperparameter_ranges(spec), "metric_definitions": metric_definitions(),
        "strategy": spec.strategy, "max_jobs": spec.max_trials, "max_parallel_jobs": spec.max_parallel,
        "early_stopping_type": spec.early_stopping,
    }
    if spec.max_runtime_s is not None:
        kwargs["max_runtime_in_seconds"] = spec.max_runtime_s
    if spec.seed is not None:
        kwargs["random_seed"] = spec.seed
    if spec.strategy == "Hyperband":
        epochs = int(spec.fixed_hyperparameters()["epochs"])
        kwargs["strategy_config"] = StrategyConfig(HyperbandStrategyConfig(max_resource=epochs, min_resource=hyperband_min_epochs))
    if target_objective is not None or max_jobs_not_improving is not None or complete_on_convergence is not None:
        kwargs["completion_criteria_config"] = TuningJobCompletionCriteriaConfig(
            max_number_of_training_jobs_not_improving=max_jobs_not_improving,
            complete_on_convergence=complete_on_convergence, target_objective_metric_value=target_objective)
    if warm_start_parents:
        kwargs["warm_start_config"] = WarmStartConfig(WarmStartTypes(warm_start_type), parents=set(warm_start_parents))
    return kwargs
