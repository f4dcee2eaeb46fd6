"""Serving decoder, encoder and header parsing, in process, on real photos and on awkward files.

The photo helpers here are shared with test_serving.py and test_decoder_fuzz.py.
"""
from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from imgcls.serving import content_types, encoder
from imgcls.serving.decoder import Preprocessing, decode_image, decode_request, parse_top_k
from imgcls.serving.errors import (BadRequestError, NotAcceptableError, PayloadTooLargeError,
                                   UnsupportedMediaTypeError)
from imgcls.serving.handler_service import parse_custom_attributes

CONFIG = {"image_size": 64, "resize_size": 73, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
PREP = Preprocessing.from_model_config(CONFIG)


def photos() -> dict[str, Image.Image]:
    """Real photographs shipped by installed packages."""
    import matplotlib.cbook
    from skimage import data
    from sklearn.datasets import load_sample_image

    return {
        "astronaut": Image.fromarray(data.astronaut()),
        "chelsea": Image.fromarray(data.chelsea()),
        "coffee": Image.fromarray(data.coffee()),
        "china": Image.fromarray(load_sample_image("china.jpg")),
        "grace_hopper": Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"),
    }


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """Pixels stored rotated, with EXIF orientation 6 ("rotate 90 CW to view") that makes them upright again."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def animated_gif(first: Image.Image, second: Image.Image) -> bytes:
    return encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)


def multipage_tiff(first: Image.Image, second: Image.Image) -> bytes:
    return encode(first, "TIFF", save_all=True, append_images=[second])


def png_16bit(gray8: np.ndarray) -> bytes:
    return encode(Image.fromarray(gray8.astype(np.uint16) * 257), "PNG")


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels that compresses to a few kB."""
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * side, 9))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return photos()["chelsea"]


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP"])
def test_every_photo_in_every_format_becomes_a_normalised_tensor(fmt):
    for name, photo in photos().items():
        request = decode_request(encode(photo, fmt), content_types.X_IMAGE, PREP)
        assert request.batch.shape == (1, 3, 64, 64), name
        assert request.single
        # Normalised natural images sit within a few units of zero, not in [0, 255].
        assert -3 < float(request.batch.min()) and float(request.batch.max()) < 3, name


def test_jpeg_pipeline_matches_the_training_eval_transform(chelsea):
    from imgcls.imaging import load_rgb
    from imgcls.presets import EvalPreset, normalize

    data = encode(chelsea, "JPEG", quality=90)
    preset = EvalPreset(64, 73)
    expected = normalize(preset(load_rgb(io.BytesIO(data), min_side=73))[None], CONFIG["mean"], CONFIG["std"])
    assert torch.equal(decode_request(data, content_types.JPEG, PREP).batch, expected)


def test_large_jpeg_is_decoded_at_reduced_size_with_the_same_result():
    big = photos()["astronaut"].resize((4000, 3000), Image.BICUBIC)
    data = encode(big, "JPEG", quality=90)
    decoded = decode_image(data, PREP)
    assert decoded.size == (500, 375)  # 1/8 scale draft, shorter side still >= resize_size 73
    full = Image.open(io.BytesIO(data)).convert("RGB").resize(decoded.size, Image.BILINEAR)
    assert mean_abs_diff(decoded, full) < 6


def test_exif_orientation_is_applied(chelsea):
    upright = decode_image(encode(chelsea, "JPEG", quality=95), PREP)
    rotated = decode_image(exif_rotated_jpeg(chelsea), PREP)
    assert rotated.size == upright.size
    assert mean_abs_diff(rotated, upright) < 4
    ignored = Image.open(io.BytesIO(exif_rotated_jpeg(chelsea))).convert("RGB")
    assert ignored.size != upright.size  # without the EXIF step it would be sideways


def test_animated_gif_and_multipage_tiff_give_their_first_frame(chelsea):
    black = Image.new("RGB", chelsea.size)
    for data in (animated_gif(chelsea, black), multipage_tiff(chelsea, black)):
        decoded = decode_image(data, PREP)
        assert np.asarray(decoded).mean() > 60  # the photo, not the black second frame
    tiff_first = decode_image(multipage_tiff(chelsea, black), PREP)
    assert mean_abs_diff(tiff_first, chelsea) < 1


def test_16bit_png_keeps_its_full_range(chelsea):
    gray = np.asarray(chelsea.convert("L"))
    decoded = decode_image(png_16bit(gray), PREP)
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded)[..., 0].astype(int) - gray).max() <= 1


def test_cmyk_grayscale_palette_and_alpha_images_become_rgb(chelsea):
    cmyk = decode_image(encode(chelsea.convert("CMYK"), "JPEG", quality=95), PREP)  # drafted to 1/4 size
    assert mean_abs_diff(cmyk, chelsea.resize(cmyk.size, Image.BILINEAR)) < 8
    gray = decode_image(encode(chelsea.convert("L"), "PNG"), PREP)
    channels = np.asarray(gray)
    assert (channels[..., 0] == channels[..., 1]).all() and (channels[..., 1] == channels[..., 2]).all()
    palette = chelsea.convert("P")
    assert mean_abs_diff(decode_image(encode(palette, "PNG"), PREP), palette.convert("RGB")) == 0
    transparent = Image.new("RGBA", (80, 80), (255, 0, 0, 0))
    assert np.asarray(decode_image(encode(transparent, "PNG"), PREP)).min() == 255  # white, not red


@pytest.mark.parametrize("data, reason", [
    (b"", "empty body"),
    (b"\xff\xd8\xff\xe0garbage", "cannot decode image"),
    (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "not a format PIL can read"),
])
def test_undecodable_bytes_are_a_400(data, reason):
    with pytest.raises(BadRequestError, match=reason) as caught:
        decode_request(data, content_types.JPEG, PREP)
    assert caught.value.status_code == 400


def test_truncated_jpeg_is_a_400(chelsea):
    data = encode(chelsea, "JPEG")
    with pytest.raises(BadRequestError, match="cannot decode image"):
        decode_request(data[: len(data) // 2], content_types.JPEG, PREP)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_bomb()
    assert len(bomb) < 100_000
    with pytest.raises(BadRequestError, match="decompression bomb"):
        decode_request(bomb, content_types.PNG, PREP)


def test_payload_limit_and_unsupported_content_type():
    with pytest.raises(PayloadTooLargeError) as caught:
        decode_request(b"x" * 2001, content_types.JPEG, PREP, max_payload_bytes=2000)
    assert caught.value.status_code == 413
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        decode_request(b"a,b", "text/csv", PREP)
    assert caught.value.status_code == 415


def test_json_single_and_batch(chelsea):
    one = base64.b64encode(encode(chelsea, "JPEG")).decode()
    two = base64.b64encode(encode(photos()["coffee"], "PNG")).decode()
    single = decode_request(json.dumps({"image": one, "top_k": 2}).encode(), "application/json; charset=utf-8", PREP)
    assert single.single and single.top_k == 2 and single.batch.shape == (1, 3, 64, 64)
    batch = decode_request(json.dumps({"images": [one, two]}).encode(), content_types.JSON, PREP)
    assert not batch.single and batch.top_k is None and batch.batch.shape == (2, 3, 64, 64)
    assert torch.equal(batch.batch[0], single.batch[0])


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "either"),
    (b'{"image": "a", "images": ["a"]}', "either"),
    (b'{"images": []}', "non-empty list"),
    (b'{"image": 5}', "base64 string"),
    (b'{"image": "***not base64***"}', "malformed base64"),
    (json.dumps({"images": [base64.b64encode(b"nope").decode()]}).encode(), r"images\[0\]: cannot decode"),
    (b'{"image": "", "top_k": 0}', "empty body"),
])
def test_bad_json_bodies_are_400s(body, reason):
    with pytest.raises(BadRequestError, match=reason):
        decode_request(body, content_types.JSON, PREP)


def test_npy_input_is_used_as_is_and_never_unpickled():
    tensor = np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, tensor)
    assert np.array_equal(decode_request(buffer.getvalue(), content_types.NPY, PREP).batch.numpy(), tensor)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadRequestError, match="cannot read .npy"):
        decode_request(pickled.getvalue(), content_types.NPY, PREP)
    wrong = io.BytesIO()
    np.save(wrong, np.zeros((3, 32, 32), np.float32))
    with pytest.raises(BadRequestError, match="expected"):
        decode_request(wrong.getvalue(), content_types.NPY, PREP)


def test_top_k_parsing():
    assert parse_top_k(None) is None
    assert parse_top_k(3) == 3 and parse_top_k(" 7 ") == 7
    for bad in (0, -1, "x", "2.5", True, 1.5, "²"):
        with pytest.raises(BadRequestError):
            parse_top_k(bad)
    assert parse_custom_attributes("top_k=3, output=probabilities; trace=abc") == {
        "top_k": "3", "output": "probabilities", "trace": "abc"}
    assert parse_custom_attributes("free text") == {}


def test_accept_negotiation():
    choose = content_types.choose_response_type
    assert choose(None, content_types.JSON) == content_types.JSON
    assert choose("*/*", content_types.NPY) == content_types.NPY
    assert choose("application/x-npy", content_types.JSON) == content_types.NPY
    assert choose("text/html;q=0.9, application/json;q=0.5", content_types.NPY) == content_types.JSON
    assert choose("application/x-npy;q=0, application/json", content_types.NPY) == content_types.JSON
    assert choose("application/json;verbose", content_types.NPY) == content_types.JSON_VERBOSE
    assert choose("application/json; Verbose; q=0.9, application/x-npy;q=0.1", content_types.NPY) == content_types.JSON_VERBOSE
    with pytest.raises(NotAcceptableError) as caught:
        choose("text/csv", content_types.JSON)
    assert caught.value.status_code == 406


def test_encoder_top_k_sorted_and_full_vector():
    probabilities = torch.softmax(torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 0.0, 0.0]]), dim=1)
    names = ["a", "b", "c", "d"]
    body, kind = encoder.encode(probabilities, names, content_types.JSON, 3, full_vector=False, single=False)
    results = json.loads(body)
    assert kind == content_types.JSON and [r["label"] for r in results[0]] == ["b", "d", "a"]
    assert [r["index"] for r in results[1]][0] == 0
    for result in results:
        values = [r["probability"] for r in result]
        assert values == sorted(values, reverse=True) and sum(values) <= 1 + 1e-6
    body, _ = encoder.encode(probabilities[:1], names, content_types.JSON, 10, full_vector=False, single=True)
    assert len(json.loads(body)) == 4  # top_k above the class count gives every class once
    body, kind = encoder.encode(probabilities, names, content_types.NPY, 3, full_vector=False, single=False)
    matrix = np.load(io.BytesIO(body), allow_pickle=False)
    assert kind == content_types.NPY and matrix.shape == (2, 4) and list(np.argmax(matrix, 1)) == [1, 0]
    body, _ = encoder.encode(probabilities, names, content_types.JSON, 3, full_vector=True, single=False)
    assert np.allclose(np.array(json.loads(body)), probabilities.numpy())


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("body", [
    ('{"image": ' + _nested(100_000) + "}").encode(),
    ('{"images": ["x"], "extra": ' + _nested(100_000) + "}").encode(),
    ('{"image": "x", "top_k": ' + _nested(100_000) + "}").encode(),
    _nested(100_000).encode(),
])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(body):
    with pytest.raises(BadRequestError, match="nested"):
        decode_request(body, content_types.JSON, PREP)


def test_top_k_with_thousands_of_digits_is_a_400(chelsea):
    image = base64.b64encode(encode(chelsea, "JPEG")).decode()
    huge = "9" * 5000
    with pytest.raises(BadRequestError, match="digits"):
        decode_request(('{"image": "%s", "top_k": %s}' % (image, huge)).encode(), content_types.JSON, PREP)
    with pytest.raises(BadRequestError, match="top_k"):
        parse_top_k(huge)
    assert parse_top_k("1" + "0" * 17) == 10 ** 17  # long but legal: capped later by the class count


def test_npz_archive_sent_as_npy_is_a_400():
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((3, 64, 64), np.float32))
    with pytest.raises(BadRequestError, match="npz|single array"):
        decode_request(buffer.getvalue(), content_types.NPY, PREP)


@pytest.mark.parametrize("array", [np.full((1, 3, 64, 64), 1e300, np.float64),
                                   np.full((3, 64, 64), np.inf, np.float32),
                                   np.full((3, 64, 64), np.nan, np.float16)])
def test_npy_values_that_are_not_finite_in_float32_are_a_400(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    with pytest.raises(BadRequestError, match="finite"):
        decode_request(buffer.getvalue(), content_types.NPY, PREP)


def test_encoder_never_writes_nan_into_json():
    probabilities = torch.tensor([[float("nan"), 0.5]])
    with pytest.raises(ValueError):
        encoder.encode(probabilities, ["a", "b"], content_types.JSON, 2, full_vector=False, single=True)
    with pytest.raises(ValueError):
        encoder.encode(probabilities, ["a", "b"], content_types.JSON, 2, full_vector=True, single=True)


def test_decoding_work_per_request_is_bounded_before_any_pixel_is_decoded():
    import time

    small_file_big_image = png_bomb(7000)  # 49 megapixels, under the per-image limit, a few kB
    body = json.dumps({"images": [base64.b64encode(small_file_big_image).decode()] * 46}).encode()
    started = time.perf_counter()
    with pytest.raises(PayloadTooLargeError, match=r"images\[2\].*megapixels") as caught:
        decode_request(body, content_types.JSON, PREP)
    assert caught.value.status_code == 413
    assert time.perf_counter() - started < 5  # two images decoded, not 46
    wide = encode(Image.fromarray(np.zeros((3000, 3000), np.uint16)), "PNG")  # 9 MP, 16-bit: counts 36
    with pytest.raises(PayloadTooLargeError):
        decode_request(wide, content_types.PNG, PREP, max_megapixels=30)
    assert decode_request(wide, content_types.PNG, PREP, max_megapixels=40).batch.shape == (1, 3, 64, 64)


def test_16bit_decoding_memory_stays_near_the_decoded_image():
    import tracemalloc

    wide = encode(Image.fromarray((np.arange(2000 * 2000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(2000, 2000)), "PNG")
    tracemalloc.start()
    decode_image(wide, PREP)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 14 * 2000 * 2000, peak  # float64 copies took about 30 bytes a pixel
