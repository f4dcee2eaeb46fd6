"""Finding the splits, checking every image once, and feeding them to the model."""
from __future__ import annotations

import logging
import os
import random
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, Sampler

from .errors import UserError
from .imaging import load_rgb
from .metrics import printable
from .names import EXTRA_CHANNELS

log = logging.getLogger(__name__)

SPLIT_ALIASES = {
    "train": ("train", "training"),
    "valid": ("valid", "validation", "val"),
    "test": ("test", "testing"),
}
_PREFIX = re.compile(r"^\d+[._-]")


def class_name(folder: str) -> str:
    """'001.Affenpinscher' -> 'Affenpinscher'."""
    return _PREFIX.sub("", folder)


@dataclass
class SplitDirs:
    train: Path
    valid: Path | None
    test: Path | None
    root: Path | None = None  # the channel holding the splits; else each split folder is its own data root


def _split_of(name: str) -> str | None:
    for split, names in SPLIT_ALIASES.items():
        if name.lower() in names:
            return split
    return None


def _subfolder_splits(root: Path) -> dict[str, Path]:
    found = {}
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        split = _split_of(child.name)
        if child.is_dir() and split and split not in found:
            found[split] = child
    return found


def resolve_splits(channels: dict[str, Path]) -> SplitDirs:
    """Map SageMaker channels (or a single data folder) to train/valid/test folders.

    Accepted: channels named train/valid/test (or training/validation/testing), or one channel
    holding train/valid/test sub-folders, or one channel that is itself folder-per-class.
    """
    data = {k: Path(v) for k, v in channels.items() if k not in EXTRA_CHANNELS}
    if not data:
        raise UserError("no training data: provide a 'train' channel (or 'training'), or --data DIR")
    splits: dict[str, Path] = {}
    for name, path in data.items():
        split = _split_of(name)
        if split is None and len(data) > 1:
            raise UserError(f"channel {name}: unknown name; use train, valid and test (or training, validation, testing)")
        if not path.is_dir():
            raise UserError(f"channel {name}: folder {path} does not exist")
        if split in splits:
            raise UserError(f"channel {name}: the {split} split is given twice")
        splits[split or "train"] = path
    if len(splits) == 1:
        (only,) = splits.values()
        inner = _subfolder_splits(only)
        if "train" in inner:
            return SplitDirs(inner["train"], inner.get("valid"), inner.get("test"), root=only)
    if "train" not in splits:
        raise UserError("no train channel: got " + ", ".join(data) + "; the train (or training) channel is required")
    return SplitDirs(splits["train"], splits.get("valid"), splits.get("test"))


def _check_image(path: str) -> str | None:
    """None if the file decodes fully, else the reason."""
    try:
        load_rgb(path, min_side=64)
        return None
    except Exception as exc:  # PIL raises many types for bad files
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


@dataclass
class Split:
    name: str
    root: Path
    samples: list[tuple[str, int]]
    skipped: list[tuple[str, str]]  # (path, reason)


def _symlink_problem(path: Path, data_root: Path) -> str | None:
    """Why a symbolic link must not be followed (None: it is fine, or not a link).

    A link to the folder itself or an ancestor would make every image a member of one more class;
    a link leaving the data root reads files nobody meant to train on.
    """
    if not path.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a cycle of links, or a dangling one
        return "a symbolic link that loops or points nowhere"
    if path.is_dir() and (target == path.parent.resolve() or target in path.parent.resolve().parents):
        return f"a symbolic link loop (it points to {target}, which contains it)"
    root = data_root.resolve()
    if target != root and root not in target.parents:
        return f"a symbolic link to {target}, outside the data root {root}"
    return None


def _skip_links(paths, data_root: Path, what: str) -> list[Path]:
    kept = []
    for path in paths:
        problem = _symlink_problem(path, data_root)
        if problem:
            log.warning("skipped %s %s: %s", what, printable(path), printable(problem))
        else:
            kept.append(path)
    return kept


def list_class_folders(root: Path, split: str, data_root: Path | None = None) -> list[Path]:
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    folders = _skip_links(candidates, data_root or root, "class folder")
    if not folders:
        raise UserError(f"{split} split {root}: no class folders; expected one sub-folder per class")
    if len(folders) == 1:
        raise UserError(f"{split} split {root}: only one class folder ({printable(folders[0].name)}); "
                        "a classifier needs at least two, one sub-folder per class")
    return folders


class _ScanProgress:
    """A bar in a terminal; in logs a line every 30 s (a large dataset takes minutes to check)."""

    LOG_EVERY_S = 30.0

    def __init__(self, total: int, split: str):
        self.total, self.split, self.done, self.bar = total, split, 0, None
        self.last_line = time.monotonic()

    def __enter__(self):
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, desc=f"checking {self.split} images", leave=False, dynamic_ncols=True)
        return self

    def advance(self, result):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif time.monotonic() - self.last_line >= self.LOG_EVERY_S:
            self.last_line = time.monotonic()
            log.info("%s split: checked %d/%d files", self.split, self.done, self.total)
        return result

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def scan_split(split: str, root: Path, class_names: list[str] | None, workers: int,
               data_root: Path | None = None) -> tuple[Split, list[str]]:
    """Check every file once (in parallel); bad files are skipped and listed, never silently.

    Symbolic links are followed only inside `data_root` (default: `root`) and never into a loop;
    others are skipped with a warning. Linked folders inside a class folder are not followed.
    """
    data_root = data_root or root
    folders = list_class_folders(root, split, data_root)
    names = [class_name(f.name) for f in folders]
    if len(set(names)) != len(names):
        raise UserError(f"{split} split {root}: two folders map to the same class name")
    if class_names is not None and names != class_names:
        missing = sorted(set(class_names) - set(names))
        extra = sorted(set(names) - set(class_names))
        raise UserError(f"{split} split {root}: classes differ from train (missing: {printable(', '.join(missing[:5])) or '-'}; "
                        f"extra: {printable(', '.join(extra[:5])) or '-'})")
    for folder in folders:
        for link in (p for p in folder.rglob("*") if p.is_symlink() and p.is_dir()):
            log.warning("skipped folder %s: a symbolic link to a folder (not followed inside a class folder)", printable(link))
    files = [(str(p), label) for label, folder in enumerate(folders)
             for p in _skip_links(sorted(p for p in folder.rglob("*") if not p.is_dir()), data_root, "file")
             if p.is_file() and not p.name.startswith(".")]
    paths = [p for p, _ in files]
    started = time.monotonic()
    with _ScanProgress(len(paths), split) as progress:
        if workers > 1 and len(paths) > 64:
            with ProcessPoolExecutor(workers) as pool:
                reasons = [progress.advance(r) for r in pool.map(_check_image, paths, chunksize=32)]
        else:
            reasons = [progress.advance(_check_image(p)) for p in paths]
    log.info("%s split: checked %d files in %.1f s", split, len(paths), time.monotonic() - started)
    samples = [f for f, r in zip(files, reasons) if r is None]
    skipped = [(f[0], r) for f, r in zip(files, reasons) if r is not None]
    counts = np.bincount([t for _, t in samples], minlength=len(folders))
    for folder, count in zip(folders, counts):
        if count == 0:
            raise UserError(f"{split} split: class folder {printable(folder)} has no readable image")
    if skipped:
        log.warning("%s split: skipped %d unreadable file(s) of %d:", split, len(skipped), len(files))
        for path, reason in skipped:
            log.warning("  skipped %s (%s)", printable(path), printable(reason))
    return Split(split, root, samples, skipped), names


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a deterministic, class-balanced validation split out of train."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible split, not a secret
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in split.samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, valid = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        rng.shuffle(items)
        n_valid = max(1, round(len(items) * fraction)) if len(items) >= 2 else 0
        valid += items[:n_valid]
        train += items[n_valid:]
    if not valid:
        raise UserError(f"train split {split.root}: too few images to carve out a validation split; give a valid channel")
    return Split("train", split.root, train, split.skipped), Split("valid", split.root, valid, [])


@dataclass
class DataSplits:
    class_names: list[str]
    train: Split
    valid: Split
    test: Split | None


def load_splits(dirs: SplitDirs, valid_fraction: float, seed: int, workers: int) -> DataSplits:
    train, names = scan_split("train", dirs.train, None, workers, dirs.root)
    if dirs.valid is not None:
        valid, _ = scan_split("valid", dirs.valid, names, workers, dirs.root)
    else:
        log.info("no validation split given: carving %.0f%% of train, stratified, seed %d", valid_fraction * 100, seed)
        train, valid = stratified_split(train, valid_fraction, seed)
    test = scan_split("test", dirs.test, names, workers, dirs.root)[0] if dirs.test is not None else None
    return DataSplits(names, train, valid, test)


class ImageFiles(Dataset):
    """Samples as uint8 CHW tensors; augmentation randomness is a function of (seed, epoch, index).

    That makes a resumed run see exactly the images an uninterrupted run would, whatever the
    number of workers.
    """

    def __init__(self, samples: list[tuple[str, int]], preset, seed: int = 0):
        self.samples = samples
        self.preset = preset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key  # the sampler passes the epoch along: persistent workers keep stale copies of us
        path, target = self.samples[index]
        rng = random.Random(hash((self.seed, epoch, index)))  # noqa: S311 - augmentation, not a secret
        try:
            img = load_rgb(path, min_side=self.preset.decode_side)
        except Exception as exc:
            raise UserError(f"image {printable(path)} became unreadable during training: {printable(exc)}") from None
        return self.preset(img, rng), target


class EpochSampler(Sampler[tuple[int, int]]):
    """Seeded per-epoch order, sharded across ranks, that can start part-way through an epoch."""

    def __init__(self, size: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.start = 0  # samples of this rank's shard to skip (resume mid-epoch)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def shard(self) -> list[int]:
        order = np.arange(self.size)
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
        order = order.tolist()
        if self.pad and self.world_size > 1:  # equal shards so DDP ranks step together
            order += order[: (-len(order)) % self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return ((self.epoch, i) for i in self.shard()[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.shard()) - self.start)


def default_workers(local_world_size: int = 1, device_type: str = "cuda") -> int:
    """DataLoader processes per training process.

    GPU: the CPUs shared out between the local ranks (one left for the main process), at most 8.
    CPU: the model is the bottleneck and worker processes preempt its threads (on 2 cores, 2 workers
    cost 30%: bench/train_throughput.py --workers 2), so few workers and only on larger hosts.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device_type == "cpu":
        return 0 if cpus <= 4 else max(1, cpus // 8)
    return max(1, min(8, cpus // max(1, local_world_size) - 1))
