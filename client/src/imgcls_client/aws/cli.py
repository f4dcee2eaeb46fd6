"""`imgcls aws ...` parsers. Building them imports nothing heavy (no boto3, no torch): each
handler imports aws.commands when it runs."""
from __future__ import annotations

import argparse
import sys

from .hosting import DEFAULT_ENDPOINT_INSTANCE, DEFAULT_SERVERLESS_CONCURRENCY
from .training import DEFAULT_MAX_RUN_S, DEFAULT_TRAINING_INSTANCE

HELP = "the SageMaker lifecycle: train, tune, results, deploy, invoke, status, logs, stop, delete"


def _handler(name: str):
    def run(args: argparse.Namespace) -> int:
        return run_aws(args, name)
    return run


def run_aws(args: argparse.Namespace, command: str | None = None) -> int:
    """Run one `imgcls aws` command; AWS and user errors become one line and exit code 1 or 2."""
    from imgcls.errors import UserError
    from . import commands
    command = command or args.aws_command
    try:
        return getattr(commands, f"cmd_{command}")(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # botocore's errors, without importing botocore up front
        if type(exc).__module__.startswith("botocore"):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


def _common(p, *, role: bool = True) -> None:
    p.add_argument("--region", help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's)")
    if role:
        p.add_argument("--role", help="SageMaker execution role ARN (default: IMGCLS_SAGEMAKER_ROLE, or the notebook's own role)")


def _job_arguments(p, what: str) -> None:
    _common(p)
    p.add_argument("--image-uri", required=True, help="the imgcls image in ECR (the last line of scripts/build_and_push.sh)")
    p.add_argument("--train", required=True, metavar="S3URI", help="training data: an s3:// prefix ending in /")
    p.add_argument("--valid", metavar="S3URI", help="validation data (else a split of train is carved out)")
    p.add_argument("--test", metavar="S3URI", help="test data")
    p.add_argument("--pretrained", metavar="S3URI", help="a prefix holding a .pth state_dict (or the .pth itself): the `pretrained` channel")
    p.add_argument("--bucket", help="bucket for outputs (default: IMGCLS_BUCKET, or sagemaker-<region>-<account>)")
    p.add_argument("--output-path", metavar="S3URI", help=f"where {what} outputs go (default s3://BUCKET/imgcls/{what}/)")
    p.add_argument("--job-name", help="name (default: imgcls-<time>)")
    p.add_argument("--instance-type", default=DEFAULT_TRAINING_INSTANCE, help="training instance type")
    p.add_argument("--instance-count", type=int, default=1, help="instances per training job (more than 1: DDP across hosts)")
    p.add_argument("--volume-gb", type=int, default=50, help="EBS volume per instance")
    p.add_argument("--max-run", type=int, default=DEFAULT_MAX_RUN_S, metavar="S", help="MaxRuntimeInSeconds per training job")
    p.add_argument("--spot", action="store_true", help="managed spot training")
    p.add_argument("--max-wait", type=int, metavar="S", help="spot: MaxWaitTimeInSeconds, wait for capacity plus run (default 2 x --max-run)")
    p.add_argument("--network-isolation", action="store_true", help="no network in the container: weights from --pretrained or baked into the image")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="environment variable for the container (repeatable)")
    p.add_argument("--max-retries", type=int, metavar="N", help="RetryStrategy: restarts after an internal SageMaker error")
    p.add_argument("--hp", action="append", metavar="NAME=VALUE", help="hyperparameter (repeatable; validated like `imgcls train`)")
    p.add_argument("--wait", action="store_true", help="wait until the job ends, printing its progress (and a training job's log); "
                                                       "Ctrl-C leaves it running")
    p.add_argument("--dry-run", action="store_true", help="print the exact request (boto3 names) after validation; send nothing")


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows real defaults only: an option without one says in its help what happens."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_aws_parser(sub) -> None:
    aws = sub.add_parser("aws", help=HELP, description=f"imgcls on SageMaker: {HELP}.")
    cmds = aws.add_subparsers(dest="aws_command", metavar="COMMAND", required=True)
    fmt = _DefaultsHelpFormatter

    p = cmds.add_parser("train", help="start a training job on the image", formatter_class=fmt)
    _job_arguments(p, "training")
    p.add_argument("--hyperparameters", metavar="FILE", help="JSON of hyperparameters, e.g. a study's best_hyperparameters.json (--hp wins)")
    p.add_argument("--checkpoint-s3-uri", metavar="S3URI", help="CheckpointConfig; with --spot the default is <output>/<job>/checkpoints/")
    p.add_argument("--tensorboard", action="store_true", help="upload TensorBoard logs to <output>/<job>/tensorboard/")
    p.add_argument("--tensorboard-s3-uri", metavar="S3URI", help="TensorBoard logs to this prefix instead")
    p.add_argument("--keep-alive", type=int, metavar="S", help="warm pool: keep the instances S seconds for the next job (not with --spot)")
    p.add_argument("--debugger", action="store_true", help="add the SageMaker Debugger hook (off by default)")
    p.add_argument("--profiler", action="store_true", help="turn the SageMaker profiler on (off by default)")
    p.set_defaults(handler=_handler("train"))

    p = cmds.add_parser("tune", help="start a tuning job from a spec (the same file `imgcls tune` runs locally)", formatter_class=fmt)
    _job_arguments(p, "tuning")
    p.add_argument("--spec", help="search-space YAML (default: the packaged seed search)")
    p.add_argument("--max-trials", type=int, help="overrides the spec's budget.max_trials")
    p.add_argument("--parallel", type=int, help="overrides budget.max_parallel")
    p.add_argument("--max-runtime", type=int, metavar="S", help="overrides budget.max_runtime_s")
    p.add_argument("--target-objective", type=float, help="complete once a job reaches this objective value")
    p.add_argument("--stop-after-not-improving", type=int, metavar="N", help="complete after N jobs without a better objective (>= 3)")
    p.add_argument("--complete-on-convergence", action=argparse.BooleanOptionalAction, default=None,
                   help="let SageMaker complete the job when it detects convergence")
    p.add_argument("--warm-start", action="append", metavar="TUNING_JOB", help="parent tuning job (repeatable, up to 5)")
    p.add_argument("--warm-start-type", default="IdenticalDataAndAlgorithm", choices=("IdenticalDataAndAlgorithm", "TransferLearning"))
    p.set_defaults(handler=_handler("tune"))

    p = cmds.add_parser("results", help="a tuning job's results as results.csv/md, best_hyperparameters.json and plots", formatter_class=fmt)
    _common(p, role=False)
    p.add_argument("tuning_job")
    p.add_argument("--out", required=True, help="folder for the results")
    p.add_argument("--spec", help="the spec it ran (default: rebuilt from the tuning job)")
    p.add_argument("--no-curves", dest="curves", action="store_false", help="skip per-epoch curves (they come from each job's output.tar.gz)")
    p.add_argument("--add-to-study", metavar="DIR", help="also add the finished jobs as trials to the local study in DIR (`imgcls tune --out DIR`)")
    p.set_defaults(handler=_handler("results"))

    p = cmds.add_parser("deploy", help="create a model, endpoint config and endpoint", formatter_class=fmt)
    _common(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--training-job", help="deploy this training job's model (and image)")
    src.add_argument("--model-data", metavar="S3URI", help="a model.tar.gz (needs --image-uri)")
    p.add_argument("--image-uri", help="serving image (default: the training job's image)")
    p.add_argument("--name", help="endpoint, config and model name (default: imgcls-<time>)")
    # no argparse defaults here: a serverless endpoint refuses the instance flags, rather than dropping them
    p.add_argument("--instance-type", help=f"endpoint instance type ({DEFAULT_ENDPOINT_INSTANCE} if not given)")
    p.add_argument("--instance-count", type=int, help="initial instance count (1 if not given)")
    p.add_argument("--serverless-memory", type=int, metavar="MB", help="serverless endpoint with this much memory (1024-6144) instead of instances "
                                                                       "(no network isolation, no instance type or count)")
    p.add_argument("--serverless-concurrency", type=int, metavar="N",
                   help=f"serverless: most concurrent invocations ({DEFAULT_SERVERLESS_CONCURRENCY} if not given)")
    p.add_argument("--autoscale", metavar="MIN:MAX", help="scale the instance count between MIN and MAX on invocations per instance")
    p.add_argument("--target-invocations", type=float, default=100.0, metavar="N", help="autoscaling target: invocations per instance per minute")
    p.add_argument("--env", action="append", metavar="NAME=VALUE", help="container environment, e.g. IMGCLS_DEFAULT_TOP_K=3")
    p.add_argument("--network-isolation", action="store_true")
    p.add_argument("--wait", action="store_true", help="wait until the endpoint is in service (always, with --autoscale)")
    p.add_argument("--dry-run", action="store_true", help="print the exact requests after validation; send nothing")
    p.set_defaults(handler=_handler("deploy"))

    p = cmds.add_parser("invoke", help="send images to an endpoint; prints the same JSON as local_test/predict.sh", formatter_class=fmt)
    _common(p, role=False)
    p.add_argument("endpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--top-k", type=int, help="classes per answer (CustomAttributes top_k)")
    p.set_defaults(handler=_handler("invoke"))

    p = cmds.add_parser("delete", help="delete an endpoint, then its config, then its model", formatter_class=fmt)
    _common(p, role=False)
    p.add_argument("endpoint")
    p.add_argument("--keep-model", action="store_true", help="keep the model")
    p.set_defaults(handler=_handler("delete"))

    for name, help_text in (("status", "a training job, tuning job (with its jobs) or endpoint"),
                            ("stop", "stop a training or tuning job")):
        p = cmds.add_parser(name, help=help_text, formatter_class=fmt)
        _common(p, role=False)
        p.add_argument("name")
        p.add_argument("--kind", choices=("training", "tuning", "endpoint") if name == "status" else ("training", "tuning"),
                       help="what NAME is (default: looked up)")
        p.set_defaults(handler=_handler(name))

    p = cmds.add_parser("logs", help="a training job's CloudWatch log (or an endpoint's with --endpoint)", formatter_class=fmt)
    _common(p, role=False)
    p.add_argument("name")
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends (Ctrl-C leaves it running)")
    p.add_argument("--endpoint", action="store_true", help="NAME is an endpoint")
    p.set_defaults(handler=_handler("logs"))
