"""Model loading for serving: unpacked folder or model.tar.gz, safe extraction, CPU threads, warm-up."""
from __future__ import annotations

import io
import tarfile

import pytest
import torch

from imgcls.errors import UserError
from imgcls.serving import model_loading
from imgcls.serving.model_files import resolve_model_dir


def make_archive(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def model_files(model_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}


def test_unpacked_folder_is_used_in_place(trained_model_dir, tmp_path):
    assert resolve_model_dir(trained_model_dir, tmp_path / "x") == trained_model_dir
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("layout", ["archive path", "folder with archive", "archive with subfolder"])
def test_model_tar_gz_is_extracted(trained_model_dir, tmp_path, layout):
    files = model_files(trained_model_dir)
    if layout == "archive with subfolder":
        files = {f"model/{name}": data for name, data in files.items()}
    folder = tmp_path / "s3"
    folder.mkdir()
    make_archive(folder / "model.tar.gz", files)
    source = folder / "model.tar.gz" if layout == "archive path" else folder
    resolved = resolve_model_dir(source, tmp_path / "extracted")
    assert (resolved / "model.pt").read_bytes() == (trained_model_dir / "model.pt").read_bytes()
    assert resolved.is_relative_to(tmp_path / "extracted")


def test_path_traversal_in_the_archive_is_refused(trained_model_dir, tmp_path):
    make_archive(tmp_path / "model.tar.gz", {**model_files(trained_model_dir), "../escaped.txt": b"x"})
    with pytest.raises(UserError, match=r"archive member .*\.\./escaped.txt.*not allowed"):
        resolve_model_dir(tmp_path / "model.tar.gz", tmp_path / "extracted")
    assert not (tmp_path / "escaped.txt").exists()


def test_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="neither model.pt nor model.tar.gz"):
        resolve_model_dir(tmp_path, tmp_path / "x")


def test_cpu_load_sets_threads_and_warms_up(trained_model_dir):
    threads = torch.get_num_threads()
    try:
        loaded = model_loading.load(trained_model_dir, gpu_id=None, cpu_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert loaded.warm_up((1, 2)) > 0
    probabilities = loaded.predict(torch.zeros(2, 3, loaded.preprocessing.image_size, loaded.preprocessing.image_size))
    assert probabilities.shape == (2, len(loaded.class_names))
    assert torch.allclose(probabilities.sum(1), torch.ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_load_uses_half_precision_channels_last(trained_model_dir):
    loaded = model_loading.load(trained_model_dir, gpu_id=torch.cuda.device_count() - 1, cpu_threads=None)
    assert loaded.device.type == "cuda" and loaded.dtype in (torch.bfloat16, torch.float16)
    conv = loaded.network.conv1.weight
    assert conv.dtype == loaded.dtype and conv.is_contiguous(memory_format=torch.channels_last)
    cpu = model_loading.load(trained_model_dir, gpu_id=None, cpu_threads=None)
    batch = torch.randn(4, 3, cpu.preprocessing.image_size, cpu.preprocessing.image_size)
    assert torch.allclose(loaded.predict(batch), cpu.predict(batch), atol=2e-2)
