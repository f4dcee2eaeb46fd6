"""Small real datasets written as image folders: scikit-learn's handwritten digits, and awkward image files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits_dataset(root: Path, seed: int = 0) -> Path:
    """sklearn's 1,797 8x8 digits as PNGs in train/valid/test (70/15/15, stratified) folder-per-class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255 / 16)).astype(np.uint8)
    idx = np.arange(len(images))
    train_idx, rest = train_test_split(idx, test_size=0.3, stratify=digits.target, random_state=seed)
    valid_idx, test_idx = train_test_split(rest, test_size=0.5, stratify=digits.target[rest], random_state=seed)
    for split, chosen in (("train", train_idx), ("valid", valid_idx), ("test", test_idx)):
        for i in chosen:
            folder = root / split / f"{digits.target[i]:03d}.digit_{digits.target[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], "L").save(folder / f"{i:04d}.png")
    return root


def awkward_images(base: Image.Image) -> dict[str, bytes]:
    """The same picture in modes and containers that real datasets contain."""
    out = {}

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    save("gray.jpg", base.convert("L"), "JPEG")
    save("cmyk.jpg", base.convert("CMYK"), "JPEG")
    save("rgba.png", base.convert("RGBA"), "PNG")
    save("palette.png", base.convert("P"), "PNG")
    save("gray16.png", Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257), "PNG")
    rotated = base.rotate(90, expand=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    save("exif_rotated.jpg", rotated, "JPEG", exif=exif.tobytes())
    return out


def broken_files(good_jpeg: bytes) -> dict[str, bytes]:
    return {
        "truncated.jpg": good_jpeg[: len(good_jpeg) // 2],
        "empty.jpg": b"",
        "notes.txt": b"not an image",
        "random.png": np.random.default_rng(0).bytes(2048),
    }


# Class names as folder names allow them: text matplotlib would read as mathtext or format codes,
# markup, a lone backslash, and a name near the 255-byte limit of a file name.
AWKWARD_CLASS_NAMES = ["$a^$ hound", r"$\frac{1}{0}$", "_x", "%s", "\\", "{}", "<b>&amp; co", "Long_" * 50]


def rename_classes(root: Path, names: list[str]) -> Path:
    """Give the class folders of every split under `root` these names (kept in the folders' order)."""
    for split in (p for p in root.iterdir() if p.is_dir()):
        folders = sorted(p for p in split.iterdir() if p.is_dir())
        for i, (folder, name) in enumerate(zip(folders, names, strict=True), start=1):
            folder.rename(split / f"{i:03d}.{name}")
    return root
