"""Hypothesis strategies for hostile publish input: payloads, headers, job ids, priorities and
delays of every type a caller could pass, well-formed or not (for the property tests)."""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st


class Opaque:
    """A value no encoder knows."""

    def __repr__(self) -> str:
        return "Opaque()"


class Unshowable:
    """A value whose repr() raises, as a caller's object may."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


#: Ints repr() refuses (over 4300 digits); built lazily, as hypothesis shows its strategies.
huge_ints = st.integers(4301, 4400).map(lambda digits: 10**digits)
unshowables = st.builds(Unshowable)


def nested(depth: int, leaf: Any = "leaf") -> Any:
    """``leaf`` inside ``depth`` alternating dicts and lists."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


texts = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.sampled_from(["", "a\nb", "\x00", "\x1b[31m", "é" * 70, "x" * 300, "CC", "bcc"]),
    st.integers(1, 200_000).map(lambda n: "v" * n),
)

hostile_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e39, -3.5e38, 3.4e38]),
    texts,
    st.binary(max_size=5),
    st.builds(bytearray, st.binary(max_size=5)),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.sampled_from([Decimal("1e40"), Decimal("12.50"), Decimal("-2147483648")]),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.datetimes(),
    st.frozensets(st.integers(), max_size=3).map(set),
    st.tuples(st.integers()),
    st.builds(Opaque),
    unshowables,
    huge_ints,
)

hostile_values = st.one_of(
    st.recursive(
        hostile_leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(texts, st.integers()), children, max_size=4),
        ),
        max_leaves=12,
    ),
    st.integers(20, 3000).map(nested),
)

hostile_headers = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(texts, st.integers(), st.none()), hostile_values, max_size=6),
    st.sampled_from([10, 2000, 20_000]).map(lambda n: {f"h{i}": i for i in range(n)}),
    st.sampled_from([[("tenant", "acme")], "tenant=acme", 5]),
)

json_payloads = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)

hostile_payloads = st.one_of(
    json_payloads,
    hostile_values,
    st.integers(100, 5000).map(nested),
    st.sampled_from([{"to": "a@b.c"}, {"to": "ab"}, {"too": 1}]),
)

job_ids = st.one_of(
    st.none(),
    texts,
    st.integers(),
    huge_ints,
    unshowables,
    st.binary(max_size=5),
    st.floats(),
    st.text(alphabet="abc-0123456789", min_size=1, max_size=40),
)

priorities = st.one_of(
    st.none(),
    st.integers(-5, 300),
    st.sampled_from([10**400, True, 1.5, "5", Decimal(5)]),
    huge_ints,
    unshowables,
)

delays = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 3.0),
    st.sampled_from([10**400, -(10**400), 2**53 + 1, 30 * 86400, 40 * 86400, "5s", True]),
    huge_ints,
    unshowables,
    st.decimals(allow_nan=False, allow_infinity=False, places=2).filter(lambda d: math.isfinite(d)),
)

# -- well-formed input, mixed with the hostile so that both sides of a property are reached ----

good_names = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), min_size=1, max_size=30
).filter(
    lambda name: (
        not name.lower().startswith(("x-", "jobsys-"))
        and name.lower()
        not in {
            "cc",
            "bcc",
        }
    )
)
good_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(-1e30, 1e30, allow_nan=False),
    st.text(max_size=40).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)),
    st.datetimes(min_value=dt.datetime(1970, 1, 2), timezones=st.just(dt.UTC)),
)
good_values = st.recursive(
    good_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(good_names, children, max_size=3)
    ),
    max_leaves=8,
)
good_headers = st.dictionaries(good_names, good_values, max_size=5)
good_job_ids = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P"]), min_size=1, max_size=40
)

any_headers = st.one_of(st.none(), good_headers, good_headers, good_headers, hostile_headers)
any_job_ids = st.one_of(st.none(), good_job_ids, good_job_ids, job_ids)
any_priorities = st.one_of(st.none(), st.none(), st.integers(0, 10), priorities)
any_delays = st.one_of(st.none(), st.none(), st.just(0), delays)
any_payloads = st.one_of(
    st.builds(lambda to: {"to": to}, st.text(max_size=20)),
    json_payloads,
    hostile_payloads,
)

#: (job type, payload, priority, delay, job id, headers) for the test topologies' job types
#: ``send_email`` (a model with ``to: str``, queue max_priority 10) and ``audit_event``.
good_requests = st.one_of(
    st.tuples(
        st.just("send_email"),
        st.builds(lambda to: {"to": to}, st.text(max_size=20)),
        st.one_of(st.none(), st.integers(0, 10)),
        st.one_of(st.none(), st.just(0), st.floats(0, 3.0)),
        st.one_of(st.none(), good_job_ids),
        st.one_of(st.none(), good_headers),
    ),
    st.tuples(
        st.just("audit_event"),
        json_payloads,
        st.one_of(st.none(), st.just(0)),
        st.one_of(st.none(), st.just(0), st.integers(1, 3)),
        st.one_of(st.none(), good_job_ids),
        st.one_of(st.none(), good_headers),
    ),
)
any_requests = st.one_of(
    good_requests,
    st.tuples(
        st.one_of(
            st.sampled_from(["send_email", "audit_event"]),
            texts,
            st.none(),
            huge_ints,
            unshowables,
        ),
        any_payloads,
        any_priorities,
        any_delays,
        any_job_ids,
        any_headers,
    ),
)
