"""Durations as people write them in topology files and on the command line: ``90s``, ``5m``,
``1h30m``; and shown in the same form, so whatever jobsys prints can be written back."""

from __future__ import annotations

import math
import re

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Largest first: a compound duration names each unit once, in this order (``1d2h3m4s5ms``).
_ORDER = ("d", "h", "m", "s", "ms")
_SINGLE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
#: Bounds the work on a hostile string: a compound duration has at most one part per unit.
_MAX_TEXT = 100
_HINT = "write a number with a unit: 250ms, 90s, 5m, 2h, 30d, or units together: 1h30m"


def parse_duration_s(value: object) -> float:
    """Return ``value`` in seconds: a number (seconds) or a string like ``250ms``, ``90s``,
    ``5m``, ``2h``, ``30d``. Raises ``ValueError`` with a message fit for a user."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 2h, got a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range
            raise ValueError(
                "a duration must be a finite number of seconds, zero or more"
            ) from None
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or 2h, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite number of seconds, zero or more")
    return seconds


def _parse_text(value: str) -> float:
    """``250ms``, ``90`` (seconds), or units largest first, each once: ``1h30m``, ``2m 8s``."""
    refused = ValueError(f"{value[:_MAX_TEXT]!r} is not a duration; {_HINT}")
    if len(value) > _MAX_TEXT:
        raise refused
    single = _SINGLE_RE.match(value)
    if single is not None:
        return float(single.group(1)) * _UNITS_S[single.group(2) or "s"]
    text = value.strip()
    if not text:
        raise refused
    position, seconds, last = 0, 0.0, -1
    while position < len(text):
        part = _PART_RE.match(text, position)
        if part is None:
            raise refused
        rank = _ORDER.index(part.group(2))
        if rank <= last:  # '30m1h', '1h1h': not how a duration is written, likely a typo
            raise ValueError(
                f"{value!r} is not a duration; write each unit once, largest first (1h30m)"
            )
        seconds += float(part.group(1)) * _UNITS_S[part.group(2)]
        position, last = part.end(), rank
    return seconds


def format_duration(seconds: float) -> str:
    """Return a short human form of ``seconds``: ``250ms``, ``90s``, ``5m``, ``1h30m``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 120 or seconds != int(seconds):
        # Fixed notation: '{:g}' would print 4194303.5 as 4.1943e+06.
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    total = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
