"""CreateModel, CreateEndpointConfig, CreateEndpoint and autoscaling requests (pure, no AWS call)."""
from __future__ import annotations

from dataclasses import dataclass, field

VARIANT = "AllTraffic"  # the SDK's name for a single-variant endpoint
DEFAULT_ENDPOINT_INSTANCE = "ml.m5.xlarge"
DEFAULT_SERVERLESS_CONCURRENCY = 5
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@dataclass
class EndpointSettings:
    instance_type: str = DEFAULT_ENDPOINT_INSTANCE
    instance_count: int = 1
    serverless_memory_mb: int | None = None   # serverless instead of instances
    serverless_max_concurrency: int = DEFAULT_SERVERLESS_CONCURRENCY
    environment: dict[str, str] = field(default_factory=dict)
    network_isolation: bool = False


def model_request(name: str, image_uri: str, model_data: str, role_arn: str, s: EndpointSettings) -> dict:
    container = {"Image": image_uri, "ModelDataUrl": model_data}
    if s.environment:
        container["Environment"] = dict(s.environment)
    return {"ModelName": name, "PrimaryContainer": container, "ExecutionRoleArn": role_arn,
            "EnableNetworkIsolation": s.network_isolation}


def endpoint_config_request(name: str, model_name: str, s: EndpointSettings) -> dict:
    variant = {"VariantName": VARIANT, "ModelName": model_name, "InitialVariantWeight": 1.0}
    if s.serverless_memory_mb is not None:
        variant["ServerlessConfig"] = {"MemorySizeInMB": s.serverless_memory_mb, "MaxConcurrency": s.serverless_max_concurrency}
    else:
        variant.update(InstanceType=s.instance_type, InitialInstanceCount=s.instance_count)
    return {"EndpointConfigName": name, "ProductionVariants": [variant]}


def endpoint_request(name: str, config_name: str) -> dict:
    return {"EndpointName": name, "EndpointConfigName": config_name}


def scaling_resource_id(endpoint: str) -> str:
    return f"endpoint/{endpoint}/variant/{VARIANT}"


def scalable_target_request(endpoint: str, min_count: int, max_count: int) -> dict:
    return {"ServiceNamespace": "sagemaker", "ResourceId": scaling_resource_id(endpoint),
            "ScalableDimension": SCALABLE_DIMENSION, "MinCapacity": min_count, "MaxCapacity": max_count}


def scaling_policy_request(endpoint: str, invocations_per_instance: float,
                           scale_in_cooldown_s: int = 300, scale_out_cooldown_s: int = 60) -> dict:
    """Target tracking on SageMakerVariantInvocationsPerInstance (requests per instance per minute)."""
    return {"PolicyName": f"{endpoint}-invocations", "ServiceNamespace": "sagemaker",
            "ResourceId": scaling_resource_id(endpoint), "ScalableDimension": SCALABLE_DIMENSION,
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": float(invocations_per_instance),
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": scale_in_cooldown_s, "ScaleOutCooldown": scale_out_cooldown_s}}
