"""What an AMQP field table (a message's headers) can carry, checked before anything is sent
(pure, no I/O).

pamqp encodes the headers only when a message goes out. There it fails with a raw
``TypeError`` for what it cannot encode (bytes, sets, ints beyond 64 bits, ...), a
``RecursionError`` for deep nesting, or it silently cuts a name longer than 128 bytes. Worse,
some values it encodes do not come back as sent. ``table_size`` walks a table once, in
pamqp's order of types, refuses whatever would not arrive exactly as given, and returns the
encoded size, so a job is refused before any I/O with a message that names the header.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from jobsys.errors import PayloadTooLargeError, PayloadValidationError

#: Longest field name pamqp sends whole; it cuts longer ones (with a warning) to this.
MAX_NAME_BYTES = 128
#: Deepest nesting of tables and arrays in a header value.
MAX_DEPTH = 32

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_CARRIED = "str, int, float, bool, None, Decimal, datetime, list or dict"


class _TooLarge(Exception):
    """A table grew past its limit while being measured."""


def table_size(table: Mapping[Any, Any], limit: int, setting: str = "") -> int:
    """The encoded size of ``table`` as an AMQP field table, in bytes.

    Raises ``PayloadValidationError`` for a name or value that AMQP cannot carry exactly as
    given, and ``PayloadTooLargeError`` when the table is over ``limit`` bytes (``setting``
    names where the limit comes from, for that message).
    """
    size = 4
    try:
        for name, value in table.items():
            # Short printable ASCII names and ASCII text values inline: most headers are.
            if (
                type(name) is str
                and name.isascii()
                and 0 < len(name) <= MAX_NAME_BYTES
                and name.isprintable()
            ):
                size += len(name) + 1
            else:
                size += _checked_name(name, ()) + 1
            kind = type(value)
            if kind is str and value.isascii():
                size += 5 + len(value)
            elif kind is int and -128 <= value <= 127:
                size += 2
            else:
                size += _value(value, (name,), 0, limit)
    except _TooLarge:
        size = -1  # one value alone is over the limit; it was not measured to the end
    if size > limit or size < 0:
        shown = f"{size} bytes" if size > 0 else f"more than {limit} bytes"
        raise PayloadTooLargeError(
            f"headers are {shown} encoded; the limit is {limit} bytes{setting}"
        )
    return size


def name_size(name: object, path: tuple[Any, ...] = ()) -> int:
    """The encoded size of a field name: a non-empty, printable str of at most
    ``MAX_NAME_BYTES`` bytes in UTF-8 (the broker logs and shows names; a control character
    could forge a line)."""
    # The common case first: a short printable ASCII name costs three C calls.
    if (
        type(name) is str
        and name.isascii()
        and 0 < len(name) <= MAX_NAME_BYTES
        and name.isprintable()
    ):
        return len(name) + 1
    return _checked_name(name, path) + 1


def _checked_name(name: object, path: tuple[Any, ...]) -> int:
    where = f"in header {_shown(path)}: " if path else ""
    if not isinstance(name, str) or not name:
        raise PayloadValidationError(f"{where}header names must be non-empty strings")
    if len(name) > MAX_NAME_BYTES:
        size = len(name)  # at least this many bytes; do not encode a huge name to say so
    else:
        size = len(_utf8(name, f"{where}header name {shown(name)}"))
    if size > MAX_NAME_BYTES:
        raise PayloadValidationError(
            f"{where}header name {shown(name)} is too long: names are at most "
            f"{MAX_NAME_BYTES} bytes in UTF-8 (the broker would get it cut short)"
        )
    if not name.isprintable():
        raise PayloadValidationError(
            f"{where}header name {shown(name)} contains control characters"
        )
    return size


def _table(table: Mapping[Any, Any], path: tuple[Any, ...], depth: int, limit: int) -> int:
    size = 4
    for name, value in table.items():
        size += name_size(name, path) + _value(value, (*path, name), depth, limit)
        if size > limit:
            raise _TooLarge
    return size


def _array(array: list[Any], path: tuple[Any, ...], depth: int, limit: int) -> int:
    size = 4
    for index, item in enumerate(array):
        size += _value(item, (*path, index), depth, limit)
        if size > limit:
            raise _TooLarge
    return size


def _value(value: object, path: tuple[Any, ...], depth: int, limit: int) -> int:
    kind = type(value)
    # The types jobsys's own headers and most callers' are made of, without further calls.
    if kind is str:
        if value.isascii():  # type: ignore[attr-defined]
            return 5 + len(value)  # type: ignore[arg-type]
        return 5 + len(_utf8(value, f"header {_shown(path)}"))  # type: ignore[arg-type]
    if kind is int:
        return _integer(value, path)  # type: ignore[arg-type]
    if value is None:
        return 1
    return _other(value, path, depth, limit)


def _other(value: object, path: tuple[Any, ...], depth: int, limit: int) -> int:
    # The order of pamqp's encode_table_value: a subclass is encoded as its first match.
    if isinstance(value, bool):
        return 2
    if isinstance(value, int):
        return _integer(int(value), path)
    if isinstance(value, Decimal):
        return _decimal(value, path)
    if isinstance(value, float):
        return _float(value, path)
    if isinstance(value, str):
        return 5 + len(_utf8(str(value), f"header {_shown(path)}"))
    if isinstance(value, dt.datetime | time.struct_time):
        return _timestamp(value, path)
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise PayloadValidationError(
                f"header {_shown(path[:1])} is nested more than {MAX_DEPTH} levels deep"
            )
        if isinstance(value, dict):
            return 1 + _table(value, path, depth + 1, limit)
        return 1 + _array(value, path, depth + 1, limit)
    raise PayloadValidationError(
        f"header {_shown(path)}: a value of type {type(value).__name__} cannot be sent in AMQP "
        f"headers (use {_CARRIED}; encode bytes as text, e.g. base64)"
    )


def _integer(value: int, path: tuple[Any, ...]) -> int:
    if -128 <= value <= 127:
        return 2
    if -32768 <= value <= 65535:
        return 3
    if _INT32_MIN <= value <= 4294967295:
        return 5
    if _INT64_MIN <= value <= _INT64_MAX:
        return 9
    raise PayloadValidationError(
        f"header {_shown(path)}: integer {shown(value)} does not fit a signed 64-bit AMQP "
        "integer; send it as a string"
    )


def _float(value: float, path: tuple[Any, ...]) -> int:
    if not math.isfinite(value):
        raise PayloadValidationError(
            f"header {_shown(path)}: {shown(value)} is not a finite number"
        )
    return 9  # an AMQP double (jobsys.broker.encoding)


def _decimal(value: Decimal, path: tuple[Any, ...]) -> int:
    if _decimal_mantissa(value) is None:
        raise PayloadValidationError(
            f"header {_shown(path)}: {shown(value)} does not fit an AMQP decimal (a 32-bit "
            "mantissa and up to 255 decimal places); send it as a string"
        )
    return 6


def _decimal_mantissa(value: Decimal) -> int | None:
    """The mantissa pamqp would send for ``value`` (scale 0-255, as pamqp encodes it), or
    None when ``value`` has no AMQP decimal form. Works on the digits: a huge exponent is
    never expanded."""
    sign, digits, exponent = value.as_tuple()
    # More than 10 digits is beyond 32 bits, whatever the exponent.
    if not isinstance(exponent, int) or exponent < -255 or len(digits) > 10:
        return None
    coefficient = int("".join(map(str, digits)))
    if exponent > 0 and coefficient:
        if exponent > 10:
            return None
        coefficient *= 10**exponent
    mantissa = -coefficient if sign else coefficient
    return mantissa if _INT32_MIN <= mantissa <= _INT32_MAX else None


def _timestamp(value: dt.datetime | time.struct_time, path: tuple[Any, ...]) -> int:
    try:
        if isinstance(value, dt.datetime):
            # pamqp takes a naive datetime as UTC.
            aware = value if value.utcoffset() is not None else value.replace(tzinfo=dt.UTC)
            seconds = int(aware.timestamp())
        else:
            seconds = calendar.timegm(value)
    except (ValueError, OverflowError, OSError, TypeError) as exc:
        raise PayloadValidationError(
            f"header {_shown(path)}: {shown(value)} is not a usable time ({exc})"
        ) from None
    if seconds < 0:
        raise PayloadValidationError(
            f"header {_shown(path)}: AMQP timestamps cannot be before 1970, got {shown(value)}"
        )
    return 9


def _utf8(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadValidationError(
            f"{where} is not valid UTF-8 text (character {exc.start} is a lone surrogate)"
        ) from None


def _shown(path: tuple[Any, ...]) -> str:
    """A header's path for messages: ``'meta'``, or ``'meta'['list'][2]`` inside it."""
    head, *rest = path
    return shown(head) + "".join(f"[{shown(step)}]" for step in rest)


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` fit for one line of an error message: cut to ``limit`` characters, and
    never raising (a huge int has no repr, and a caller's object may have a broken one)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an int of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= limit else text[: limit - 3] + "..."
