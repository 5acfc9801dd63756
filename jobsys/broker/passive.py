"""What a passive declare's ``NOT_FOUND`` means: a queue or stream that `apply` did not make,
or one that exists but whose node is down or still starting.

RabbitMQ answers both with ``404 NOT_FOUND``. The second reads "home node 'rabbit@x' of
durable queue 'q' in vhost 'v' is down or inaccessible", and is seen on 3.10 for a second or
so after a single node restarts (a stream's writer starts after its vhost) and for as long as
the node that holds a classic queue is down. Calling that "missing — run apply" sends people to
re-apply a topology that is fine; it is a broker to wait for, and jobsys says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiormq.exceptions

from jobsys.errors import BrokerError, JobsysError, TopologyError

APPLY_HINT = "run `jobsys topology apply FILE`"

#: The words RabbitMQ's refusal has when the queue exists but its node cannot serve it.
_NODE_DOWN = "down or inaccessible"


def reason_of(exc: BaseException) -> str:
    """The broker's words in an aiormq refusal (``NOT_FOUND - ...``), not the args' tuple."""
    text = next((a for a in exc.args if isinstance(a, str)), str(exc))
    return text.strip('"')


def node_down(reason: str) -> bool:
    """Whether a ``NOT_FOUND`` refusal says the entity exists on a node that cannot serve it."""
    return _NODE_DOWN in reason


def unreachable(what: str, reason: str) -> BrokerError:
    """``what`` exists, but its node is down or still starting: wait, do not re-apply."""
    return BrokerError(
        f"{what} cannot be reached right now: the node that holds it is down or still "
        f"starting ({reason}); try again in a few seconds, or through another node of the "
        "cluster"
    )


def not_found(what: str, reason: str, hint: str = APPLY_HINT) -> JobsysError:
    """The jobsys error for a ``NOT_FOUND`` refusal of ``what`` (``"the history stream 'x'"``):
    ``BrokerError`` (try again) when its node is down, ``TopologyError`` when it is missing."""
    if node_down(reason):
        return unreachable(what, reason)
    return TopologyError(f"{what} is missing — {hint} ({reason})")


@contextlib.contextmanager
def declaring(what: str, hint: str = APPLY_HINT) -> Iterator[None]:
    """Around a passive declare of ``what``: its ``NOT_FOUND`` becomes ``not_found``'s error;
    anything else (a lost connection, say) passes to the caller's ``broker_errors``."""
    try:
        yield
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise not_found(what, reason_of(exc), hint) from None
