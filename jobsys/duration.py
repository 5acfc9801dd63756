"""Durations as people write them in topology files and on the command line: ``90s``, ``5m``."""

from __future__ import annotations

import math
import re

_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


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
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration; write a number with a unit: 250ms, 90s, 5m, 2h, 30d"
            )
        seconds = float(match.group(1)) * _UNITS_S[match.group(2) or "s"]
    else:
        raise ValueError(f"expected a duration such as 30s, 5m or 2h, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite number of seconds, zero or more")
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
