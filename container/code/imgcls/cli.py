"""`imgcls`: the same training and serving as the image, from the command line."""
from __future__ import annotations

import argparse
import difflib
import logging
import signal
import sys
from pathlib import Path

from . import launch
from .errors import UserError
from .hyperparams import ALIASES, describe, parse_hyperparameters

log = logging.getLogger("imgcls")


def _default_and_choices(help_text: str, default: str, choices: str) -> str:
    if "default" in help_text:  # the text explains its default itself
        return choices if choices.startswith("[") else f"[{choices}]" if choices else ""
    return f"[default {default or 'auto'}{'; ' + choices if choices else ''}]"


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a classifier on a folder-per-class dataset")
    p.add_argument("--data", type=Path, required=True, help="folder with train/valid/test sub-folders, or one folder-per-class set")
    p.add_argument("--valid", type=Path, help="validation folder, when not inside --data")
    p.add_argument("--test", type=Path, help="test folder, when not inside --data")
    p.add_argument("--pretrained", type=Path, help="folder holding a pretrained .pth (like the 'pretrained' channel)")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--output-dir", type=Path, default=Path("output"), help="reports, TensorBoard, failure file (default: output)")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes (GPUs) to train with, via torchrun and DDP (default: 1)")
    p.add_argument("--rule", action="append", default=[], metavar="RuleName_param=V",
                   help="an insight rule parameter, as the SageMaker hyperparameter of the same name (e.g. StepOutlier_stddev=4); repeatable")
    p.add_argument("--hyperparameters", type=Path, metavar="JSON",
                   help="a JSON object of hyperparameters (SageMaker's hyperparameters.json, or a study's best_hyperparameters.json); flags override it")
    hps = p.add_argument_group("hyperparameters (same names as SageMaker hyperparameters)")
    for name, default, choices, help_text in describe():
        hps.add_argument(f"--{name}", dest=f"hp_{name}", metavar="V", default=None,
                         help=f"{help_text} {_default_and_choices(help_text, default, choices)}")
        # The spellings users of the earlier notebooks pass (--batch_size, --learning_rate): accepted, not listed.
        aliases = {name.replace("-", "_")} | {a for a, target in ALIASES.items() if target == name}
        for alias in sorted(aliases - {name}):
            hps.add_argument(f"--{alias}", dest=f"hp_{name}", metavar="V", default=None, help=argparse.SUPPRESS)


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a trained model directory or model.tar.gz over HTTP (SageMaker contract)")
    p.add_argument("--model-dir", type=str, default=None, help="default: /opt/ml/model")
    p.add_argument("--port", type=int, default=None, help="default: SAGEMAKER_BIND_TO_PORT or 8080")


def _sample_parser(sub) -> None:
    p = sub.add_parser("make-sample", help="write a small learnable dataset in the dogImages layout")
    p.add_argument("dest", type=Path)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, nargs=3, default=(24, 6, 6), metavar=("TRAIN", "VALID", "TEST"))
    p.add_argument("--image-size", type=int, default=96)


# `tune` and `aws` come from the imgcls-client package (client/ in the repository), which the image never has.
CLIENT_COMMANDS = {"tune": "run a local hyperparameter study (Optuna; each trial is a real training run)",
                   "aws": "the SageMaker lifecycle: train, tune, results, deploy, invoke, status, logs, stop, delete"}
CLIENT_MISSING = ("`imgcls {command}` needs the imgcls client, which is not installed here (the training image never has it). "
                  "In a checkout of the repository run `make setup` (or `uv sync`); elsewhere `pip install ./client` from the repository.")


def _add_client_commands(sub) -> bool:
    import importlib.util
    if importlib.util.find_spec("imgcls_client") is None:
        for name, help_text in CLIENT_COMMANDS.items():
            sub.add_parser(name, help=f"{help_text} [needs imgcls-client]", add_help=False)
        return False
    from imgcls_client.cli import register  # lazy: optional package, imports no torch
    register(sub)
    return True


def _read_hyperparameters(path: Path) -> dict:
    import json
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--hyperparameters {path}: cannot read a JSON object ({exc})") from None
    if not isinstance(values, dict):
        raise UserError(f"--hyperparameters {path}: expected a JSON object of name: value")
    return values


def run_train(args: argparse.Namespace) -> int:
    from .failure import clear_failure, failure_reason, write_failure
    if not launch.is_worker():  # torchrun workers share the launcher's output dir
        clear_failure(args.output_dir)
    try:
        raw = _read_hyperparameters(args.hyperparameters) if args.hyperparameters else {}
        raw.update({k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None})
        for item in args.rule:
            name, sep, value = item.partition("=")
            if not sep:
                raise UserError(f"--rule expects RuleName_param=VALUE, got {item!r}")
            raw[name.strip()] = value.strip()
        hp = parse_hyperparameters(raw)
        if args.nproc_per_node > 1 and not launch.is_worker():
            cmd = launch.torchrun_command(["imgcls", *sys.argv[1:]], hosts=[], current_host="", nproc_per_node=args.nproc_per_node)
            return launch.run_torchrun(cmd, launch.distributed_env(None))
        from .train import JobPaths, train
        channels = {"train": args.data}
        if args.valid:
            channels["valid"] = args.valid
        if args.test:
            channels["test"] = args.test
        if args.pretrained:
            channels["pretrained"] = args.pretrained
        out = args.output_dir
        paths = JobPaths(model_dir=args.model_dir, output_data_dir=out / "data", checkpoint_dir=Path(hp.checkpoint_dir or out / "checkpoints"),
                         tensorboard_dir=out / "tensorboard", channels=channels)
        train(hp, paths)
        return 0
    except KeyboardInterrupt:
        write_failure(args.output_dir, "interrupted (Ctrl-C) before training started")
        print("interrupted: before training started; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(exc, "signum", None) == signal.SIGINT:  # Ctrl-C in the loop: a checkpoint was saved
            write_failure(args.output_dir, failure_reason(exc))
            print(f"interrupted: {exc}", file=sys.stderr)
            return 130
        reason = failure_reason(exc)
        write_failure(args.output_dir, reason)
        print(f"error: {reason}", file=sys.stderr)
        return 2 if isinstance(exc, UserError) else 1


def _parse(parser: argparse.ArgumentParser, sub, argv: list[str] | None) -> argparse.Namespace:
    """argparse, plus a "did you mean" for a mistyped option (`--lerning-rate`)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = sub.choices[args.command]
        known = [o for o in command._option_string_actions if o.startswith("--")]
        hints = []
        for option in (u.split("=", 1)[0] for u in unknown if u.startswith("-")):
            close = difflib.get_close_matches(option, known, n=1)
            if close:
                hints.append(f"did you mean {close[0]}?")
        command.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; {' '.join(hints)}" if hints else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves a checkpoint first)
        print("interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # needs no model: answered before the train parser's table imports torch
        from .insights.report import main as report_main
        return report_main(argv[1:])
    from .logs import configure_logging
    from .download import add_download_arguments, run_download
    parser = argparse.ArgumentParser(prog="imgcls", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _serve_parser(sub)
    add_download_arguments(sub.add_parser("download-data", help="download and unpack the public dogImages.zip"))
    _sample_parser(sub)
    sub.add_parser("report", help="render report.html and insights.json again from a job's raw insight files (imgcls report DIR)")
    if not _add_client_commands(sub) and argv[:1] and argv[0] in CLIENT_COMMANDS:
        print("error: " + CLIENT_MISSING.format(command=argv[0]), file=sys.stderr)
        return 2
    args = _parse(parser, sub, argv)
    configure_logging()
    if getattr(args, "handler", None) is not None:  # commands the client registers
        return args.handler(args)
    if args.command == "train":
        return run_train(args)
    if args.command == "serve":
        from .serving.server import run
        run(args.model_dir, args.port)
        return 0
    if args.command == "make-sample":
        from .sample_data import make_sample_dataset
        print(make_sample_dataset(args.dest, args.classes, tuple(args.per_class), args.image_size))
        return 0
    try:
        return run_download(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
