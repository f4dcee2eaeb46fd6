"""Request bytes -> a batch of normalised image tensors, with every failure mapped to a 4xx error."""
from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..imaging import load_rgb
from ..presets import EvalPreset, normalize
from . import content_types
from .errors import BadRequestError, PayloadTooLargeError, RequestError, UnsupportedMediaTypeError

MAX_IMAGES_PER_REQUEST = 64
# Decoding work one request may ask for, in megapixels summed over its images (high bit-depth pixels
# count 4x: they decode to 4-byte values). Bounds how long one legal request holds the worker.
DEFAULT_MAX_REQUEST_MEGAPIXELS = 100
WIDE_PIXEL_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
MAX_INTEGER_DIGITS = 18  # JSON integers longer than this are refused before Python converts them


@dataclass(frozen=True)
class Preprocessing:
    """Training's evaluation transform (imgcls.presets.EvalPreset): resize shorter side, centre crop, normalise."""

    preset: EvalPreset
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_model_config(cls, config: dict) -> "Preprocessing":
        preset = EvalPreset(int(config["image_size"]), config.get("resize_size"))
        return cls(preset, tuple(config["mean"]), tuple(config["std"]))

    @property
    def image_size(self) -> int:
        return self.preset.size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB image -> 3 x image_size x image_size normalised float32."""
        return normalize(self.preset(image)[None], self.mean, self.std)[0]


@dataclass
class DecodedRequest:
    batch: torch.Tensor           # N x 3 x H x W, float32, normalised
    single: bool                  # one image sent as such (not a list): answer with one result, not a list
    top_k: int | None = None      # from the JSON body


class PixelBudget:
    """Megapixels of decoding left to one request; spent before each image's pixels are decoded."""

    def __init__(self, megapixels: float = DEFAULT_MAX_REQUEST_MEGAPIXELS):
        self.limit = megapixels
        self.spent = 0.0

    def spend(self, image: Image.Image) -> None:
        width, height = image.size
        cost = width * height * (4 if image.mode in WIDE_PIXEL_MODES else 1) / 1e6
        self.spent += cost
        if self.spent > self.limit:
            raise PayloadTooLargeError(
                f"request needs {self.spent:.0f} megapixels of decoding ({width}x{height} {image.mode} image "
                f"reached it); at most {self.limit:g} per request (IMGCLS_MAX_REQUEST_MEGAPIXELS)")


def decode_image(data: bytes, prep: Preprocessing, budget: PixelBudget | None = None) -> Image.Image:
    """Bytes of any still image PIL reads -> upright 8-bit RGB, the same way training decodes.

    JPEGs much larger than the model input are decoded at 1/2, 1/4 or 1/8 scale (draft mode).
    Animated GIF/WebP and multi-page TIFF give their first frame. Images declaring more than
    imgcls.imaging's pixel limit are refused before their pixels are decoded.
    """
    if not data:
        raise BadRequestError("empty body: send the bytes of an image")
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; refuse that range too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if budget is not None:
                with Image.open(io.BytesIO(data)) as header_only:  # reads the header, decodes no pixel
                    budget.spend(header_only)
            return load_rgb(io.BytesIO(data), min_side=prep.preset.decode_side)
    except PayloadTooLargeError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadRequestError(f"image rejected as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise BadRequestError(f"cannot decode image ({len(data)} bytes): not a format PIL can read") from None
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, struct.error...) on bad bytes
        raise BadRequestError(f"cannot decode image ({len(data)} bytes): {type(exc).__name__}: {exc}") from None


def image_to_tensor(data: bytes, prep: Preprocessing, budget: PixelBudget | None = None) -> torch.Tensor:
    return prep(decode_image(data, prep, budget))


def decode_request(body: bytes | bytearray | None, content_type: str, prep: Preprocessing,
                   max_payload_bytes: int | None = None,
                   max_megapixels: float = DEFAULT_MAX_REQUEST_MEGAPIXELS) -> DecodedRequest:
    body = bytes(body or b"")
    if max_payload_bytes is not None and len(body) > max_payload_bytes:
        raise PayloadTooLargeError(f"payload of {len(body)} bytes is over the limit of {max_payload_bytes} bytes")
    kind = content_types.media_type(content_type)
    budget = PixelBudget(max_megapixels)
    if kind in content_types.IMAGE_TYPES:
        return DecodedRequest(image_to_tensor(body, prep, budget)[None], single=True)
    if kind == content_types.JSON:
        return _decode_json(body, prep, budget)
    if kind == content_types.NPY:
        return DecodedRequest(_decode_npy(body, prep), single=False)
    raise UnsupportedMediaTypeError(
        f"Content-Type {content_type or '(none)'} is not supported; use one of {', '.join(content_types.REQUEST_TYPES)}")


def _decode_json(body: bytes, prep: Preprocessing, budget: PixelBudget) -> DecodedRequest:
    """{"image": "<base64>"} or {"images": ["<base64>", ...]}, with an optional "top_k"."""
    try:
        payload = json.loads(body, parse_int=_bounded_int)
    except RecursionError:
        raise BadRequestError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequestError(f"malformed JSON: {exc}") from None
    if not isinstance(payload, dict) or ("image" in payload) == ("images" in payload):
        raise BadRequestError('JSON body must be an object with either "image": "<base64>" or "images": ["<base64>", ...]')
    single = "image" in payload
    encoded = [payload["image"]] if single else payload["images"]
    if not isinstance(encoded, list) or not encoded:
        raise BadRequestError('"images" must be a non-empty list of base64 strings')
    if len(encoded) > MAX_IMAGES_PER_REQUEST:
        raise BadRequestError(f'"images" has {len(encoded)} entries; at most {MAX_IMAGES_PER_REQUEST} per request')
    tensors = []
    for position, item in enumerate(encoded):
        where = "image" if single else f"images[{position}]"
        if not isinstance(item, str):
            raise BadRequestError(f"{where}: expected a base64 string, got {type(item).__name__}")
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequestError(f"{where}: malformed base64: {exc}") from None
        try:
            tensors.append(image_to_tensor(data, prep, budget))
        except RequestError as exc:
            raise type(exc)(f"{where}: {exc.message}") from None
    return DecodedRequest(torch.stack(tensors), single=single, top_k=parse_top_k(payload.get("top_k")))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise BadRequestError(f"JSON integer with {len(text)} digits; at most {MAX_INTEGER_DIGITS}")
    return int(text)


def _decode_npy(body: bytes, prep: Preprocessing) -> torch.Tensor:
    """An already preprocessed float array, 3xHxW or Nx3xHxW; never unpickled."""
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, EOFError, OSError... on bad headers
        raise BadRequestError(f"cannot read .npy body: {type(exc).__name__}: {exc}") from None
    if not isinstance(array, np.ndarray):  # np.load opens .npz archives too
        raise BadRequestError("application/x-npy body must be a single array (.npy), not an .npz archive")
    if array.ndim == 3:
        array = array[None]
    expected = (3, prep.image_size, prep.image_size)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected or array.shape[0] == 0:
        raise BadRequestError(f"npy array has shape {array.shape}; expected (N, {', '.join(map(str, expected))}) or {expected}")
    if array.shape[0] > MAX_IMAGES_PER_REQUEST:
        raise BadRequestError(f"npy batch of {array.shape[0]}; at most {MAX_IMAGES_PER_REQUEST} per request")
    if not np.issubdtype(array.dtype, np.floating):
        raise BadRequestError(f"npy array must hold finite floats (got dtype {array.dtype})")
    with np.errstate(over="ignore", invalid="ignore"):
        as_float32 = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(as_float32).all():  # 1e300 as float64 becomes inf as float32
        raise BadRequestError(f"npy array must hold values that are finite as float32 (got dtype {array.dtype})")
    return torch.from_numpy(as_float32)


def parse_top_k(value) -> int | None:
    """An int or a string of digits (custom attributes are text), at least 1; None when absent."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        top_k = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        if len(value.strip()) > MAX_INTEGER_DIGITS:
            raise BadRequestError(f"top_k has {len(value.strip())} digits; at most {MAX_INTEGER_DIGITS}")
        top_k = int(value)
    else:
        raise BadRequestError(f"top_k must be a positive integer, got {value!r}")
    if top_k < 1:
        raise BadRequestError(f"top_k must be a positive integer, got {value!r}")
    return top_k
