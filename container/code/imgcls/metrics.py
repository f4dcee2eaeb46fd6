"""Fixed metric lines for SageMaker tuners (metric_definitions) and the regexes that read them."""
from __future__ import annotations

import unicodedata

_NUMBER = r"([0-9.]+(?:[eE][-+]?[0-9]+)?)"

# A metric always follows a space, and no printed name ends with another's, so each regex
# matches its own metric only. Plain syntax (no \b) that the tuner's regex engine accepts.
METRIC_NAMES = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "test_loss", "test_accuracy", "epoch_seconds")

METRIC_DEFINITIONS = [{"Name": name, "Regex": f" {name}={_NUMBER}"} for name in METRIC_NAMES]


def format_metrics(prefix: str, values: dict[str, float]) -> str:
    body = " ".join(f"{k}={v:.6f}" for k, v in values.items() if v is not None)
    return f"{prefix} {body}" if prefix else body


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object) -> str:
    """Text that came from data (file, folder, class names; their error messages), safe to log.

    Control, format and line-separator characters are escaped as \\xNN (a name can never start a
    new log line), and so is every "=" (it can never read as ` valid_loss=<number>` to a
    metric regex). Other characters, non-ASCII letters included, stay as they are; applying it
    twice changes nothing.
    """
    return "".join(_escape(ch) if ch == "=" or unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")
                   else ch for ch in str(text))
