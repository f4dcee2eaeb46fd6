"""Request errors that carry their HTTP status; the handler turns them into a JSON body, never a traceback."""
from __future__ import annotations

import json
from http import HTTPStatus

from sagemaker_inference.errors import BaseInferenceToolkitError


class RequestError(BaseInferenceToolkitError):
    """A client mistake: the status says which, the message says what to fix."""

    status = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str):
        super().__init__(int(self.status), message, self.status.phrase)


class BadRequestError(RequestError):
    status = HTTPStatus.BAD_REQUEST


class PayloadTooLargeError(RequestError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class UnsupportedMediaTypeError(RequestError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class NotAcceptableError(RequestError):
    status = HTTPStatus.NOT_ACCEPTABLE


def error_body(status_code: int, message: str) -> str:
    return json.dumps({"error": HTTPStatus(status_code).phrase, "status": status_code, "message": message})
