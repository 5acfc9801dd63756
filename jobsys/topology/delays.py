"""The delay levels: a delay written in binary, one TTL queue per bit (pure, no I/O).

Each level L has a topic exchange and a queue whose *queue-level* TTL is 2**L seconds and
which dead-letters into level L-1 (level 0 into the due exchange). A delayed message's routing
key is its delay in bits, most significant first, then the destination queue:
``b(N-1). ... .b1.b0.<queue>``. At level L the key ``*.``*(N-1-L) + ``1.#`` binds the level's
queue (wait here) and ``*.``*(N-1-L) + ``0.#`` binds an exchange-to-exchange hop to level L-1
(skip). Every queue holds a single TTL, so FIFO order is expiry order: no head-of-line
blocking. Destination queues bind to the due exchange with exactly N ``*`` words followed by
their name, so ``emails.high`` never reaches a queue named ``high`` (``#.high`` would).

The layout is the same for every topology, whatever its ``delays.max_delay``: N is fixed at
``LEVELS``. The binding keys depend on N, so two layouts with different N on the same exchanges
route one message both ways, duplicating it and delivering a copy early; a fixed N means
changing ``max_delay``, or two files with different ones in one vhost, changes nothing on the
broker. ``max_delay`` only bounds what may be published. The names live under the topology's
namespace (``jobsys`` unless the file names one), so apps that share a vhost but not a
namespace cannot reach each other's queues through these exchanges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jobsys.duration import format_duration
from jobsys.errors import ConfigError

#: One delay unit, in seconds. Delays round *up* to whole units: never earlier than asked.
UNIT_S = 1.0
#: The number of levels (bits). Level 28's TTL, 2**28 s (about 8.5 years), is the longest
#: queue TTL RabbitMQ accepts (3.10.8 took 268435456000 ms and refused 2**29 s, measured).
LEVELS = 29
#: The longest delay the levels express: 2**29 - 1 s, about 17 years.
MAX_DELAY_S = (2**LEVELS - 1) * UNIT_S
#: The namespace of a topology that names none.
DEFAULT_NAMESPACE = "jobsys"

#: The layout jobsys used before its level count was fixed (N grew with ``max_delay``): its
#: names, so that plans and status can show it draining. Nothing publishes into it any more.
LEGACY_LEVEL_PREFIX = "jobsys.delay."
LEGACY_DELIVERY_EXCHANGE = "jobsys.delivery"


def level_ttl_ms(level: int) -> int:
    """Queue-level TTL of level ``level``, in the milliseconds AMQP wants."""
    return int(2**level * UNIT_S * 1000)


def wait_binding_key(level: int) -> str:
    """Binding key of level ``level``'s queue: its bit is 1."""
    return "*." * (LEVELS - 1 - level) + "1.#"


def skip_binding_key(level: int) -> str:
    """Binding key of the exchange-to-exchange hop past level ``level``: its bit is 0."""
    return "*." * (LEVELS - 1 - level) + "0.#"


def delivery_binding_key(queue: str) -> str:
    """Binding key of destination ``queue`` on the due exchange: N bits, then its name."""
    return "*." * LEVELS + queue


@dataclass(frozen=True)
class DelayRoute:
    """Where to publish a job so that it reaches ``queue`` after ``delay_s``."""

    exchange: str
    routing_key: str
    delay_s: float  # the delay actually applied, rounded up to whole units


@dataclass(frozen=True)
class DelayLayout:
    """The delay levels and due exchange of one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def level_name(self, level: int) -> str:
        """Name of level ``level``'s exchange and queue: ``jobsys.wait.07``."""
        return f"{self.namespace}.wait.{level:02d}"

    @property
    def due_exchange(self) -> str:
        """Where level 0 dead-letters to, and where undelayed retries and replays go."""
        return f"{self.namespace}.due"

    def level_exchange_after(self, level: int) -> str:
        """Where level ``level``'s queue dead-letters to (and where its skip hop leads)."""
        return self.due_exchange if level == 0 else self.level_name(level - 1)

    def route(self, queue: str, delay_s: float) -> DelayRoute:
        """Exchange and routing key that deliver to ``queue`` after ``delay_s`` (0: at once)."""
        if not math.isfinite(delay_s) or delay_s < 0:
            raise ConfigError(f"a delay must be zero or more seconds, got {delay_s!r}")
        units = math.ceil(delay_s / UNIT_S - 1e-9) if delay_s > 0 else 0
        if units > 2**LEVELS - 1:
            raise ConfigError(
                f"a delay of {format_duration(delay_s)} is longer than the delay levels allow "
                f"({format_duration(MAX_DELAY_S)})"
            )
        bits = format(units, f"0{LEVELS}b")
        key = ".".join(bits) + "." + queue
        exchange = self.due_exchange if units == 0 else self.level_name(units.bit_length() - 1)
        return DelayRoute(exchange=exchange, routing_key=key, delay_s=units * UNIT_S)


def legacy_level_name(level: int) -> str:
    """Name of a level of the layout before the level count was fixed: ``jobsys.delay.07``."""
    return f"{LEGACY_LEVEL_PREFIX}{level:02d}"
