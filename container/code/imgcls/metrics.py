"""Fixed metric lines for SageMaker tuners (metric_definitions) and the regexes that read them."""
from __future__ import annotations

_NUMBER = r"([0-9.]+(?:[eE][-+]?[0-9]+)?)"

# A metric always follows a space, and no printed name ends with another's, so each regex
# matches its own metric only. Plain syntax (no \b) that the tuner's regex engine accepts.
METRIC_NAMES = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "test_loss", "test_accuracy", "epoch_seconds")

METRIC_DEFINITIONS = [{"Name": name, "Regex": f" {name}={_NUMBER}"} for name in METRIC_NAMES]


def format_metrics(prefix: str, values: dict[str, float]) -> str:
    body = " ".join(f"{k}={v:.6f}" for k, v in values.items() if v is not None)
    return f"{prefix} {body}" if prefix else body
