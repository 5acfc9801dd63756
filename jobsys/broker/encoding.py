"""Float header values sent as AMQP doubles (64-bit), not 32-bit floats.

pamqp encodes every Python ``float`` in a field table as an AMQP ``f`` (32-bit float). A header
``0.1`` then arrives as ``0.10000000149011612``, and a job published by another client with a
double (``d``) header beyond the 32-bit range (``1e300``) cannot be encoded again when jobsys
retries or dead-letters it: the retry failed with ``OverflowError``, the job was dead-lettered
after its first attempt with its headers dropped. Every client that matters decodes ``d``
(RabbitMQ, pamqp, the Java and Go clients), and a ``float`` in Python is a double.

``install()`` replaces ``pamqp.encode.encode_table_value`` with one that writes floats as ``d``
and hands every other value to pamqp's own. pamqp's field tables and arrays look the function
up by its module-level name on every call, so nested values are covered too. Process-wide,
idempotent, and checked against the shape of pamqp it was written for (``install`` refuses a
pamqp it does not recognise rather than patching blind). The decoding side needs nothing: pamqp
already decodes ``d``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pamqp import encode as pamqp_encode

_installed = False
_pamqp_encode_table_value: Callable[[Any], bytes] = pamqp_encode.encode_table_value


def encode_table_value(value: Any) -> bytes:
    """pamqp's ``encode_table_value``, with floats as AMQP doubles."""
    if isinstance(value, float):  # bool is not a float; numpy's float64 is one
        return b"d" + pamqp_encode.double(value)
    return _pamqp_encode_table_value(value)


def install() -> None:
    """Make pamqp write float header values as doubles (see the module docstring)."""
    global _installed
    if _installed:
        return
    original = pamqp_encode.encode_table_value
    if (
        getattr(original, "__module__", None) != "pamqp.encode"
        or "encode_table_value" not in pamqp_encode.field_table.__code__.co_names
        or "encode_table_value" not in pamqp_encode.field_array.__code__.co_names
        or pamqp_encode.METHODS.get("table") is not pamqp_encode.field_table
    ):
        raise RuntimeError(
            "jobsys does not recognise this pamqp's encoder (pamqp.encode.encode_table_value); "
            "its double-precision header floats were written for pamqp 3.x/4.x"
        )
    pamqp_encode.encode_table_value = encode_table_value
    _installed = True
