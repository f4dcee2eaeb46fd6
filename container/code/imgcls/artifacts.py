"""The model directory contract shared by training (writer) and serving (reader).

    model.pt           state_dict of the whole network (torch.load(..., weights_only=True))
    labels.json        {"0": "Affenpinscher", ...}: output index -> class name
    model_config.json  backbone, image size, normalisation, number of classes, final metrics
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .models import build_model
from .names import CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE  # torch-free, so serve's supervisor can use them

FORMAT_VERSION = 1


class DiskFullError(UserError):
    """The file system ran out of space (or quota) while writing an artifact or a checkpoint."""


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain: torch.save reports it as `RuntimeError: [enforce fail at inline_container.cc...]`."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def atomic_write_bytes(path: Path, writer, size_hint: int | None = None) -> None:
    """Write through a temp file in the same folder, fsync, then rename: readers never see half a file.

    On a full disk the temp file is removed, the previous file stays, and a DiskFullError names the
    path, the space needed (`size_hint` bytes, or at least what was written) and the space free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    written = 0
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts must be readable by the serving user
        with os.fdopen(fd, "wb") as f:
            try:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
            finally:
                with contextlib.suppress(OSError, ValueError):
                    written = f.tell()
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if not _disk_full(exc):
            raise
        free = shutil.disk_usage(path.parent).free
        needed = f"about {_megabytes(size_hint)}" if size_hint else f"more than {_megabytes(written)}"
        raise DiskFullError(f"disk full: writing {path} needs {needed}, {_megabytes(free)} free on the file system of "
                            f"{path.parent}; earlier files there are intact. Free space or use a larger volume") from None


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) state: close to the size torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


def save_model_dir(model_dir: str | Path, model: nn.Module, class_names: list[str], config: dict) -> None:
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(model_dir / WEIGHTS_FILE, lambda f: torch.save(state, f), size_hint=tensor_bytes(state))
    atomic_write_json(model_dir / LABELS_FILE, {str(i): n for i, n in enumerate(class_names)})
    atomic_write_json(model_dir / CONFIG_FILE, {"format_version": FORMAT_VERSION, **config, "num_classes": len(class_names)})


def read_model_config(model_dir: str | Path) -> tuple[dict, list[str]]:
    model_dir = Path(model_dir)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    labels = json.loads((model_dir / LABELS_FILE).read_text())
    class_names = [labels[str(i)] for i in range(len(labels))]
    if len(class_names) != config["num_classes"]:
        raise ValueError(f"{LABELS_FILE} has {len(class_names)} classes, {CONFIG_FILE} says {config['num_classes']}")
    return config, class_names


def load_model_dir(model_dir: str | Path, map_location="cpu") -> tuple[nn.Module, list[str], dict]:
    """Rebuild the trained network from a model directory; returns (model in eval mode, class names, config)."""
    config, class_names = read_model_config(model_dir)
    model = build_model(config["backbone"], config["num_classes"])
    state = torch.load(Path(model_dir) / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    return model.eval(), class_names, config
