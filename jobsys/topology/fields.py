"""The field types of a topology file's models: durations, whole numbers, names, routing keys
and headers, each refusing what the broker or AMQP could not carry (``jobsys.topology.limits``)
with a message the loader reports at its file:line:column."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, StrictInt

from jobsys.duration import parse_duration_s
from jobsys.topology import limits

_T = TypeVar("_T")


def _duration_s(value: object) -> float:
    try:
        return parse_duration_s(value)
    except OverflowError:
        # A bare integer past float range (400 digits): as infinite as `.inf`, and refused so.
        raise ValueError("a duration must be a finite number of seconds, zero or more") from None


#: Seconds, written in the file as a number or as ``250ms``, ``90s``, ``5m``, ``2h``, ``30d``.
Duration = Annotated[float, BeforeValidator(_duration_s)]


def ttl_ms(seconds: float) -> int:
    """A TTL in the whole milliseconds AMQP wants."""
    return round(seconds * 1000)


def refuse(problem_of: Callable[[_T], str | None]) -> AfterValidator:
    """A validator that refuses a value for which ``problem_of`` (from ``limits``) says why."""

    def check(value: _T) -> _T:
        problem = problem_of(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


def _header_int(value: str | int | bool) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return limits.header_int_problem(value)
    return None


def _not_a_boolean(value: object) -> object:
    # YAML reads `true`, `yes` and `on` as booleans and Python's True is 1: without this,
    # `priority: true` would load as priority 1 and `jitter: yes` as 1.0.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not {str(value).lower()}")
    return value


#: A whole number in the file (its range is set where it is used); a boolean is refused.
Whole = Annotated[int, BeforeValidator(_not_a_boolean)]
#: A number in the file (its range is set where it is used); a boolean is refused.
Number = Annotated[float, BeforeValidator(_not_a_boolean)]
#: An integer queue argument: at most what an AMQP table carries.
AmqpCount = Annotated[Whole, Field(ge=0), refuse(limits.amqp_int_problem)]
#: Quorum replicas: a whole number from 1 to 99 (strict: ``true`` is not 1).
Replicas = Annotated[StrictInt, Field(ge=1, le=99)]
RoutingKey = Annotated[str, refuse(limits.short_string_problem)]
#: Headers put on jobs or matched by a headers binding, as AMQP can carry them.
Headers = Annotated[
    dict[
        Annotated[str, refuse(limits.field_name_problem)],
        Annotated[str | int | bool, refuse(_header_int)],
    ],
    refuse(limits.headers_problem),
]

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")]
