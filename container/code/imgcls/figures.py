"""What every figure shares (reports.py, insights/report.py): text from data drawn as typed, and a failure in one line.

Torch-free, so the insights report can use it; matplotlib is not imported here either.
"""
from __future__ import annotations

from .metrics import printable

# Tick labels longer than this squeeze the axes to nothing; the CSV and the HTML report hold the full names.
MAX_LABEL = 40
# An exception's text can quote any value (a class name, a path): notes show this much of it.
MAX_REASON = 200


def _shortened(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def literal_text(text: object) -> str:
    """`text` as matplotlib draws it literally, for titles, ticks, legends and annotations alike.

    Two unescaped `$` make matplotlib parse a string as mathtext, so a class folder named
    `001.$a^$ hound` would fail the figure; an escaped `\\$` is drawn as a plain `$`.
    """
    return str(text).replace("$", r"\$")


def label_text(text: object) -> str:
    """A tick label from data: literal, and at most MAX_LABEL characters."""
    return literal_text(_shortened(str(text), MAX_LABEL))


def reason(exc: BaseException) -> str:
    """`Type: message` on one line, safe to log, at most MAX_REASON characters."""
    return _shortened(printable(" ".join(f"{type(exc).__name__}: {exc}".split())), MAX_REASON)


def could_not_draw(what: str, exc: BaseException) -> str:
    """The one line that the log and the report carry when a figure or a report section fails."""
    return f"could not draw {what}: {reason(exc)}"
