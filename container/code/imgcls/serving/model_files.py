"""Finding the model folder (or unpacking model.tar.gz) without importing torch: serve's supervisor uses it."""
from __future__ import annotations

from pathlib import Path

from ..archives import safe_extract_tar
from ..errors import UserError
from ..names import CONFIG_FILE, WEIGHTS_FILE

ARCHIVE_NAME = "model.tar.gz"


def resolve_model_dir(path: str | Path, extract_into: str | Path) -> Path:
    """The folder holding model.pt: `path` itself, or the safe extraction of its model.tar.gz.

    SageMaker unpacks model.tar.gz into /opt/ml/model before start; a local user may pass the
    archive (or a folder holding only the archive) straight from S3.
    """
    path = Path(path)
    if (path / WEIGHTS_FILE).is_file():
        return path
    archive = path if path.is_file() else path / ARCHIVE_NAME
    if not archive.is_file():
        raise UserError(f"model directory {path}: neither {WEIGHTS_FILE} nor {ARCHIVE_NAME} found")
    extracted = safe_extract_tar(archive, extract_into)
    candidates = [extracted, *(p for p in sorted(extracted.iterdir()) if p.is_dir())]
    for candidate in candidates:
        if (candidate / WEIGHTS_FILE).is_file() and (candidate / CONFIG_FILE).is_file():
            return candidate
    raise UserError(f"{archive}: no {WEIGHTS_FILE} with {CONFIG_FILE} at its top level")
