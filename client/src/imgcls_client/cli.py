"""Registers `imgcls tune` and `imgcls aws` in the `imgcls` command (imgcls.cli calls `register`).

Building the parsers must stay cheap: no torch, no boto3, no optuna at import time. Each command
sets `handler` (args -> exit code) with `set_defaults`; the handler imports what it needs.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    add_tune_parser(sub)
    from .aws_cli import add_aws_parser
    add_aws_parser(sub)


def add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="run a local hyperparameter study (Optuna; each trial is a real training run)",
                       description="Run the spec's search locally. Killed at any moment, the same command resumes the study in --out.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="dataset folder, as for `imgcls train --data`")
    p.add_argument("--spec", type=Path, default=None, help="search-space YAML (default: the packaged seed search, tuning/default.yaml)")
    p.add_argument("--max-trials", type=int, default=None, help="overrides the spec's budget.max_trials")
    p.add_argument("--out", type=Path, required=True, help="study folder: study.db, trials/, results.csv/md, plots")
    p.add_argument("--parallel", type=int, default=None, help="trials at once (overrides budget.max_parallel); threads are split among them")
    p.add_argument("--max-runtime", type=int, default=None, metavar="S", help="stop starting trials after S seconds (overrides budget.max_runtime_s)")
    p.add_argument("--no-fork", dest="fork", action="store_false",
                   help="start each trial as a fresh `imgcls train` process instead of forking a pre-imported one")
    p.set_defaults(handler=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    import sys
    from imgcls.errors import UserError
    from .spec import load_spec
    try:
        spec = load_spec(args.spec).replace(max_trials=args.max_trials, max_parallel=args.parallel, max_runtime_s=args.max_runtime)
        from .study import run_study
        run_study(spec, data=args.data, out=args.out, fork=args.fork)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the running trials were stopped; the same command resumes the study in {args.out}", file=sys.stderr)
        return 130
    return 0
