"""`imgcls aws ...`: registered by imgcls_client.cli.register; the commands live in imgcls_client.aws.

Contract: `add_aws_parser(sub)` adds the `aws` parser and its subcommands, each with
`set_defaults(handler=fn)` where fn(args) -> exit code; nothing heavy is imported here.
"""
from __future__ import annotations

from .aws.cli import add_aws_parser, run_aws  # noqa: F401
