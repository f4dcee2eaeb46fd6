"""Fixed metric lines for SageMaker tuners (metric_definitions) and the regexes that read them."""
from __future__ import annotations

import re
import reprlib
import unicodedata
from typing import Iterable

_NUMBER = r"([0-9.]+(?:[eE][-+]?[0-9]+)?)"

# A metric always follows a space, so ` valid_loss=` cannot match inside `best_valid_loss=` and each
# regex matches its own metric only. Plain syntax (no \b) that the tuner's regex engine accepts.
# best_*: printed once at the end from the epoch whose weights are kept; the objective to rank
# by (a tuner keeps a job's last value) except under Hyperband, which needs the per-epoch valid_*.
METRIC_NAMES = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "test_loss", "test_accuracy", "epoch_seconds",
                "best_valid_loss", "best_valid_accuracy")

METRIC_DEFINITIONS = [{"Name": name, "Regex": f" {name}={_NUMBER}"} for name in METRIC_NAMES]

# Per-epoch metrics (one value per epoch line): what early stopping and Hyperband can follow.
EPOCH_METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch_seconds")


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


BRIEF_LENGTH = 60  # characters of a user's value quoted in a message: enough to recognise it


class _BriefRepr(reprlib.Repr):
    """reprlib cuts long strings and big or deep containers while formatting them, so a value that
    shares one list a billion times (a YAML alias bomb) is never expanded."""

    def __init__(self, limit: int):
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset, self.maxfrozenset = 2, 4, 4, 4, 4, 4
        self.maxstring = self.maxlong = self.maxother = limit

    def repr_int(self, x, level):
        if x.bit_length() > 4 * self.maxlong:  # repr() of a huge int is slow, and refused past 4300 digits
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)

    def repr_bytes(self, x, level):
        return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")


_BRIEF = _BriefRepr(BRIEF_LENGTH)


def brief_text(text: str, limit: int = BRIEF_LENGTH) -> str:
    """User text for a one-line message: printable() and at most `limit` characters (a cut ends in "...")."""
    shown = printable(text[:limit + 1])
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def brief(value: object, limit: int = BRIEF_LENGTH) -> str:
    """A user's value for a one-line message: its repr, bounded before it is built, then as brief_text."""
    return brief_text(_BRIEF.repr(value), limit)


def metric_values(line: str, definitions: list[dict] = METRIC_DEFINITIONS) -> dict[str, float]:
    """The metrics one log line carries (first capture group of each regex that matches it)."""
    found = {}
    for d in definitions:
        m = re.search(d["Regex"], line)
        if m:
            try:
                found[d["Name"]] = float(m.group(1))
            except ValueError:  # the tuner drops non-numeric captures too
                continue
    return found


def last_values(lines: Iterable[str], definitions: list[dict] = METRIC_DEFINITIONS) -> dict[str, float]:
    """SageMaker's rule: a job's value of a metric is the last one its regex matched in the log."""
    final: dict[str, float] = {}
    for line in lines:
        final.update(metric_values(line, definitions))
    return final
