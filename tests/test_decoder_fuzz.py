"""Property-based fuzzing of the request path: mutated images, JSON and npy bodies never crash and never get a 5xx.

Two levels: the decoder alone (every outcome is a batch or a RequestError with a 4xx status),
and the whole handler service inside MMS's own request context (every answer's status is < 500).
"""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mms.context import Context, RequestProcessor

from imgcls.serving.decoder import Preprocessing, decode_request
from imgcls.serving.errors import RequestError
from imgcls.serving.handler_service import HandlerService
from test_serving_decoder import (CONFIG, animated_gif, encode, exif_rotated_jpeg, multipage_tiff, photos,
                                  png_16bit)

PREP = Preprocessing.from_model_config(CONFIG)
CONTENT_TYPES = ["image/jpeg", "image/png", "image/webp", "application/x-image", "application/json",
                 "application/x-npy", "text/plain", ""]
FUZZ_SETTINGS = settings(max_examples=1500, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _seed_bodies() -> list[bytes]:
    """Small valid inputs of every kind, to mutate: mutations of valid files reach deep into the decoders."""
    small = {name: photo.resize((96, 64)) for name, photo in photos().items()}
    chelsea = small["chelsea"]
    images = [encode(chelsea, "JPEG", quality=80), encode(chelsea, "JPEG", progressive=True),
              encode(small["coffee"], "PNG"), encode(small["china"], "WEBP"), encode(small["astronaut"], "GIF"),
              encode(small["grace_hopper"], "TIFF"), encode(chelsea, "BMP"), encode(chelsea.convert("CMYK"), "JPEG"),
              animated_gif(chelsea, small["coffee"]), multipage_tiff(chelsea, small["china"]),
              png_16bit(np.asarray(chelsea.convert("L"))), exif_rotated_jpeg(chelsea)]
    npy = io.BytesIO()
    np.save(npy, np.zeros((1, 3, 64, 64), np.float32))
    as_json = json.dumps({"images": [base64.b64encode(images[0]).decode()], "top_k": 2}).encode()
    return images + [npy.getvalue(), as_json]


SEEDS = _seed_bodies()


@st.composite
def mutated_bodies(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[position] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position:position + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[position:]
    return bytes(data)


bodies = st.one_of(mutated_bodies(), st.binary(max_size=2048))


@FUZZ_SETTINGS
@given(body=bodies, content_type=st.sampled_from(CONTENT_TYPES))
def test_decoder_answers_a_batch_or_a_4xx(body, content_type):
    try:
        request = decode_request(body, content_type, PREP, max_payload_bytes=1 << 20)
    except RequestError as error:
        assert 400 <= error.status_code < 500 and error.message
        return
    assert request.batch.ndim == 4 and request.batch.shape[1:] == (3, 64, 64)
    assert request.batch.dtype == torch.float32 and torch.isfinite(request.batch).all()


@pytest.fixture(scope="module")
def handler(trained_model_dir) -> HandlerService:
    service = HandlerService()
    service.initialize(Context("model", str(trained_model_dir), None, 1, None, "1.1.11"))
    return service


@st.composite
def requests(draw) -> tuple[bytes, dict]:
    headers = {"Content-Type": draw(st.sampled_from(CONTENT_TYPES))}
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(["application/json", "application/x-npy", "*/*", "text/csv",
                                                  "application/json;q=0", ",,;q=x"]))
    if draw(st.booleans()):
        headers["X-Amzn-SageMaker-Custom-Attributes"] = draw(st.sampled_from(
            ["top_k=2", "top_k=0", "top_k=999", "output=probabilities", "top_k=-1,output=vector", "=;,"]))
    return draw(bodies), headers


def test_handler_service_never_answers_5xx(handler):
    """Batches of mutated requests through the real handler, in MMS's request context."""

    @FUZZ_SETTINGS
    @given(batch=st.lists(requests(), min_size=1, max_size=3))
    def run(batch):
        context = Context("model", "unused", None, len(batch), None, "1.1.11")
        context.request_processor = [RequestProcessor(headers) for _, headers in batch]
        context.request_ids = {i: f"request-{i}" for i in range(len(batch))}
        answers = handler.handle([{"body": body} for body, _ in batch], context)
        assert len(answers) == len(batch)
        for index, answer in enumerate(answers):
            status, _ = context.get_response_status(index)
            assert status is None or status < 500, answer
            assert isinstance(answer, (bytes, str)) and answer

    run()
