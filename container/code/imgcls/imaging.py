"""Decoding images into RGB the same way for training and serving."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# Decompression-bomb guard: PIL raises DecompressionBombError above twice this many pixels.
Image.MAX_IMAGE_PIXELS = 50_000_000


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, PA, RGBA, CMYK, I;16, I, F...) to 8-bit RGB; alpha is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grey (e.g. 16-bit PNG)
        values = np.asarray(img)
        peak = 65535 if values.max(initial=0) > 255 else 255
        # Integer arithmetic in place: about 8 bytes a pixel beside the decoded image, not 30 (float64 copies).
        scaled = np.clip(values, 0, peak).astype(np.uint32)
        scaled *= 255
        scaled //= peak
        img = Image.fromarray(scaled.astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_rgb(source, min_side: int | None = None) -> Image.Image:
    """Open, decode at reduced scale when far larger than needed (JPEG draft), apply EXIF rotation, make RGB.

    `min_side`: the shorter side the caller needs; JPEG decoding may shrink by 1/2, 1/4 or 1/8 but never below it.
    """
    img = Image.open(source)
    if min_side and img.format == "JPEG":
        w, h = img.size
        scale = min_side / min(w, h)
        if scale < 0.5:
            img.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
    img = ImageOps.exif_transpose(img)  # also forces the decode
    return to_rgb(img)
