"""Requests checked before they are sent, more strictly than botocore does.

botocore's own validation only checks types, required members and minimums. Here every value is
also held against the service model's maximum lengths, enums and patterns, and against rules the
API only enforces once a job is running (spot needs MaxWaitTimeInSeconds at least MaxRuntime,
S3 prefixes end in `/`), or that the model leaves open (instance counts of 0, a 28-day run, ECR
image URIs, bucket names, regions). Errors name the field by its path in the request, in boto3's
names, and quote a user's value shortened (`shown`).
"""
from __future__ import annotations

import difflib
import functools
import json
import os
import re
from pathlib import Path
from typing import Any

from imgcls.errors import UserError
from imgcls.metrics import printable

SHOWN_CHARS = 80
MAX_TRAINING_RUNTIME_S = 28 * 24 * 3600  # StoppingCondition.MaxRuntimeInSeconds: "The maximum value is 28 days"


def shown(value: object) -> str:
    """A user's value as an error message quotes it: one line, at most SHOWN_CHARS characters."""
    text = printable(value)
    return f"'{text[:SHOWN_CHARS]}...'" if len(text) > SHOWN_CHARS else f"'{text}'"


class Placeholder(str):
    """A value only AWS can tell, which a dry run does not ask for: printed as it is, never checked."""


class RequestError(UserError):
    """A request that AWS would refuse (now or once the job runs); `field` is its path."""

    def __init__(self, operation: str, field: str, message: str):
        self.operation, self.field = operation, field
        super().__init__(f"{operation} {field}: {message}")


# The operations the client validates. Parsing SageMaker's whole service model takes about 0.4 s,
# so the shapes these reach are kept in a small cache file per botocore version (about 10 ms to read).
OPERATIONS = {"sagemaker": ("CreateTrainingJob", "CreateHyperParameterTuningJob", "CreateModel", "CreateEndpointConfig", "CreateEndpoint"),
              "application-autoscaling": ("RegisterScalableTarget", "PutScalingPolicy")}


class Shape:
    """A shape of the service model as botocore.model names its parts, over the raw JSON (reading
    the cached subset this way needs no botocore import)."""

    def __init__(self, shapes: dict, name: str):
        self._shapes, self.name = shapes, name
        self.raw = shapes[name]
        self.type_name = self.raw["type"]
        self.metadata = self.raw

    def _shape(self, ref: dict) -> "Shape":
        return Shape(self._shapes, ref["shape"])

    @property
    def members(self) -> dict:
        return {k: self._shape(v) for k, v in self.raw.get("members", {}).items()}

    @property
    def required_members(self) -> list[str]:
        return self.raw.get("required", [])

    @property
    def member(self) -> "Shape":
        return self._shape(self.raw["member"])

    @property
    def key(self) -> "Shape":
        return self._shape(self.raw["key"])

    @property
    def value(self) -> "Shape":
        return self._shape(self.raw["value"])


class ServiceModel:
    def __init__(self, model: dict):
        self.model = model

    def input_shape(self, operation: str) -> Shape:
        return Shape(self.model["shapes"], self.model["operations"][operation]["input"]["shape"])


@functools.lru_cache(maxsize=None)
def service_model(service: str) -> ServiceModel:
    return ServiceModel(_model_subset(service))


def _cache_file(service: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "imgcls" / f"{service}-service-model-{_botocore_version()}.json"


def _botocore_version() -> str:
    """botocore's version without importing it (its import costs more than the cached model)."""
    import importlib.util
    origin = importlib.util.find_spec("botocore").origin
    m = re.search(r"""^__version__ = ['"]([^'"]+)['"]""", Path(origin).read_text(errors="replace")[:4000], re.M)
    if m:
        return m.group(1)
    from importlib.metadata import version
    return version("botocore")


def _model_subset(service: str) -> dict:
    cache = _cache_file(service)
    try:
        subset = json.loads(cache.read_text())
        if set(subset["operations"]) == set(OPERATIONS[service]):
            return subset
    except (OSError, ValueError, KeyError):
        pass
    from botocore.loaders import Loader
    full = Loader().load_service_model(service, "service-2")
    operations = {op: full["operations"][op] for op in OPERATIONS[service]}
    shapes: dict = {}
    todo = [o["input"]["shape"] for o in operations.values()]
    while todo:
        name = todo.pop()
        if name in shapes:
            continue
        shape = {k: v for k, v in full["shapes"][name].items() if k != "documentation"}
        shape.get("members", {}) and [m.pop("documentation", None) for m in shape["members"].values()]
        shapes[name] = shape
        todo += [m["shape"] for m in shape.get("members", {}).values()]
        todo += [shape[k]["shape"] for k in ("member", "key", "value") if k in shape]
    subset = {"metadata": full["metadata"], "operations": operations, "shapes": shapes}
    try:  # a cache that cannot be written only costs time
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(subset))
        tmp.replace(cache)
    except OSError:
        pass
    return subset


@functools.lru_cache(maxsize=None)
def _pattern(text: str):
    try:
        return re.compile(text)
    except re.error:  # a few patterns use Java-only syntax (\p{L}); botocore does not check them either
        return None


def check_request(service: str, operation: str, request: dict, region: str | None = None) -> None:
    """Raise RequestError for the first value the service model or our rules reject; with the
    region the request goes to, images must come from that region's ECR."""
    _check(operation, service_model(service).input_shape(operation), request, "")
    rule = _RULES.get((service, operation))
    if rule:
        rule(operation, request, region)


def _check(operation: str, shape, value: Any, path: str) -> None:
    where = path or operation
    t = shape.type_name
    if t == "structure":
        if not isinstance(value, dict):
            raise RequestError(operation, where, f"expected a structure, got {type(value).__name__}")
        for name in shape.required_members:
            if name not in value:
                raise RequestError(operation, _join(path, name), "is required")
        for name, member in value.items():
            if name not in shape.members:
                close = difflib.get_close_matches(name, list(shape.members), n=1)
                raise RequestError(operation, _join(path, name), "unknown field" + (f"; did you mean {close[0]}?" if close else ""))
            _check(operation, shape.members[name], member, _join(path, name))
    elif t == "list":
        if not isinstance(value, list):
            raise RequestError(operation, where, f"expected a list, got {type(value).__name__}")
        _bounds(operation, where, shape, len(value), "entries")
        for i, item in enumerate(value):
            _check(operation, shape.member, item, f"{path}[{i}]")
    elif t == "map":
        if not isinstance(value, dict):
            raise RequestError(operation, where, f"expected a mapping, got {type(value).__name__}")
        _bounds(operation, where, shape, len(value), "entries")
        for key, item in value.items():
            _check(operation, shape.key, key, f"{path} key {shown(key)}")
            _check(operation, shape.value, item, f"{path}[{shown(key)}]")
    elif t == "string":
        if isinstance(value, Placeholder):
            return
        if not isinstance(value, str):
            raise RequestError(operation, where, f"expected a string, got {type(value).__name__} {shown(value)}")
        _bounds(operation, where, shape, len(value), "characters")
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            close = difflib.get_close_matches(value, enum, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; one of {', '.join(enum[:12])}{' ...' if len(enum) > 12 else ''}"
            raise RequestError(operation, where, f"{shown(value)} is not a valid value{hint}")
        pattern = shape.metadata.get("pattern")
        compiled = _pattern(pattern) if pattern else None
        if compiled is not None and not compiled.fullmatch(value):
            raise RequestError(operation, where, f"{shown(value)} does not match the pattern {pattern}")
    elif t in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(operation, where, f"expected an integer, got {shown(value)}")
        _bounds(operation, where, shape, value, None)
    elif t in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(operation, where, f"expected a number, got {shown(value)}")
        _bounds(operation, where, shape, value, None)
    elif t == "boolean":
        if not isinstance(value, bool):
            raise RequestError(operation, where, f"expected true or false, got {shown(value)}")
    elif t == "blob":
        if not isinstance(value, (bytes, bytearray, str)) and not hasattr(value, "read"):
            raise RequestError(operation, where, f"expected bytes, got {type(value).__name__}")


def _bounds(operation: str, where: str, shape, size, unit: str | None) -> None:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    what = f"{size} {unit}" if unit else str(size)
    if low is not None and size < low:
        raise RequestError(operation, where, f"{what}; at least {low} allowed")
    if high is not None and size > high:
        raise RequestError(operation, where, f"{what}; at most {high} allowed")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# ---------------------------------------------------------------- rules the model does not express

# S3's naming rules for general purpose buckets (the reserved prefixes and suffixes as documented).
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")


def bucket_name_problem(name: str) -> str | None:
    """Why S3 refuses this bucket name, or None."""
    if not 3 <= len(name) <= 63:
        return "must be 3 to 63 characters"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", name):
        return "lowercase letters, digits, '.' and '-' only, starting and ending with a letter or digit"
    if ".." in name:
        return "no two adjacent periods"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return "must not look like an IP address"
    if name.startswith(_BUCKET_RESERVED_PREFIXES) or name.endswith(_BUCKET_RESERVED_SUFFIXES):
        return f"prefixes {', '.join(_BUCKET_RESERVED_PREFIXES)} and suffixes {', '.join(_BUCKET_RESERVED_SUFFIXES)} are reserved"
    return None


def check_s3_uri(operation: str, field: str, uri: str) -> None:
    """s3://BUCKET/KEY with a bucket name S3 accepts."""
    if isinstance(uri, Placeholder):
        return
    if not uri.startswith("s3://") or len(uri) <= len("s3://") or uri[5] == "/":
        raise RequestError(operation, field, f"{shown(uri)} is not an s3://bucket/prefix/ URI")
    bucket = uri[len("s3://"):].split("/", 1)[0]
    problem = bucket_name_problem(bucket)
    if problem:
        raise RequestError(operation, field, f"bucket {shown(bucket)} is not a valid S3 bucket name ({problem})")


def require_s3_prefix(operation: str, field: str, uri: str) -> None:
    """S3 folders end in '/': SageMaker copies or syncs every key that starts with the text, so
    s3://b/run-1 would also take s3://b/run-10/..."""
    check_s3_uri(operation, field, uri)
    if not uri.endswith("/"):
        raise RequestError(operation, field, f"{shown(uri)} must end in '/': without it SageMaker also takes "
                                             f"every key that merely starts with {shown(uri.rsplit('/', 1)[-1])}")


# ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]/REPOSITORY[:TAG|@sha256:DIGEST], with ECR's
# repository pattern and Docker's tag rule. Without a TrainingImageConfig or ImageConfig (never
# sent here) SageMaker pulls from ECR only, and from the region of the job or model only.
_ECR_IMAGE = re.compile(r"\d{12}\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
                        r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*"
                        r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})?")


def check_image_uri(operation: str, field: str, uri: str, region: str | None) -> None:
    if isinstance(uri, Placeholder):
        return
    m = _ECR_IMAGE.fullmatch(uri)
    if not m:
        raise RequestError(operation, field, f"{shown(uri)} is not an ECR image URI "
                                             "ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY[:TAG|@sha256:DIGEST]")
    if region and m["region"] != region:
        raise RequestError(operation, field, f"the image is in {m['region']}; SageMaker in {region} pulls images from "
                                             f"{region}'s ECR only (push it there)")


@functools.lru_cache(maxsize=None)
def _partitions() -> list[dict]:
    from botocore.loaders import Loader
    return Loader().load_data("partitions")["partitions"]


def check_region(region: str, source: str) -> None:
    """A region botocore knows (its partitions file: no network); `source` names where it came from."""
    known = sorted(name for p in _partitions() for name in p["regions"] if not name.endswith("-global"))
    if region in known:
        return
    close = difflib.get_close_matches(region, known, n=1)
    hint = f"did you mean {close[0]}?" if close else f"e.g. {', '.join(known[:4])} ...; a region newer than botocore needs a newer boto3"
    raise UserError(f"{source} {shown(region)}: not an AWS region ({hint})")


def _check_resources(operation: str, field: str, resources: dict) -> None:
    """The model allows 0 instances and a 0 GB volume (instance groups, serverless training); a job
    on one instance type needs at least one of each."""
    for name in ("InstanceCount", "VolumeSizeInGB"):
        if "InstanceType" in resources and resources.get(name, 1) < 1:
            raise RequestError(operation, f"{field}.{name}", f"{resources[name]}; at least 1 allowed")


def _check_training_definition(operation: str, d: dict, region: str | None, prefix: str = "") -> None:
    stop = d.get("StoppingCondition", {})
    run, wait = stop.get("MaxRuntimeInSeconds"), stop.get("MaxWaitTimeInSeconds")
    if run is not None and run > MAX_TRAINING_RUNTIME_S:
        raise RequestError(operation, f"{prefix}StoppingCondition.MaxRuntimeInSeconds",
                           f"{run} s; at most {MAX_TRAINING_RUNTIME_S} allowed (28 days)")
    if d.get("EnableManagedSpotTraining"):
        if wait is None:
            raise RequestError(operation, f"{prefix}StoppingCondition.MaxWaitTimeInSeconds", "managed spot training needs a maximum wait")
        if run is not None and wait < run:
            raise RequestError(operation, f"{prefix}StoppingCondition.MaxWaitTimeInSeconds",
                               f"{wait} s is less than MaxRuntimeInSeconds ({run} s); with spot it covers the wait for capacity plus the run")
    elif wait is not None:
        raise RequestError(operation, f"{prefix}StoppingCondition.MaxWaitTimeInSeconds", "only applies to managed spot training")
    resources = d.get("ResourceConfig", {})
    if resources.get("KeepAlivePeriodInSeconds") and d.get("EnableManagedSpotTraining"):
        raise RequestError(operation, f"{prefix}ResourceConfig.KeepAlivePeriodInSeconds", "warm pools do not work with managed spot training")
    for field in ("ResourceConfig", "HyperParameterTuningResourceConfig"):
        _check_resources(operation, f"{prefix}{field}", d.get(field, {}))
    if "TrainingImage" in d.get("AlgorithmSpecification", {}):
        check_image_uri(operation, f"{prefix}AlgorithmSpecification.TrainingImage", d["AlgorithmSpecification"]["TrainingImage"], region)
    for i, channel in enumerate(d.get("InputDataConfig", [])):
        source = channel.get("DataSource", {}).get("S3DataSource")
        if source and source.get("S3DataType", "S3Prefix") == "S3Prefix":
            uri, field = source["S3Uri"], f"{prefix}InputDataConfig[{i}].DataSource.S3DataSource.S3Uri"
            if channel["ChannelName"] == "pretrained" and uri.endswith(".pth"):  # one weights file is fine
                check_s3_uri(operation, field, uri)
            else:
                require_s3_prefix(operation, field, uri)
    for field, path in (("OutputDataConfig", "S3OutputPath"), ("CheckpointConfig", "S3Uri"), ("TensorBoardOutputConfig", "S3OutputPath")):
        if field in d:
            require_s3_prefix(operation, f"{prefix}{field}.{path}", d[field][path])


def _check_tuning(operation: str, request: dict, region: str | None) -> None:
    config = request["HyperParameterTuningJobConfig"]
    d = request.get("TrainingJobDefinition", {})
    _check_training_definition(operation, d, region, "TrainingJobDefinition.")
    if "CheckpointConfig" in d:
        raise RequestError(operation, "TrainingJobDefinition.CheckpointConfig",
                           "not documented to be made unique per training job: trials could share it and one "
                           "resume another's checkpoint; leave it out")
    if config["Strategy"] == "Hyperband" and config.get("TrainingJobEarlyStoppingType", "Off") != "Off":
        raise RequestError(operation, "HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType", "must be Off with Hyperband")
    objective = config.get("HyperParameterTuningJobObjective", {}).get("MetricName")
    names = [m["Name"] for m in d.get("AlgorithmSpecification", {}).get("MetricDefinitions", [])]
    if objective is not None and objective not in names:
        raise RequestError(operation, "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective.MetricName",
                           f"{objective!r} has no metric definition (defined: {', '.join(names)})")
    ranges = config.get("ParameterRanges", {})
    tuned = [r["Name"] for kind in ranges.values() for r in kind]
    if len(tuned) > 30:
        raise RequestError(operation, "HyperParameterTuningJobConfig.ParameterRanges", f"{len(tuned)} ranges; at most 30 allowed")
    static = d.get("StaticHyperParameters", {})
    both = sorted(set(tuned) & set(static))
    if both:
        raise RequestError(operation, "TrainingJobDefinition.StaticHyperParameters", f"{both[0]} is also tuned")
    if config["Strategy"] == "Grid":
        ranged = [r["Name"] for kind in ("IntegerParameterRanges", "ContinuousParameterRanges") for r in ranges.get(kind, [])]
        if ranged:
            raise RequestError(operation, "HyperParameterTuningJobConfig.ParameterRanges", f"Grid takes categorical ranges only ({ranged[0]})")
    for kind in ("IntegerParameterRanges", "ContinuousParameterRanges"):
        for i, r in enumerate(ranges.get(kind, [])):
            low, high = float(r["MinValue"]), float(r["MaxValue"])
            if not low < high:
                raise RequestError(operation, f"HyperParameterTuningJobConfig.ParameterRanges.{kind}[{i}]", "MinValue must be below MaxValue")
            if r.get("ScalingType") == "Logarithmic" and low <= 0:
                raise RequestError(operation, f"HyperParameterTuningJobConfig.ParameterRanges.{kind}[{i}]", "Logarithmic scaling needs MinValue > 0")


def _check_training(operation: str, request: dict, region: str | None) -> None:
    _check_training_definition(operation, request, region)


def _check_model(operation: str, request: dict, region: str | None) -> None:
    container = request.get("PrimaryContainer", {})
    if "Image" in container:
        check_image_uri(operation, "PrimaryContainer.Image", container["Image"], region)
    if "ModelDataUrl" in container:
        check_s3_uri(operation, "PrimaryContainer.ModelDataUrl", container["ModelDataUrl"])


def _check_endpoint_config(operation: str, request: dict, region: str | None) -> None:
    for i, variant in enumerate(request["ProductionVariants"]):
        serverless = "ServerlessConfig" in variant
        if serverless and ("InstanceType" in variant or "InitialInstanceCount" in variant):
            raise RequestError(operation, f"ProductionVariants[{i}]", "a serverless variant has no instance type or count")
        if not serverless and ("InstanceType" not in variant or "InitialInstanceCount" not in variant):
            raise RequestError(operation, f"ProductionVariants[{i}]", "needs InstanceType and InitialInstanceCount (or ServerlessConfig)")


_RULES = {
    ("sagemaker", "CreateTrainingJob"): _check_training,
    ("sagemaker", "CreateHyperParameterTuningJob"): _check_tuning,
    ("sagemaker", "CreateModel"): _check_model,
    ("sagemaker", "CreateEndpointConfig"): _check_endpoint_config,
}
