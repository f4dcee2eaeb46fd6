"""Train and eval image presets, kept apart from the loop.

Images leave the workers as uint8 CHW tensors (4x less to copy and pin than float32);
normalisation happens on the device in `normalize`.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image

from .models import IMAGENET_MEAN, IMAGENET_STD

RESIZE_RATIO = 256 / 224  # resize shorter side to this x crop, the torchvision eval convention


def _to_uint8_chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class TrainPreset:
    """Random resized crop (area share min_scale-1, ratio 3/4-4/3) and horizontal flip, in a single resample."""

    def __init__(self, image_size: int, min_scale: float = 0.25, hflip: bool = True, ratio=(3 / 4, 4 / 3)):
        self.size, self.hflip = image_size, hflip
        self.scale, self.log_ratio = (min_scale, 1.0), (math.log(ratio[0]), math.log(ratio[1]))
        self.decode_side = int(image_size * 1.5)

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[float, float, float, float]:
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
            if w <= width and h <= height:
                left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
                return left, top, left + w, top + h
        side = min(width, height)  # fallback: centre square
        return (width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        box = self.crop_box(*img.size, rng)
        out = img.resize((self.size, self.size), Image.BILINEAR, box=box)
        if self.hflip and rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return _to_uint8_chw(out)


class EvalPreset:
    """Resize the shorter side to resize_size and centre-crop image_size, in a single resample."""

    def __init__(self, image_size: int, resize_size: int | None = None):
        self.size = image_size
        self.resize_size = resize_size or round(image_size * RESIZE_RATIO)
        self.decode_side = self.resize_size

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        side = min(width, height) * self.size / self.resize_size  # crop side in source pixels
        return (width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2

    def __call__(self, img: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        return _to_uint8_chw(img.resize((self.size, self.size), Image.BILINEAR, box=self.crop_box(*img.size)))


def normalize(batch: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW on the device -> normalised float32."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255
    out = (batch.float() - mean_t) / std_t
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
