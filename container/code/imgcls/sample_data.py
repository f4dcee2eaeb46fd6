"""A small, learnable image dataset in the dogImages layout (train/valid/test, NNN.Class_name folders).

Each class is a coloured shape on a noisy background at a random place and size, so a model
must learn shape and colour, not memorise pixels. Used by the demo, local tests and benchmarks.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = [
    ("Red_circle", (220, 40, 40), "circle"),
    ("Blue_square", (40, 70, 220), "square"),
    ("Green_triangle", (40, 180, 60), "triangle"),
    ("Yellow_cross", (230, 200, 30), "cross"),
    ("Purple_ring", (150, 50, 180), "ring"),
    ("Orange_bar", (240, 130, 20), "bar"),
    ("Cyan_diamond", (30, 200, 210), "diamond"),
    ("Pink_star", (240, 110, 170), "star"),
]


def _draw(shape: str, colour, size: int, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randint(60, 200) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    for _ in range(6):  # clutter
        x, y = rng.randint(0, size), rng.randint(0, size)
        d.line([x, y, x + rng.randint(-size // 3, size // 3), y + rng.randint(-size // 3, size // 3)],
               fill=tuple(rng.randint(0, 255) for _ in range(3)), width=2)
    r = rng.randint(size // 6, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    c = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in colour)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=c)
    elif shape == "square":
        d.rectangle(box, fill=c)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=c)
    elif shape == "cross":
        w = max(2, r // 3)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=c)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=c)
    elif shape == "ring":
        d.ellipse(box, outline=c, width=max(2, r // 3))
    elif shape == "bar":
        d.rectangle([cx - r, cy - r // 4, cx + r, cy + r // 4], fill=c)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=c)
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r / 2.5
            a = math.pi / 5 * i - math.pi / 2
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=c)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_sample_dataset(root: str | Path, num_classes: int = 4, per_class=(24, 6, 6), image_size: int = 96,
                        seed: int = 0, quality: int = 90) -> Path:
    """Write train/valid/test JPEGs under `root` and return it."""
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be 1..{len(CLASSES)}")
    root = Path(root)
    rng = random.Random(seed)  # noqa: S311 - sample images, not a secret
    for split, count in zip(("train", "valid", "test"), per_class):
        for idx, (name, colour, shape) in enumerate(CLASSES[:num_classes], start=1):
            folder = root / split / f"{idx:03d}.{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                _draw(shape, colour, image_size, rng).save(folder / f"{name}_{i:05d}.jpg", quality=quality)
    return root
