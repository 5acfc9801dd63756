"""The delay levels: a delay written in binary, one TTL queue per bit (pure, no I/O).

Each level L has a topic exchange and a queue whose *queue-level* TTL is 2**L seconds and
which dead-letters into level L-1 (level 0 into the delivery exchange). A delayed message's
routing key is its delay in bits, most significant first, then the destination queue:
``b(N-1). ... .b1.b0.<queue>``. At level L the key ``*.``*(N-1-L) + ``1.#`` binds the level's
queue (wait here) and ``*.``*(N-1-L) + ``0.#`` binds an exchange-to-exchange hop to level L-1
(skip). Every queue holds a single TTL, so FIFO order is expiry order: no head-of-line
blocking. Destination queues bind to the delivery exchange with exactly N ``*`` words followed
by their name, so ``emails.high`` never reaches a queue named ``high`` (``#.high`` would).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jobsys.duration import format_duration
from jobsys.errors import ConfigError

#: One delay unit, in seconds. Delays round *up* to whole units: never earlier than asked.
UNIT_S = 1.0
#: Where level 0 dead-letters to, and where undelayed retries and replays are published.
DELIVERY_EXCHANGE = "jobsys.delivery"
_LEVEL_PREFIX = "jobsys.delay."


def level_count(max_delay_s: float) -> int:
    """How many levels (bits) express every delay up to ``max_delay_s``."""
    units = max(1, math.ceil(max_delay_s / UNIT_S))
    return max(1, units.bit_length())


def level_name(level: int) -> str:
    """Name of level ``level``'s exchange and queue: ``jobsys.delay.07``."""
    return f"{_LEVEL_PREFIX}{level:02d}"


def level_ttl_ms(level: int) -> int:
    """Queue-level TTL of level ``level``, in the milliseconds AMQP wants."""
    return int(2**level * UNIT_S * 1000)


def level_exchange_after(level: int) -> str:
    """Where level ``level``'s queue dead-letters to (and where its skip hop leads)."""
    return DELIVERY_EXCHANGE if level == 0 else level_name(level - 1)


def wait_binding_key(level: int, levels: int) -> str:
    """Binding key of level ``level``'s queue: its bit is 1."""
    return "*." * (levels - 1 - level) + "1.#"


def skip_binding_key(level: int, levels: int) -> str:
    """Binding key of the exchange-to-exchange hop past level ``level``: its bit is 0."""
    return "*." * (levels - 1 - level) + "0.#"


def delivery_binding_key(queue: str, levels: int) -> str:
    """Binding key of destination ``queue`` on the delivery exchange: N bits, then its name."""
    return "*." * levels + queue


@dataclass(frozen=True)
class DelayRoute:
    """Where to publish a job so that it reaches ``queue`` after ``delay_s``."""

    exchange: str
    routing_key: str
    delay_s: float  # the delay actually applied, rounded up to whole units


def delay_route(queue: str, delay_s: float, levels: int) -> DelayRoute:
    """Exchange and routing key that deliver to ``queue`` after ``delay_s`` (0: at once)."""
    if not math.isfinite(delay_s) or delay_s < 0:
        raise ConfigError(f"a delay must be zero or more seconds, got {delay_s!r}")
    units = math.ceil(delay_s / UNIT_S - 1e-9) if delay_s > 0 else 0
    limit = 2**levels - 1
    if units > limit:
        raise ConfigError(
            f"a delay of {format_duration(delay_s)} is longer than the topology allows "
            f"({format_duration(limit * UNIT_S)}); "
            "raise delays.max_delay"
        )
    bits = format(units, f"0{levels}b")
    key = ".".join(bits) + "." + queue
    exchange = DELIVERY_EXCHANGE if units == 0 else level_name(units.bit_length() - 1)
    return DelayRoute(exchange=exchange, routing_key=key, delay_s=units * UNIT_S)
