"""What the image's `train` runs: the sagemaker-training toolkit imports this module (SAGEMAKER_TRAINING_MODULE).

The toolkit gives us the job's environment; we launch torchrun when there is more than one
process to run, and turn every error into a precise one-line output/failure.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from . import launch
from .errors import UserError
from .failure import clear_failure, failure_reason, write_failure
from .hyperparams import parse_hyperparameters
from .logs import configure_logging
from .train import JobPaths, train

log = logging.getLogger(__name__)


def _environment():
    from sagemaker_training import environment  # reads SAGEMAKER_BASE_DIR at import time
    return environment, environment.Environment()


def job_paths(environment, env, checkpoint_dir: str | None) -> JobPaths:
    base = Path(environment.base_dir)
    return JobPaths(
        model_dir=Path(env.model_dir),
        output_data_dir=Path(env.output_data_dir),
        checkpoint_dir=Path(checkpoint_dir or base / "checkpoints"),
        tensorboard_dir=Path(environment.output_dir) / "tensorboard",
        channels={name: Path(path) for name, path in env.channel_input_dirs.items()},
    )


def processes_per_host(env) -> int:
    override = os.environ.get("IMGCLS_NPROC_PER_NODE")  # e.g. CPU-only DDP
    return int(override) if override else max(1, env.num_gpus)


def main() -> None:
    configure_logging()
    environment, env = _environment()
    failure_dir = environment.output_dir
    if not launch.is_worker():  # torchrun workers share the launcher's output dir
        clear_failure(failure_dir)
    try:
        hp = parse_hyperparameters(env.hyperparameters)
        nproc = processes_per_host(env)
        if not launch.is_worker() and len(env.hosts) * nproc > 1:
            cmd = launch.torchrun_command(["imgcls.sagemaker_train"], hosts=env.hosts, current_host=env.current_host, nproc_per_node=nproc)
            code = launch.run_torchrun(cmd, launch.distributed_env(env.network_interface_name))
            if code != 0:
                failure_file = Path(failure_dir) / "failure"
                reason = failure_file.read_text() if failure_file.exists() else f"a training process exited with code {code}"
                raise UserError(reason)  # the toolkit turns a SystemExit into success, so raise an error
            return
        train(hp, job_paths(environment, env, hp.checkpoint_dir))
    except Exception as exc:
        reason = failure_reason(exc)
        write_failure(failure_dir, reason)
        log.error("training failed: %s", reason)
        raise _client_error(reason) from None


def _client_error(reason: str) -> Exception:
    """The toolkit writes its own failure file only if ours is absent, and exits 1 on ClientError."""
    from sagemaker_training.errors import ClientError
    return ClientError(reason)


if __name__ == "__main__":  # a torchrun worker
    try:
        main()
    except Exception:
        sys.exit(1)
