"""`imgcls aws ...` (placeholder registration; helper 10b replaces this module with the boto3 client).

Contract with imgcls_client.cli.register: `add_aws_parser(sub)` adds the `aws` parser and its
subcommands, each with `set_defaults(handler=fn)` where fn(args) -> exit code; nothing heavy
(boto3, sagemaker, torch) is imported at module level.
"""
from __future__ import annotations


def add_aws_parser(sub) -> None:
    p = sub.add_parser("aws", help="the SageMaker lifecycle: train, tune, results, deploy, invoke, status, logs, stop, delete")
    p.set_defaults(handler=lambda args: (print("error: imgcls aws is not implemented yet"), 2)[1])
