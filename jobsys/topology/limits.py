"""What AMQP 0-9-1 and RabbitMQ accept, and the checks that hold a topology to it (pure).

A topology that ``validate`` accepts must be one ``apply`` can declare whole and producers can
publish: a value past one of these limits used to pass the file check, then fail half-way
through ``apply`` (after the first exchanges were declared) or in every publish.

Measured on RabbitMQ 3.10.8 with pamqp 3 (``queue.declare`` in a private vhost, bisected):

- ``x-message-ttl``: 315360000000 ms (3650 days) is accepted, 315360000001 is refused with
  ``PRECONDITION_FAILED - invalid arg 'x-message-ttl' ... {value_too_large,315360000001}``,
  for classic and quorum queues alike.
- ``x-max-length``, ``x-max-length-bytes`` (classic, quorum) and ``x-delivery-limit``
  (quorum): the broker takes every value up to 2**63 - 1. pamqp encodes a table integer as at
  most a signed 64-bit ``long long`` and raises ``TypeError`` beyond it, so 2**63 - 1 is the
  limit there.
- Short strings (exchange, queue and routing key in ``queue.bind``, ``basic.publish``): at
  most 255 bytes, UTF-8; pamqp raises ``TypeError`` beyond.
- Field-table names (header names, binding arguments): at most 128 bytes; pamqp cuts longer
  names short, with a warning, and sends them anyway.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for the checks of entities: the model, which entities build on, uses this module.
    from jobsys.topology.entities import BindingSpec, Entities, ExchangeSpec, QueueSpec

ArgValue = str | int | bool

#: The largest integer an AMQP table carries (pamqp: signed 64-bit).
MAX_AMQP_INT = 2**63 - 1
MIN_AMQP_INT = -(2**63)
#: The longest queue-level TTL RabbitMQ accepts (measured on 3.10.8; ten years of 365 days).
MAX_MESSAGE_TTL_MS = 315_360_000_000
#: AMQP short strings: names and routing keys.
MAX_SHORT_STRING_BYTES = 255
#: AMQP field names: header names and argument names.
MAX_FIELD_NAME_BYTES = 128
#: jobsys's own cap on a headers table (a binding's or a job type's), encoded. Far below any
#: frame a broker negotiates (RabbitMQ's default frame_max is 128 KiB, AMQP's smallest 4 KiB):
#: a binding is declared in one frame, and every job carries its type's headers next to
#: jobsys's own (a dead-letter record needs about 1 KB more).
MAX_HEADERS_BYTES = 4096

_INT_ARGUMENTS = ("x-max-length", "x-max-length-bytes", "x-delivery-limit", "x-message-ttl")


#: ``x-delivery-limit`` for "no limit", which RabbitMQ 4.0 and later read so (a signed AMQP
#: integer; the only negative queue argument jobsys sends).
NO_DELIVERY_LIMIT = -1


def amqp_int_problem(value: int) -> str | None:
    """Why ``value`` cannot be an AMQP integer argument, or None."""
    if value > MAX_AMQP_INT:
        return (
            f"must be at most {MAX_AMQP_INT} (2**63 - 1), the largest integer an AMQP argument "
            "carries"
        )
    return None


def header_int_problem(value: int) -> str | None:
    """Why ``value`` cannot be an integer header, or None."""
    if not MIN_AMQP_INT <= value <= MAX_AMQP_INT:
        return (
            f"must be between {MIN_AMQP_INT} and {MAX_AMQP_INT}, the integers an AMQP header "
            "carries"
        )
    return None


def short_string_problem(text: str, what: str = "an AMQP routing key") -> str | None:
    """Why ``text`` cannot be an AMQP short string (``what`` names it), or None."""
    size = len(text.encode("utf-8"))
    if size > MAX_SHORT_STRING_BYTES:
        return f"is {size} bytes in UTF-8; {what} has at most {MAX_SHORT_STRING_BYTES}"
    return None


def field_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a header name, or None."""
    size = len(name.encode("utf-8"))
    if size > MAX_FIELD_NAME_BYTES:
        return (
            f"a header name is at most {MAX_FIELD_NAME_BYTES} bytes in AMQP (this one is "
            f"{size}); longer ones are cut short"
        )
    return None


def message_ttl_problem(seconds: float) -> str | None:
    """Why a queue-level TTL of ``seconds`` is refused by RabbitMQ, or None. It is declared
    in whole milliseconds, rounded."""
    ms = seconds * 1000
    # The first test also keeps round() away from a product that overflowed to infinity.
    if ms > MAX_MESSAGE_TTL_MS + 1 or round(ms) > MAX_MESSAGE_TTL_MS:
        return (
            f"must be at most 3650d ({MAX_MESSAGE_TTL_MS} ms), the longest x-message-ttl "
            "RabbitMQ accepts"
        )
    return None


def headers_size(headers: Mapping[str, ArgValue]) -> int:
    """Bytes ``headers`` take in an AMQP field table: per entry a short-string name, a type
    octet and the value (long string, 1 to 8 byte integer, boolean octet)."""
    return sum(1 + len(k.encode("utf-8")) + 1 + _value_size(v) for k, v in headers.items())


def _value_size(value: ArgValue) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return 8
    return 4 + len(value.encode("utf-8"))


def headers_problem(headers: Mapping[str, ArgValue]) -> str | None:
    """Why a headers table is too large, or None."""
    size = headers_size(headers)
    if size > MAX_HEADERS_BYTES:
        return (
            f"headers encode to {size} bytes; at most {MAX_HEADERS_BYTES} are allowed (a binding "
            "is declared in one AMQP frame, and every job carries its type's headers)"
        )
    return None


def check_entities(entities: Entities) -> list[tuple[str, str]]:
    """Every entity ``apply`` would declare that the broker or the encoder would refuse, as
    (entity name, what is wrong); empty when all fit. The file check refuses what the file
    writes; this also covers what jobsys derives from it, before anything is declared."""
    return [
        *((spec.name, p) for spec in entities.exchanges for p in _exchange_problems(spec)),
        *((spec.name, p) for spec in entities.queues for p in _queue_problems(spec)),
        *((spec.destination, p) for spec in entities.bindings for p in _binding_problems(spec)),
    ]


def _exchange_problems(spec: ExchangeSpec) -> Iterator[str]:
    if problem := short_string_problem(spec.name, "an exchange name"):
        yield f"exchange {spec.name!r}: the name {problem}"


def _queue_problems(spec: QueueSpec) -> Iterator[str]:
    if problem := short_string_problem(spec.name, "a queue name"):
        yield f"queue {spec.name!r}: the name {problem}"
    for key in _INT_ARGUMENTS:
        value = spec.arguments.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        if key == "x-delivery-limit" and value == NO_DELIVERY_LIMIT:
            continue  # RabbitMQ 4.x: no limit (what broker_facts fits for 4.x)
        if value < 0 or value > MAX_AMQP_INT:
            yield f"queue {spec.name}: {key} is {value}; AMQP carries 0 to {MAX_AMQP_INT}"
        elif key == "x-message-ttl" and value > MAX_MESSAGE_TTL_MS:
            yield (
                f"queue {spec.name}: x-message-ttl is {value} ms; RabbitMQ accepts at most "
                f"{MAX_MESSAGE_TTL_MS} ms (3650d)"
            )


def _binding_problems(spec: BindingSpec) -> Iterator[str]:
    if problem := short_string_problem(spec.routing_key):
        yield f"binding {spec.describe()}: the routing key {problem}"
    for name, value in spec.arguments.items():
        if problem := field_name_problem(name):
            yield f"binding {spec.describe()}: {problem}"
        number = value if isinstance(value, int) and not isinstance(value, bool) else 0
        if problem := header_int_problem(number):
            yield f"binding {spec.describe()}: argument {name!r} {problem}"
    if problem := headers_problem(spec.arguments):
        yield f"binding {spec.describe()}: {problem}"
