"""Media types the endpoint reads and writes, and the parsing of Content-Type / Accept headers."""
from __future__ import annotations

from .errors import NotAcceptableError

JPEG = "image/jpeg"
PNG = "image/png"
WEBP = "image/webp"
X_IMAGE = "application/x-image"  # SageMaker's built-in image classifier type: any format PIL can open
OCTET_STREAM = "application/octet-stream"  # what generic clients send for raw bytes: read as an image
JSON = "application/json"
JSON_VERBOSE = "application/json;verbose"  # JumpStart predictors: predicted_label, labels, probabilities
NPY = "application/x-npy"
ANY = "*/*"

IMAGE_TYPES = (JPEG, PNG, WEBP, X_IMAGE, OCTET_STREAM)
REQUEST_TYPES = (*IMAGE_TYPES, JSON, NPY)
RESPONSE_TYPES = (JSON, JSON_VERBOSE, NPY)


def media_type(header: str | None) -> str:
    """'Image/JPEG; charset=x' -> 'image/jpeg'; a missing header -> ''."""
    return (header or "").split(";", 1)[0].strip().lower()


def choose_response_type(accept: str | None, default: str) -> str:
    """Pick the response type from an Accept header such as 'application/x-npy, application/json;q=0.5'."""
    if not accept or not accept.strip():
        return default
    offers = []
    for position, part in enumerate(accept.split(",")):
        kind, *params = [p.strip() for p in part.split(";")]
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        kind = kind.lower()
        if kind == JSON and "verbose" in (p.lower() for p in params):
            kind = JSON_VERBOSE
        offers.append((-quality, position, kind))
    for negative_quality, _, kind in sorted(offers):
        if negative_quality >= 0:  # q=0 means "not this one"
            continue
        if kind in (ANY, "application/*"):
            return default
        if kind in RESPONSE_TYPES:
            return kind
    raise NotAcceptableError(f"cannot answer with Accept: {accept}; supported: {', '.join(RESPONSE_TYPES)}")
