"""One-line failure reasons for SageMaker's output/failure (its first 1024 characters become FailureReason)."""
from __future__ import annotations

import traceback
from pathlib import Path

from .errors import UserError
from .metrics import printable

MAX_REASON = 1024


def failure_reason(exc: BaseException) -> str:
    reason = str(exc) if isinstance(exc, UserError) else _unexpected_error_reason(exc)
    line = printable(" ".join(reason.split()))  # one line, and never a metric line (reasons can quote file names)
    return line[:MAX_REASON]


def _unexpected_error_reason(exc: BaseException) -> str:
    import torch  # here, not at the top: the job config check writes its reasons before torch is imported

    if isinstance(exc, torch.OutOfMemoryError):
        return "out of GPU memory: lower batch-size or image-size, or use a larger instance"
    if isinstance(exc, MemoryError):
        return "out of host memory: lower batch-size or workers"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"unexpected {type(exc).__name__}: {exc}{where}"


def clear_failure(output_dir: str | Path) -> None:
    """A new job starts without the failure file of an earlier one (the toolkit never overwrites it)."""
    (Path(output_dir) / "failure").unlink(missing_ok=True)


def write_failure(output_dir: str | Path, reason: str) -> Path:
    """Write `failure` unless an earlier, more precise reason is already there (e.g. from another rank)."""
    path = Path(output_dir) / "failure"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as f:
            f.write(reason)
    except FileExistsError:
        pass
    return path
