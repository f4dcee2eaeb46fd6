"""Decoding awkward files into the RGB the model expects."""
import io

import numpy as np
import pytest
from PIL import Image

from datasets import awkward_images
from imgcls.imaging import load_rgb


@pytest.fixture(scope="module")
def base() -> Image.Image:
    from skimage import data
    return Image.fromarray(data.astronaut()).resize((200, 120))  # a real photo, landscape


@pytest.mark.parametrize("name", ["gray.jpg", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png", "exif_rotated.jpg"])
def test_awkward_images_decode_to_upright_rgb(base, name):
    img = load_rgb(io.BytesIO(awkward_images(base)[name]))
    assert img.mode == "RGB" and img.size == (200, 120)  # EXIF rotation undone
    expected = {"palette.png": base.convert("P").convert("RGB")}.get(name, base)  # palette loss is the file's, not ours
    ref = np.asarray(base.convert("L") if name.startswith("gray") else expected, dtype=np.float64)
    got = np.asarray(img.convert("L") if name.startswith("gray") else img, dtype=np.float64)
    assert np.abs(got - ref).mean() < 12, name  # same picture, up to JPEG/palette loss


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert load_rgb(io.BytesIO(buf.getvalue())).getpixel((5, 5)) == (255, 255, 255)


def test_large_jpeg_is_decoded_at_reduced_size_but_never_below_need():
    buf = io.BytesIO()
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(buf, "JPEG")
    img = load_rgb(io.BytesIO(buf.getvalue()), min_side=256)
    assert 256 <= min(img.size) < 3000 // 2
