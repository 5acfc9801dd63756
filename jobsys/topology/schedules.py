"""The ``schedules:`` of a topology file, and when each one fires (pure, no I/O).

A schedule fires a job of one job type, with one payload, at every *slot*: a moment named by a
cron expression read in a timezone (through ``cronsim``), or every so many seconds counted from
the Unix epoch. A slot is a whole second since the epoch (UTC), so every copy of the scheduler
works out the same slots from the file alone, and a slot names its job: ``name@<UTC time>``.

Daylight saving time follows Debian's cron, as cronsim does: a local time that does not exist
(clocks go forward) fires at the first moment after the gap; a repeated local time (clocks go
back) fires once, at its first occurrence, for a fixed hour, while an expression whose hour is
a wildcard fires in both passes (they are different moments). ``Timing.next_after`` never
returns a moment at or before the one it is given, whatever the local clock did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from jobsys.duration import format_duration, parse_duration_s

#: The longest fixed interval; a longer cycle is better said with cron (it names the day).
MAX_EVERY_S = 366 * 86400
#: The longest jitter: a fire is held back by at most this much.
MAX_JITTER_S = 3600
#: The longest grace (how late a slot may still fire whatever the catch-up policy).
MAX_GRACE_S = 86400
#: How many missed slots ``catch_up: all`` may fire at most, per schedule.
MAX_CATCH_UP = 1000
#: The largest payload a schedule may carry, encoded as JSON.
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_CRON_CHARS = 200

#: What ``@daily`` and the like stand for (cronsim reads the five fields only).
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
#: Where cron expressions are checked from: any fixed moment does, and a fixed one keeps a
#: file's validity from depending on the day it is checked.
_CHECKED_FROM = datetime(2000, 1, 1, tzinfo=UTC)
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _seconds(value: object) -> float:
    try:
        return parse_duration_s(value)
    except OverflowError:
        raise ValueError("a duration must be a finite number of seconds, zero or more") from None


_Duration = Annotated[float, BeforeValidator(_seconds)]


def cron_fields(expression: str) -> str:
    """``expression`` with an ``@`` alias written out; ``ValueError`` for text that cannot be a
    cron expression at all (control characters, not ASCII, too long)."""
    if not isinstance(expression, str):
        raise ValueError(f"a cron expression is text, got {type(expression).__name__}")
    if len(expression) > MAX_CRON_CHARS:
        raise ValueError(f"a cron expression has at most {MAX_CRON_CHARS} characters")
    if not (expression.isascii() and expression.isprintable()):
        raise ValueError("a cron expression is one line of ASCII: five fields such as '30 2 * * *'")
    stripped = expression.strip()
    return CRON_ALIASES.get(stripped.lower(), stripped)


def check_cron(expression: str) -> str:
    """``expression`` (aliases written out) when cronsim reads it and it ever fires; else
    ``ValueError`` saying why."""
    fields = cron_fields(expression)
    if fields.startswith("@"):
        raise ValueError(f"unknown cron alias {fields!r}; known: {', '.join(sorted(CRON_ALIASES))}")
    try:
        next(iter(CronSim(fields, _CHECKED_FROM)))
    except CronSimError as exc:
        raise ValueError(
            f"{fields!r} is not a cron expression: {exc} (five fields: minute hour "
            "day-of-month month day-of-week, e.g. '30 2 * * *')"
        ) from None
    except StopIteration:
        raise ValueError(f"cron expression {fields!r} never fires") from None
    return fields


def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name`` (``Europe/Berlin``); ``ValueError`` when there is none."""
    if not isinstance(name, str) or not name or len(name) > 100 or not name.isprintable():
        raise ValueError("a timezone is an IANA name such as 'Europe/Berlin' or 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


class Schedule(BaseModel):
    """One periodic job: ``cron`` (in ``timezone``) or ``every``; ``job_type`` and
    ``payload``; what to do about slots missed while no scheduler ran (``catch_up``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_type: Annotated[str, Field(min_length=1, max_length=200)]
    cron: str | None = None
    every: _Duration | None = None
    timezone: str = "UTC"
    payload: Any = Field(default_factory=dict)
    #: Slots missed for longer than ``grace``: fire none, only the newest, or all of them (at
    #: most ``max_catch_up``, the newest ones).
    catch_up: Literal["none", "latest", "all"] = "latest"
    max_catch_up: int = Field(default=10, ge=1, le=MAX_CATCH_UP)
    #: A slot at most this late still fires, whatever ``catch_up`` says: a leader change or a
    #: broker restart makes slots a little late, and that is no downtime to catch up on.
    grace: _Duration = 60.0
    #: Hold each fire back by up to this much (the same amount for a slot on every copy), so
    #: that many schedules on one minute do not all fire at once.
    jitter: _Duration = 0.0

    @field_validator("cron")
    @classmethod
    def _cron_is_valid(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("every")
    @classmethod
    def _every_is_whole_seconds(cls, value: float | None) -> float | None:
        if value is not None:
            cls._check_every(value)
        return value

    @field_validator("grace")
    @classmethod
    def _grace_is_bounded(cls, value: float) -> float:
        if value > MAX_GRACE_S:
            raise ValueError(f"grace must be at most {format_duration(MAX_GRACE_S)}")
        return value

    @field_validator("jitter")
    @classmethod
    def _jitter_is_bounded(cls, value: float) -> float:
        if value > MAX_JITTER_S:
            raise ValueError(f"jitter must be at most {format_duration(MAX_JITTER_S)}")
        if value and int(value) != value:
            raise ValueError("jitter is counted in whole seconds (e.g. 30s)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone_exists(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("payload")
    @classmethod
    def _payload_is_json(cls, value: Any) -> Any:
        try:
            size = len(_JSON.encode(value).encode("utf-8"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(
                f"the payload must be JSON (mappings, lists, text, numbers, true/false, "
                f"null): {exc}; quote dates and times"
            ) from None
        if size > MAX_PAYLOAD_BYTES:
            raise ValueError(
                f"the payload is {size} bytes as JSON; a schedule's payload has at most "
                f"{MAX_PAYLOAD_BYTES}"
            )
        return value

    @model_validator(mode="after")
    def _one_timing(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give either cron or every (not both, not neither)")
        if self.every is not None and self.timezone != "UTC":
            raise ValueError(
                "timezone applies to cron only: every counts seconds, which no clock change moves"
            )
        if self.every is not None and self.jitter >= self.every:
            raise ValueError(
                f"jitter ({format_duration(self.jitter)}) must be shorter than every "
                f"({format_duration(self.every)}), or the fires would fall ever further behind"
            )
        return self

    @staticmethod
    def _check_every(every: float) -> None:
        if every < 1 or every != int(every):
            raise ValueError(
                f"every must be a whole number of seconds, at least 1s (got "
                f"{format_duration(every)})"
            )
        if every > MAX_EVERY_S:
            raise ValueError(
                f"every must be at most {format_duration(MAX_EVERY_S)}; for longer cycles "
                "use cron (e.g. '0 3 1 1 *' once a year)"
            )

    def timing(self) -> Timing:
        """When this schedule fires."""
        if self.cron is not None:
            return CronTiming(self.cron, zone(self.timezone))
        assert self.every is not None
        return EveryTiming(int(self.every))

    def describe(self) -> str:
        """``cron '30 2 * * *' Europe/Berlin`` or ``every 5m``."""
        if self.cron is not None:
            return f"cron '{self.cron}' {self.timezone}"
        return f"every {format_duration(self.every or 0)}"


class Timing:
    """When a schedule fires: its slots, in whole seconds since the epoch (UTC)."""

    def next_after(self, instant_s: int) -> int:
        """The first slot strictly after ``instant_s``."""
        raise NotImplementedError

    def slots(self, after_s: int, until_s: int) -> Iterator[int]:
        """Every slot in ``(after_s, until_s]``, oldest first."""
        slot = self.next_after(after_s)
        while slot <= until_s:
            yield slot
            slot = self.next_after(slot)

    def previous_at_or_before(self, instant_s: int, horizon_s: int) -> int | None:
        """The newest slot at or before ``instant_s`` and after ``instant_s - horizon_s``."""
        newest = None
        for slot in self.slots(instant_s - horizon_s, instant_s):
            newest = slot
        return newest


@dataclass(frozen=True)
class EveryTiming(Timing):
    """Every ``every_s`` seconds, counted from the epoch: every copy finds the same slots."""

    every_s: int

    def next_after(self, instant_s: int) -> int:
        return (instant_s // self.every_s + 1) * self.every_s

    def slots(self, after_s: int, until_s: int) -> Iterator[int]:
        return iter(range(self.next_after(after_s), until_s + 1, self.every_s))


@dataclass(frozen=True)
class CronTiming(Timing):
    """A cron expression read in a timezone."""

    expression: str
    tz: ZoneInfo

    def next_after(self, instant_s: int) -> int:
        start = datetime.fromtimestamp(instant_s, UTC).astimezone(self.tz)
        # From a repeated local time (the clock went back), cronsim may name the first pass
        # of a time the second pass has already left behind; skip what is not later.
        for moment in CronSim(self.expression, start):
            slot = math.floor(moment.timestamp())
            if slot > instant_s:
                return slot
        raise ValueError(f"cron expression {self.expression!r} fires no more")  # pragma: no cover


def job_id_for(schedule_name: str, slot_s: int) -> str:
    """The job id of the fire of ``schedule_name`` at ``slot_s``: the same on every copy, so
    the slot names its job: ``nightly@2026-12-01T02:00:00Z``."""
    moment = datetime.fromtimestamp(slot_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{schedule_name}@{moment}"


def jitter_for(schedule_name: str, slot_s: int, jitter_s: float) -> int:
    """How many whole seconds the fire of ``slot_s`` is held back: the same on every copy of
    the scheduler (a hash of the name and slot), below ``jitter_s``."""
    if jitter_s < 1:
        return 0
    seed = f"{schedule_name}@{slot_s}".encode()
    # FNV-1a: stable across processes and Python versions, unlike hash().
    value = 0xCBF29CE484222325
    for byte in seed:
        value = ((value ^ byte) * 0x100000001B3) % 2**64
    return value % int(jitter_s)
