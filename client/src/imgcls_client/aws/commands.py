"""What each `imgcls aws` command does (boto3). Parsers live in aws/cli.py; requests are built in
aws/training.py and aws/hosting.py and checked by aws/validate.py before anything is sent."""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

from imgcls.errors import UserError

from . import hosting, training
from .context import AwsContext
from .validate import Placeholder, check_request, shown

TRAINING_TERMINAL = ("Completed", "Failed", "Stopped")
TUNING_TERMINAL = ("Completed", "Failed", "Stopped")
ENDPOINT_SETTLED = ("InService", "Failed", "OutOfService")
TRAINING_LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def poll_seconds(default: float) -> float:
    return float(os.environ.get("IMGCLS_AWS_POLL_S", default))


def timestamp() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + f"{now.microsecond // 1000:03d}"


def context(args) -> AwsContext:
    """A dry run's context is offline: it creates no AWS client, so nothing can be sent."""
    return AwsContext(region=getattr(args, "region", None), role_arn=getattr(args, "role", None),
                      bucket_name=getattr(args, "bucket", None), offline=getattr(args, "dry_run", False))


def key_values(pairs: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{what} {pair!r}: expected NAME=VALUE")
        out[key] = value
    return out


def print_request(requests: dict[str, dict]) -> None:
    """--dry-run: the exact request(s) in boto3's names; one request prints bare, usable with
    `aws sagemaker <operation> --cli-input-json file://FILE`."""
    doc = next(iter(requests.values())) if len(requests) == 1 else requests
    print(json.dumps(doc, indent=2, default=str))
    print("dry run: " + ", ".join(requests) + " checked, nothing sent", file=sys.stderr)


def _output_root(ctx: AwsContext, args, what: str) -> str:
    """s3://<bucket>/imgcls/<what>/ unless --output-path says otherwise (the bucket is created later,
    once the request has passed validation)."""
    if getattr(args, "output_path", None):
        return args.output_path
    return f"s3://{ctx.bucket(create=False)}/imgcls/{what}/"


def _ensure_default_bucket(ctx: AwsContext, args) -> None:
    if not getattr(args, "output_path", None):
        ctx.bucket(create=True)


def job_settings(ctx: AwsContext, args, output_path: str) -> training.JobSettings:
    channels = {name: getattr(args, name) for name in training.CHANNELS if getattr(args, name, None)}
    return training.JobSettings(
        image_uri=args.image_uri, role_arn=ctx.role(), channels=channels, output_path=output_path,
        instance_type=args.instance_type, instance_count=args.instance_count, volume_gb=args.volume_gb,
        max_run_s=args.max_run, spot=args.spot, max_wait_s=args.max_wait, network_isolation=args.network_isolation,
        environment=key_values(args.env, "--env"), max_retries=args.max_retries)


def hyperparameters_from(args) -> dict:
    raw: dict = {}
    if getattr(args, "hyperparameters", None):
        try:
            raw.update(json.loads(Path(args.hyperparameters).read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"--hyperparameters {args.hyperparameters}: {exc}") from None
    raw.update(key_values(getattr(args, "hp", None), "--hp"))
    return raw


def budget_note(args, jobs: int = 1) -> str:
    """The most instance-hours the request can bill (every job running to its MaxRuntimeInSeconds)."""
    hours = jobs * args.instance_count * args.max_run / 3600
    what = f"{jobs} jobs x " if jobs > 1 else ""
    return (f"at most {hours:g} instance-hours of {args.instance_type} ({what}{args.instance_count} instance(s) x "
            f"{args.max_run / 3600:g} h max run){'; spot prices' if args.spot else ''}")


def _checked_dry_run(ctx, args, operation: str, request: dict, cost: str) -> bool:
    """Validate the request; with --dry-run print it and say so (True), else make sure the bucket exists (False)."""
    check_request("sagemaker", operation, request, region=ctx.region_name())
    _isolation_note(args)
    if args.dry_run:
        print_request({operation: request})
        print(f"cost: {cost}", file=sys.stderr)
        return True
    _ensure_default_bucket(ctx, args)
    return False


def _isolation_note(args) -> None:
    if args.network_isolation and not args.pretrained:
        print("note: with network isolation and no --pretrained channel, ImageNet weights must be baked into the image "
              "(BAKE_WEIGHTS=1, the default) or the job must use weights=none", file=sys.stderr)


# ---------------------------------------------------------------- train

def cmd_train(args) -> int:
    ctx = context(args)
    ctx.role()  # before anything is created
    name = args.job_name or f"imgcls-{timestamp()}"
    output = _output_root(ctx, args, "training")
    # Beside the job's own output: a spot job resumes from its own checkpoints, never another job's.
    checkpoint = args.checkpoint_s3_uri or (f"{output}{name}/checkpoints/" if args.spot else None)
    tensorboard = args.tensorboard_s3_uri or (f"{output}{name}/tensorboard/" if args.tensorboard else None)
    request = training.training_job_request(
        name, job_settings(ctx, args, output), hyperparameters_from(args), checkpoint_s3_uri=checkpoint,
        tensorboard_s3_uri=tensorboard, keep_alive_s=args.keep_alive, debugger=args.debugger, profiler=args.profiler)
    if _checked_dry_run(ctx, args, "CreateTrainingJob", request, budget_note(args)):
        return 0
    sm = ctx.client("sagemaker")
    arn = sm.create_training_job(**request)["TrainingJobArn"]
    print(f"created training job {name} ({arn})")
    print(f"  model:        {output}{name}/output/model.tar.gz")
    if checkpoint:
        print(f"  checkpoints:  {checkpoint}")
    if tensorboard:
        print(f"  tensorboard:  {tensorboard}")
    print(f"  cost:         {budget_note(args)}")
    print(f"  follow: imgcls aws logs {name} --follow    stop: imgcls aws stop {name}")
    if args.wait:
        return wait_training(sm, name, logs=ctx.client("logs"))
    return 0


def wait_loop(what: str, name: str, describe: Callable[[], tuple[str, str, bool]], interval: float) -> str:
    """Poll until terminal, printing each change. Ctrl-C leaves the job running and says so."""
    last = None
    try:
        while True:
            status, detail, done = describe()
            line = f"{status}{' - ' + detail if detail else ''}"
            if line != last:
                print(f"{dt.datetime.now().strftime('%H:%M:%S')} {what} {name}: {line}", flush=True)
                last = line
            if done:
                return status
            time.sleep(interval)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; {what} {name} keeps running. Stop it with: imgcls aws stop {name}"
              if what != "endpoint" else f"\nstopped waiting; endpoint {name} is still being created. "
              f"Remove it with: imgcls aws delete {name}", file=sys.stderr)
        raise SystemExit(130)


def wait_training(sm, name: str, logs=None) -> int:
    """Wait for a training job; with a CloudWatch Logs client, print its log as it comes (as the SDK's fit does)."""
    tail = LogTail(logs, TRAINING_LOG_GROUP, f"{name}/") if logs is not None else None

    def describe():
        d = sm.describe_training_job(TrainingJobName=name)
        if tail is not None:
            tail.drain()
        return d["TrainingJobStatus"], d.get("SecondaryStatus", ""), d["TrainingJobStatus"] in TRAINING_TERMINAL
    status = wait_loop("training job", name, describe, poll_seconds(30 if tail is None else 5))
    if status != "Completed":
        reason = sm.describe_training_job(TrainingJobName=name).get("FailureReason", "")
        print(f"training job {name} {status.lower()}{': ' + reason if reason else ''}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- tune

def cmd_tune(args) -> int:
    from ..spec import load_spec
    spec = load_spec(args.spec).replace(max_trials=args.max_trials, max_parallel=args.parallel, max_runtime_s=args.max_runtime)
    ctx = context(args)
    ctx.role()  # before anything is created
    name = args.job_name or f"imgcls-{timestamp()[2:]}"  # tuning job names: at most 32 characters
    output = _output_root(ctx, args, "tuning")
    extra = hyperparameters_from(args)
    from imgcls.hyperparams import ALIASES
    for key, value in extra.items():
        hp = ALIASES.get(key, key).replace("_", "-")
        if hp in spec.parameters:
            raise UserError(f"--hp {key}: the spec tunes {hp}; change the spec instead")
        if spec.strategy == "Hyperband" and hp == "early-stopping-patience" and str(value) != "0":
            raise UserError(f"--hp {key}: must be 0 with Hyperband, which stops trials itself")
    completion = training.CompletionCriteria(args.target_objective, args.stop_after_not_improving, args.complete_on_convergence)
    request = training.tuning_job_request(
        name, spec, job_settings(ctx, args, output), extra_static=extra, completion=completion,
        warm_start_parents=args.warm_start, warm_start_type=args.warm_start_type)
    if _checked_dry_run(ctx, args, "CreateHyperParameterTuningJob", request, budget_note(args, spec.max_trials)):
        return 0
    sm = ctx.client("sagemaker")
    arn = sm.create_hyper_parameter_tuning_job(**request)["HyperParameterTuningJobArn"]
    print(f"created tuning job {name} ({arn})")
    print(f"  {spec.strategy}, objective {spec.objective_metric} ({spec.direction}), up to {spec.max_trials} training jobs, "
          f"{spec.max_parallel} at a time, on {args.instance_count} x {args.instance_type}")
    print(f"  cost: {budget_note(args, spec.max_trials)}")
    print(f"  outputs: {output}<training job>/output/")
    if args.spot:
        print("  spot: no checkpoints are shared between trials, so an interrupted trial starts again from epoch 1")
    print(f"  progress: imgcls aws status {name}    results: imgcls aws results {name} --out DIR    stop: imgcls aws stop {name}")
    if args.wait:
        return wait_tuning(sm, name)
    return 0


def wait_tuning(sm, name: str) -> int:
    def describe():
        d = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        c = d.get("TrainingJobStatusCounters", {})
        detail = ", ".join(f"{v} {k.lower()}" for k, v in c.items() if v)
        return d["HyperParameterTuningJobStatus"], detail, d["HyperParameterTuningJobStatus"] in TUNING_TERMINAL
    status = wait_loop("tuning job", name, describe, poll_seconds(60))
    return 0 if status == "Completed" else 1


# ---------------------------------------------------------------- status / stop / logs

def _not_found(exc) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    message = exc.response.get("Error", {}).get("Message", "")
    return code in ("ResourceNotFound", "ResourceNotFoundException") or (code == "ValidationException" and ("not found" in message.lower() or "could not find" in message.lower()))


def find_kind(sm, name: str, kinds=("training", "tuning", "endpoint")) -> tuple[str, dict]:
    """Which kind of resource NAME is, with its description."""
    from botocore.exceptions import ClientError
    calls = {"training": lambda: sm.describe_training_job(TrainingJobName=name),
             "tuning": lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
             "endpoint": lambda: sm.describe_endpoint(EndpointName=name)}
    for kind in kinds:
        if kind == "tuning" and len(name) > 32:
            continue
        try:
            return kind, calls[kind]()
        except ClientError as exc:
            if not _not_found(exc):
                raise
    raise UserError(f"no {' or '.join(kinds)} named {name!r} in this account and region")


def _kinds(args) -> tuple[str, ...]:
    return (args.kind,) if getattr(args, "kind", None) else ("training", "tuning", "endpoint")


def cmd_status(args) -> int:
    ctx = context(args)
    sm = ctx.client("sagemaker")
    kind, d = find_kind(sm, args.name, _kinds(args))
    if kind == "training":
        print(f"training job {args.name}: {d['TrainingJobStatus']} ({d.get('SecondaryStatus', '')})")
        if d.get("FailureReason"):
            print(f"  failure: {d['FailureReason']}")
        rc = d.get("ResourceConfig", {})
        print(f"  {rc.get('InstanceCount')} x {rc.get('InstanceType')}, spot {d.get('EnableManagedSpotTraining', False)}, "
              f"billable {d.get('BillableTimeInSeconds', 0)} s of {d.get('TrainingTimeInSeconds', 0)} s")
        for m in d.get("FinalMetricDataList", []):
            print(f"  {m['MetricName']} = {m['Value']:.6g}")
        if d.get("ModelArtifacts"):
            print(f"  model: {d['ModelArtifacts']['S3ModelArtifacts']}")
    elif kind == "tuning":
        print(f"tuning job {args.name}: {d['HyperParameterTuningJobStatus']}")
        counters = d.get("TrainingJobStatusCounters", {})
        print("  training jobs: " + ", ".join(f"{v} {k.lower()}" for k, v in counters.items()))
        best = d.get("BestTrainingJob")
        if best:
            metric = best.get("FinalHyperParameterTuningJobObjectiveMetric", {})
            print(f"  best: {best['TrainingJobName']} {metric.get('MetricName', '')} = {metric.get('Value', '')}")
        if getattr(args, "jobs", True):
            for job in list_tuning_training_jobs(sm, args.name):
                value = job.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
                params = " ".join(f"{k}={v}" for k, v in job.get("TunedHyperParameters", {}).items())
                print(f"  {job['TrainingJobName']}  {job['TrainingJobStatus']:<10} "
                      f"{'' if value is None else f'{value:.6g}':>10}  {params}")
    else:
        print(f"endpoint {args.name}: {d['EndpointStatus']}")
        if d.get("FailureReason"):
            print(f"  failure: {d['FailureReason']}")
        for v in d.get("ProductionVariants", []):
            print(f"  variant {v['VariantName']}: {v.get('CurrentInstanceCount', '?')} instance(s)")
    return 0


def list_tuning_training_jobs(sm, name: str) -> list[dict]:
    jobs, token = [], None
    while True:
        kwargs = {"HyperParameterTuningJobName": name, "MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        page = sm.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
        jobs += page["TrainingJobSummaries"]
        token = page.get("NextToken")
        if not token:
            return sorted(jobs, key=lambda j: j.get("CreationTime") or 0)


def cmd_stop(args) -> int:
    ctx = context(args)
    sm = ctx.client("sagemaker")
    kind, d = find_kind(sm, args.name, _kinds(args) if args.kind else ("training", "tuning"))
    if kind == "training":
        sm.stop_training_job(TrainingJobName=args.name)
        print(f"stopping training job {args.name} (it gets SIGTERM and saves a checkpoint; SIGKILL follows 120 s later)")
    else:
        sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=args.name)
        print(f"stopping tuning job {args.name} and its running training jobs")
    return 0


def cmd_logs(args) -> int:
    ctx = context(args)
    sm, logs = ctx.client("sagemaker"), ctx.client("logs")
    if args.endpoint:
        group, prefix, finished = f"/aws/sagemaker/Endpoints/{args.name}", "", lambda: True
    else:
        kind, _ = find_kind(sm, args.name, ("training", "tuning"))
        if kind == "tuning":
            raise UserError(f"{args.name} is a tuning job; logs belong to its training jobs (`imgcls aws status {args.name}` lists them)")
        group, prefix = TRAINING_LOG_GROUP, f"{args.name}/"
        finished = lambda: sm.describe_training_job(TrainingJobName=args.name)["TrainingJobStatus"] in TRAINING_TERMINAL  # noqa: E731
    tail = LogTail(logs, group, prefix)
    try:
        while True:
            done = not args.follow or finished()
            tail.drain()
            if done:
                break
            time.sleep(poll_seconds(5))
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running. Stop it with: imgcls aws stop {args.name}", file=sys.stderr)
        return 130
    if not tail.streams:
        print(f"no log streams yet for {args.name} in {group}", file=sys.stderr)
    return 0


class LogTail:
    """Reads every stream of a job (one per host) from where it left off."""

    def __init__(self, logs, group: str, prefix: str):
        self.logs, self.group, self.prefix = logs, group, prefix
        self.tokens: dict[str, str | None] = {}

    @property
    def streams(self) -> list[str]:
        return list(self.tokens)

    def drain(self) -> None:
        from botocore.exceptions import ClientError
        try:
            kwargs = {"logGroupName": self.group}
            if self.prefix:
                kwargs["logStreamNamePrefix"] = self.prefix
            for s in self.logs.describe_log_streams(**kwargs).get("logStreams", []):
                self.tokens.setdefault(s["logStreamName"], None)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            return  # no group yet: the job has not started logging
        several = len(self.tokens) > 1
        for stream, token in self.tokens.items():
            while True:
                kwargs = {"logGroupName": self.group, "logStreamName": stream, "startFromHead": True}
                if token:
                    kwargs["nextToken"] = token
                page = self.logs.get_log_events(**kwargs)
                for event in page.get("events", []):
                    host = stream[len(self.prefix):].split("-")[0:2] if several else None
                    print(f"[{'-'.join(host)}] {event['message']}" if host else event["message"], flush=True)
                new = page.get("nextForwardToken")
                if not new or new == token:
                    break
                token = new
            self.tokens[stream] = token


# ---------------------------------------------------------------- deploy / invoke / delete

def cmd_deploy(args) -> int:
    ctx = context(args)
    _refuse_serverless_conflicts(args)
    name = args.name or f"imgcls-{timestamp()}"
    model_data, image = _model_source(ctx, args)
    given = {"instance_type": args.instance_type, "instance_count": args.instance_count,
             "serverless_max_concurrency": args.serverless_concurrency}  # None: EndpointSettings' default
    settings = hosting.EndpointSettings(
        serverless_memory_mb=args.serverless_memory, environment=key_values(args.env, "--env"),
        network_isolation=args.network_isolation, **{k: v for k, v in given.items() if v is not None})
    requests = {
        "CreateModel": hosting.model_request(name, image, model_data, ctx.role(), settings),
        "CreateEndpointConfig": hosting.endpoint_config_request(name, name, settings),
        "CreateEndpoint": hosting.endpoint_request(name, name),
    }
    autoscale = None
    if args.autoscale:
        low, sep, high = args.autoscale.partition(":")
        if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high):
            raise UserError(f"--autoscale {shown(args.autoscale)}: expected MIN:MAX instance counts, 1 <= MIN <= MAX")
        autoscale = {"RegisterScalableTarget": hosting.scalable_target_request(name, int(low), int(high)),
                     "PutScalingPolicy": hosting.scaling_policy_request(name, args.target_invocations)}
        requests.update(autoscale)
    for op, request in requests.items():
        service = "application-autoscaling" if op in ("RegisterScalableTarget", "PutScalingPolicy") else "sagemaker"
        check_request(service, op, request, region=ctx.region_name())
    if args.dry_run:
        print_request(requests)
        unknown = [field for field, value in (("ModelDataUrl", model_data), ("Image", image)) if isinstance(value, Placeholder)]
        if unknown:
            print(f"dry run: {' and '.join(unknown)}: placeholders for the training job's, which only AWS can tell "
                  "(pass --model-data and --image-uri to see real values)", file=sys.stderr)
        return 0
    sm = ctx.client("sagemaker")
    sm.create_model(**requests["CreateModel"])
    print(f"created model {name} ({image}, {model_data})")
    sm.create_endpoint_config(**requests["CreateEndpointConfig"])
    variant = requests["CreateEndpointConfig"]["ProductionVariants"][0]
    where = (f"serverless, {args.serverless_memory} MB" if args.serverless_memory is not None
             else f"{settings.instance_count} x {settings.instance_type}")
    print(f"created endpoint config {name} (variant {variant['VariantName']}, {where})")
    sm.create_endpoint(**requests["CreateEndpoint"])
    print(f"created endpoint {name}")
    if args.wait or autoscale:
        status = wait_endpoint(sm, name)
        if status != "InService":
            return 1
    if autoscale:
        scaling = ctx.client("application-autoscaling")
        scaling.register_scalable_target(**autoscale["RegisterScalableTarget"])
        arn = scaling.put_scaling_policy(**autoscale["PutScalingPolicy"])["PolicyARN"]
        print(f"created autoscaling {args.autoscale} instances, target {args.target_invocations:g} invocations per instance per minute ({arn})")
    print(f"  invoke: imgcls aws invoke {name} IMAGE.jpg    remove: imgcls aws delete {name}")
    return 0


def _refuse_serverless_conflicts(args) -> None:
    """Flags a serverless endpoint cannot honour are refused, not dropped."""
    if args.serverless_memory is None:
        if args.serverless_concurrency is not None:
            raise UserError("--serverless-concurrency: only with --serverless-memory (an endpoint on instances has no such limit)")
        return
    for flag, value in (("--instance-type", args.instance_type), ("--instance-count", args.instance_count)):
        if value is not None:
            raise UserError(f"{flag}: a serverless endpoint has no instances; leave it out, or drop --serverless-memory")
    if args.autoscale:
        raise UserError("--autoscale: serverless endpoints scale by themselves")
    if args.network_isolation:
        raise UserError("--network-isolation: serverless endpoints do not support network isolation; deploy on instances instead")


def _model_source(ctx: AwsContext, args) -> tuple[str, str]:
    """(model.tar.gz, image): --model-data with --image-uri, or the training job's. A dry run does not
    ask AWS for the job: placeholders that say so stand in for what it does not know."""
    if args.model_data:
        if not args.image_uri:
            raise UserError("--model-data needs --image-uri URI (the serving image)")
        if not args.model_data.startswith("s3://") or not args.model_data.endswith(".tar.gz"):
            raise UserError(f"--model-data {shown(args.model_data)}: expected the s3:// URI of a model.tar.gz")
        return args.model_data, args.image_uri
    job = args.training_job
    if ctx.offline:
        unknown = f"of training job {shown(job)}: only AWS can tell"
        return Placeholder(f"<model.tar.gz {unknown}>"), args.image_uri or Placeholder(f"<training image {unknown}>")
    described = ctx.client("sagemaker").describe_training_job(TrainingJobName=job)
    if described["TrainingJobStatus"] != "Completed":
        raise UserError(f"training job {shown(job)} is {described['TrainingJobStatus']}, not Completed: it has no model yet")
    return described["ModelArtifacts"]["S3ModelArtifacts"], args.image_uri or described["AlgorithmSpecification"]["TrainingImage"]


def wait_endpoint(sm, name: str) -> str:
    def describe():
        d = sm.describe_endpoint(EndpointName=name)
        return d["EndpointStatus"], d.get("FailureReason", ""), d["EndpointStatus"] in ENDPOINT_SETTLED
    return wait_loop("endpoint", name, describe, poll_seconds(15))


CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def cmd_invoke(args) -> int:
    """Like local_test/predict.sh against a local server: the JSON answer of each image on its own line."""
    ctx = context(args)
    runtime = ctx.client("sagemaker-runtime")
    attributes = f"top_k={args.top_k}" if args.top_k else None
    for path in args.images:
        path = Path(path)
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise UserError(f"invoke: cannot read {path}: {exc.strerror or exc}") from None
        content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/x-image")
        print(f"invoke: {path} -> {args.endpoint}", file=sys.stderr)
        kwargs = {"EndpointName": args.endpoint, "ContentType": content_type, "Accept": "application/json", "Body": body}
        if attributes:
            kwargs["CustomAttributes"] = attributes
        reply = runtime.invoke_endpoint(**kwargs)
        print(reply["Body"].read().decode("utf-8", errors="replace"), flush=True)
    return 0


def cmd_delete(args) -> int:
    """Endpoint, then its config, then the model: each found through the one before (the SDK's order
    loses the model once the config is gone)."""
    from botocore.exceptions import ClientError
    ctx = context(args)
    sm = ctx.client("sagemaker")
    try:
        endpoint = sm.describe_endpoint(EndpointName=args.endpoint)
    except ClientError as exc:
        if not _not_found(exc):
            raise
        raise UserError(f"no endpoint named {args.endpoint!r}") from None
    config_name = endpoint["EndpointConfigName"]
    models = []
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        models = [v["ModelName"] for v in config["ProductionVariants"]]
    except ClientError as exc:
        if not _not_found(exc):
            raise
    scaling = ctx.client("application-autoscaling")
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker",
                                                ResourceIds=[hosting.scaling_resource_id(args.endpoint)]).get("ScalableTargets", [])
    for target in targets:
        scaling.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=target["ResourceId"],
                                           ScalableDimension=target["ScalableDimension"])
        print(f"deleted autoscaling of {target['ResourceId']}")
    sm.delete_endpoint(EndpointName=args.endpoint)
    print(f"deleted endpoint {args.endpoint}")
    if config_name:
        sm.delete_endpoint_config(EndpointConfigName=config_name)
        print(f"deleted endpoint config {config_name}")
    if not args.keep_model:
        for model in models:
            sm.delete_model(ModelName=model)
            print(f"deleted model {model}")
    return 0


# ---------------------------------------------------------------- results

def cmd_results(args) -> int:
    from .results import pull_results
    ctx = context(args)
    return pull_results(ctx, args.tuning_job, Path(args.out), spec_path=args.spec, curves=args.curves,
                        study_dir=Path(args.add_to_study) if args.add_to_study else None)
