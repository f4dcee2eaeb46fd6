"""The MMS handler: `handle(data, context)` loads the model on its first call and then serves batches.

A module-level function entry point (`imgcls.serving.handler_service:handle`) rather than a class:
MMS swallows exceptions raised by a class's initialize() and would report a worker without a
model as loaded; an exception from the function entry point fails the worker instead, and the
readiness /ping keeps answering 503.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
from dataclasses import dataclass
from http import HTTPStatus

import torch

from . import content_types, encoder, model_loading, watchdog
from .decoder import DEFAULT_MAX_REQUEST_MEGAPIXELS, DecodedRequest, decode_request, parse_top_k
from .errors import RequestError, error_body

log = logging.getLogger(__name__)

CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
DEFAULT_TOP_K = 5
PR_SET_PDEATHSIG = 1
TIMING = [] if os.environ.get("IMGCLS_TIMING_LOG") == "1" else None  # per-batch stage timestamps, on request
# Answers carry `Server-Timing: handler;dur=<ms>` (decode, forward, encode of their batch), so a
# client can tell the server's own time from everything around it (bench/serve_latency.py does).
SERVER_TIMING = os.environ.get("IMGCLS_SERVER_TIMING") == "1"


@dataclass(frozen=True)
class Settings:
    default_accept: str
    max_payload_bytes: int
    default_top_k: int
    cpu_threads: int | None
    timeout_seconds: float
    max_request_megapixels: float

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        return cls(default_accept=content_types.media_type(env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or content_types.JSON),
                   max_payload_bytes=int(float(env.get("SAGEMAKER_MAX_PAYLOAD_IN_MB") or 6) * 1024 * 1024),
                   default_top_k=int(env.get("IMGCLS_DEFAULT_TOP_K") or DEFAULT_TOP_K),
                   cpu_threads=int(env["IMGCLS_TORCH_THREADS"]) if env.get("IMGCLS_TORCH_THREADS") else None,
                   timeout_seconds=float(env.get("SAGEMAKER_MODEL_SERVER_TIMEOUT") or 60),
                   max_request_megapixels=float(env.get("IMGCLS_MAX_REQUEST_MEGAPIXELS")
                                                or DEFAULT_MAX_REQUEST_MEGAPIXELS))


@dataclass
class RequestOptions:
    accept: str
    top_k: int | None
    full_vector: bool


def parse_custom_attributes(header: str | None) -> dict[str, str]:
    """'top_k=3, output=probabilities' -> {'top_k': '3', 'output': 'probabilities'}; other text is ignored."""
    attributes = {}
    for part in (header or "").replace(";", ",").split(","):
        key, sep, value = part.partition("=")
        if sep:
            attributes[key.strip().lower()] = value.strip()
    return attributes


def _die_with_parent() -> None:
    """MMS forks this worker from a listener process; if that dies (SIGKILL, crash), die too instead of lingering."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        return
    # MMS's own SIGTERM handler in the worker only deletes files and keeps running.
    signal.signal(signal.SIGTERM, lambda signo, frame: os._exit(0))


class HandlerService:
    def __init__(self):
        self.model: model_loading.LoadedModel | None = None
        self.settings: Settings | None = None
        self.watchdog: watchdog.Watchdog | None = None

    def initialize(self, context) -> None:
        self.settings = Settings.from_env()
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.model = model_loading.load(properties["model_dir"], None if gpu_id is None else int(gpu_id),
                                        self.settings.cpu_threads)
        # MMS's own batch_size property stays 1 for a start-up model; the real one comes from serve.
        batch_size = int(os.environ.get("IMGCLS_BATCH_SIZE") or properties.get("batch_size") or 1)
        batch_sizes = tuple(sorted({1, batch_size}))
        seconds = self.model.warm_up(batch_sizes)
        log.info("warm-up with batch sizes %s took %.2f s; worker %d ready", batch_sizes, seconds, os.getpid())
        self.watchdog = watchdog.Watchdog(self.settings.timeout_seconds, watchdog.find_frontend_socket())

    def handle(self, data: list[dict], context) -> list[bytes | str]:
        # MMS's worker prints a metrics line to the frontend after every batch, which our log config
        # discards (MODEL_METRICS off): without a store it skips that write and the frontend's wake-up.
        context.metrics = None
        self.watchdog.begin(context.request_ids)
        started = time.perf_counter()
        try:
            responses = self._handle(data, context)
            if SERVER_TIMING:
                header = f"handler;dur={(time.perf_counter() - started) * 1e3:.2f}"
                for index in range(len(responses)):
                    context.set_response_header(index, "Server-Timing", header)
            return responses
        finally:
            self.watchdog.end()
            if TIMING:
                TIMING.append(("end", time.perf_counter()))
                log.info("timing requests=%d %s", len(data), " ".join(f"{n}={(t - TIMING[0][1]) * 1e3:.2f}" for n, t in TIMING))
                del TIMING[:]

    def _handle(self, data: list[dict], context) -> list[bytes | str]:
        """One answer per request of the MMS batch; the decoded images share one forward pass."""
        if TIMING is not None:
            TIMING[:] = [("start", time.perf_counter())]
        responses: list[bytes | str | None] = [None] * len(data)
        decoded: dict[int, tuple[DecodedRequest, RequestOptions]] = {}
        for index, request in enumerate(data):
            try:
                decoded[index] = self._decode(index, request, context)
            except RequestError as exc:
                responses[index] = self._error(context, index, exc.status_code, exc.message)
            except Exception as exc:  # never a traceback to the client; the log keeps it
                log.exception("request %d: unexpected decoding failure", index)
                responses[index] = self._error(context, index, 500, f"internal error: {type(exc).__name__}")
        if TIMING is not None:
            TIMING.append(("decoded", time.perf_counter()))
        if decoded:
            try:
                self._predict_and_encode(decoded, responses, context)
            except Exception as exc:
                log.exception("forward pass failed")
                for index in decoded:
                    responses[index] = self._error(context, index, 500, f"internal error: {type(exc).__name__}")
        return responses

    def _decode(self, index: int, request: dict, context) -> tuple[DecodedRequest, RequestOptions]:
        headers = {str(k).lower(): v for k, v in context.get_all_request_header(index).items() if isinstance(v, str)}
        attributes = parse_custom_attributes(headers.get(CUSTOM_ATTRIBUTES_HEADER))
        accept = content_types.choose_response_type(headers.get("accept"), self.settings.default_accept)
        body = request.get("body")
        if body is None:
            body = next((v for v in request.values() if isinstance(v, (bytes, bytearray))), b"")
        decoded = decode_request(body, headers.get("content-type", ""), self.model.preprocessing,
                                 self.settings.max_payload_bytes, self.settings.max_request_megapixels)
        top_k = decoded.top_k or parse_top_k(attributes.get("top_k"))
        full_vector = attributes.get("output", "").lower() in ("probabilities", "vector")
        return decoded, RequestOptions(accept, top_k, full_vector)

    def _predict_and_encode(self, decoded, responses, context) -> None:
        batch = torch.cat([request.batch for request, _ in decoded.values()])
        probabilities = self.model.predict(batch)
        if TIMING is not None:
            TIMING.append(("forward", time.perf_counter()))
        start = 0
        for index, (request, options) in decoded.items():
            rows = probabilities[start:start + len(request.batch)]
            start += len(request.batch)
            if not torch.isfinite(rows).all():  # e.g. npy inputs near float32's limit overflow in the network
                responses[index] = self._error(context, index, 400, "the model's output for this input is not "
                                               "finite (NaN or infinity): input values out of range?")
                continue
            body, content_type = encoder.encode(rows, self.model.class_names, options.accept,
                                                options.top_k or self.settings.default_top_k,
                                                options.full_vector, request.single)
            context.set_response_content_type(index, content_type)
            responses[index] = body

    @staticmethod
    def _error(context, index: int, status: int, message: str) -> str:
        context.set_response_status(status, HTTPStatus(status).phrase, index)
        context.set_response_content_type(index, content_types.JSON)
        return error_body(status, message)


_service = HandlerService()


def handle(data, context):
    """MMS entry point: called with data=None once at worker start (load + warm-up), then per batch."""
    if data is None:
        _die_with_parent()
        _service.initialize(context)
        return None
    return _service.handle(data, context)
