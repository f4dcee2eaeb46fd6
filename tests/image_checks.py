"""What the image runs (archive extraction, model loading, request decoding), checked without pytest.

`python tests/image_checks.py` runs every check with the Python that runs it: tests/test_image.py
runs it inside the image (Debian's Python 3.11.2), tests/test_archives.py in the dev env. Exit
status 0 and "image checks: N passed", or 1 and the first failure.
"""
from __future__ import annotations

import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tests/datasets.py


def _add(tf: tarfile.TarFile, name: str, kind=tarfile.REGTYPE, data: bytes = b"", linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, linkname, len(data), 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3  # /dev/null
    tf.addfile(info, io.BytesIO(data) if data else None)


CHAIN_TARGET = "/tmp/imgcls-link-chain.txt"

# name -> members; each archive must be refused as a whole
HOSTILE = {
    "symlink_absolute": [("evil", tarfile.SYMTYPE, b"", "/etc/passwd")],
    "symlink_out": [("evil", tarfile.SYMTYPE, b"", "../../outside")],
    "hardlink_out": [("evil", tarfile.LNKTYPE, b"", "/etc/passwd")],
    "write_through_link": [("d", tarfile.SYMTYPE, b"", "."), ("d/model.pt", tarfile.REGTYPE, b"x", "")],
    "device": [("model.pt", tarfile.REGTYPE, b"x", ""), ("null", tarfile.CHRTYPE, b"", "")],
    "fifo": [("pipe", tarfile.FIFOTYPE, b"", "")],
    "traversal": [("../escaped.txt", tarfile.REGTYPE, b"x", "")],
    "absolute": [("/tmp/imgcls-absolute.txt", tarfile.REGTYPE, b"x", "")],
    # each link looks inside while nothing exists on disk; together they climb to / and w is written through them
    "link_chain": [("l0", tarfile.SYMTYPE, b"", "."),
                   *((f"l{i}", tarfile.SYMTYPE, b"", f"l{i - 1}/..") for i in range(1, 30)),
                   ("w", tarfile.SYMTYPE, b"", f"l29{CHAIN_TARGET}"),
                   ("w", tarfile.REGTYPE, b"written through a link chain", "")],
    "link_replaced_by_file": [("m", tarfile.SYMTYPE, b"", "."), ("m", tarfile.REGTYPE, b"x", "")],
    "link_replaced_by_dir": [("m", tarfile.SYMTYPE, b"", "."), ("m", tarfile.DIRTYPE, b"", "")],
    "link_climbs_later": [("a", tarfile.SYMTYPE, b"", "x/.."), ("x", tarfile.SYMTYPE, b"", ".")],
    "hardlink_to_link": [("s", tarfile.SYMTYPE, b"", "."), ("d/h", tarfile.LNKTYPE, b"", "s")],
    "link_loop": [("p", tarfile.SYMTYPE, b"", "q"), ("q", tarfile.SYMTYPE, b"", "p"), ("r", tarfile.SYMTYPE, b"", "p/x")],
}


def hostile_archive(path: Path, kind: str) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, member_type, data, linkname in HOSTILE[kind]:
            _add(tf, name, member_type, data, linkname)
    return path


def model_archive(folder: Path) -> Path:
    """A real model directory (resnet18, 2 classes, random weights) packed like SageMaker's model.tar.gz."""
    from imgcls.artifacts import save_model_dir
    from imgcls.models import build_model
    from imgcls.presets import EvalPreset
    model_dir = folder / "model"
    preset = EvalPreset(64)
    save_model_dir(model_dir, build_model("resnet18", 2), ["cat", "dog"],
                   {"backbone": "resnet18", "image_size": 64, "resize_size": preset.resize_size,
                    "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "metrics": {}, "hyperparameters": {}})
    archive = folder / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for file in sorted(model_dir.iterdir()):
            tf.add(file, arcname=file.name)
    return archive


def check_hostile_archives_are_refused(tmp: Path) -> None:
    from imgcls.archives import safe_extract_tar
    from imgcls.errors import UserError
    for kind in HOSTILE:
        dest = tmp / f"out-{kind}"
        try:
            safe_extract_tar(hostile_archive(tmp / f"{kind}.tar.gz", kind), dest)
        except UserError as exc:
            assert "\n" not in str(exc), exc
        else:
            raise AssertionError(f"{kind}: extracted, should have been refused")
        assert not list(dest.iterdir()), f"{kind}: wrote {list(dest.iterdir())}"
    assert not (tmp / "escaped.txt").exists() and not Path("/tmp/imgcls-absolute.txt").exists()
    assert not Path(CHAIN_TARGET).exists(), f"{CHAIN_TARGET} was written through the archive's links"


def check_archive_links_inside_are_kept(tmp: Path) -> None:
    """Links that stay inside the archive, and hard links to its files, still extract."""
    from imgcls.archives import safe_extract_tar
    path = tmp / "links.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "code/inference.py", data=b"print(1)")
        _add(tf, "current", tarfile.SYMTYPE, linkname="code")
        _add(tf, "code/up", tarfile.SYMTYPE, linkname="../current/inference.py")
        _add(tf, "copy.py", tarfile.LNKTYPE, linkname="code/inference.py")
    dest = safe_extract_tar(path, tmp / "out")
    assert (dest / "current" / "inference.py").read_bytes() == b"print(1)"
    assert (dest / "code" / "up").read_bytes() == b"print(1)" and (dest / "copy.py").read_bytes() == b"print(1)"


def check_model_archive_loads_and_predicts(tmp: Path) -> None:
    import torch
    from imgcls.serving.model_files import resolve_model_dir
    from imgcls.serving.model_loading import load
    model_dir = resolve_model_dir(model_archive(tmp / "packed"), tmp / "extracted")
    assert (model_dir / "model.pt").stat().st_mode & 0o777 == 0o644
    loaded = load(model_dir, gpu_id=None, cpu_threads=1)
    assert loaded.class_names == ["cat", "dog"]
    probabilities = loaded.predict(torch.zeros(2, 3, 64, 64))
    assert probabilities.shape == (2, 2) and torch.allclose(probabilities.sum(1), torch.ones(2))


def check_requests_decode(tmp: Path) -> None:
    import numpy as np
    from PIL import Image
    from datasets import awkward_images
    from imgcls.serving.decoder import Preprocessing, decode_request
    from imgcls.serving.errors import RequestError
    prep = Preprocessing.from_model_config({"image_size": 64, "resize_size": 73, "mean": [0.485, 0.456, 0.406],
                                            "std": [0.229, 0.224, 0.225]})
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8))
    for name, blob in awkward_images(base).items():
        decoded = decode_request(blob, "application/x-image", prep)
        assert tuple(decoded.batch.shape) == (1, 3, 64, 64), name
    for body, content_type in ((b"\xff\xd8 not really a jpeg", "image/jpeg"),
                               (json.dumps({"images": ["not base64!"]}).encode(), "application/json")):
        try:
            decode_request(body, content_type, prep)
        except RequestError as exc:
            assert int(exc.status) == 400, repr(exc)
        else:
            raise AssertionError(f"{content_type}: a broken body was decoded")


CHECKS = [check_hostile_archives_are_refused, check_archive_links_inside_are_kept, check_model_archive_loads_and_predicts, check_requests_decode]


def main() -> int:
    print(f"python {sys.version.split()[0]}, tarfile.data_filter: {hasattr(tarfile, 'data_filter')}")
    for check in CHECKS:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                check(Path(tmp))
            except Exception as exc:
                print(f"FAILED {check.__name__}: {type(exc).__name__}: {exc}")
                return 1
        print(f"ok {check.__name__}")
    print(f"image checks: {len(CHECKS)} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
