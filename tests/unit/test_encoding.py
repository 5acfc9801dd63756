"""Float header values travel as AMQP doubles (jobsys.broker.encoding)."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import decode as pamqp_decode
from pamqp import encode as pamqp_encode

from jobsys.broker import encoding


@pytest.fixture(autouse=True)
def installed() -> None:
    encoding.install()


def _round_trip(headers: dict[str, Any]) -> dict[str, Any]:
    table = pamqp_encode.field_table(headers)
    consumed, decoded = pamqp_decode.field_table(table)
    assert consumed == len(table)
    return decoded


@pytest.mark.parametrize("value", [0.1, 1e300, -2.5e-308, 5e-324, 1.7976931348623157e308])
def test_a_float_header_arrives_exactly_as_sent(value: float) -> None:
    # As a 32-bit float 0.1 arrived as 0.10000000149011612 and 1e300 could not be sent at all.
    decoded = _round_trip({"v": value, "nested": {"list": [value, 1, "x"]}})
    assert decoded["v"] == value
    assert decoded["nested"]["list"][0] == value


def test_other_values_are_encoded_as_pamqp_encodes_them() -> None:
    for value in (1, -(2**40), True, "text", None, Decimal("1.25"), [1, "a"], {"k": "v"}):
        assert encoding.encode_table_value(value) == encoding._pamqp_encode_table_value(value)
    assert encoding.encode_table_value(0.5)[:1] == b"d"


def test_install_is_idempotent_and_refuses_a_pamqp_it_does_not_recognise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoding.install()
    assert pamqp_encode.encode_table_value is encoding.encode_table_value
    monkeypatch.setattr(encoding, "_installed", False)
    monkeypatch.setattr(pamqp_encode, "encode_table_value", lambda value: b"")
    with pytest.raises(RuntimeError, match="does not recognise this pamqp"):
        encoding.install()


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False))
def test_any_float_round_trips_through_a_header_table(value: float) -> None:
    assert _round_trip({"v": value})["v"] == value


def test_nan_is_still_a_double_on_the_wire() -> None:
    # jobsys refuses NaN headers at publish (wire.table); one from another client is kept.
    assert math.isnan(_round_trip({"v": math.nan})["v"])
