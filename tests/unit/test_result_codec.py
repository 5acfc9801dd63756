"""A handler's return value as the job's result: what is encoded, and what fails the attempt."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from jobsys.app import App
from jobsys.consume.result import ResultCodec
from jobsys.errors import MessageError, ResultError


class Summary(BaseModel):
    count: int
    names: list[str]


def spec_of(func: Any) -> Any:
    app = App()
    return app.register("job", func)


def plain(payload: Any) -> Any:
    return payload


def typed(payload: Any) -> Summary:
    return payload  # type: ignore[no-any-return]


def returns_int(payload: Any) -> int:
    return payload  # type: ignore[no-any-return]


def returns_none(payload: Any) -> None:
    return payload  # type: ignore[no-any-return]


CODEC = ResultCodec(max_bytes=1024)


@pytest.mark.parametrize(
    "value",
    [0, 1.5, "text", True, [1, "a", None], {"a": {"b": [1, 2]}}, (1, 2), "", []],
)
def test_json_values_are_encoded_compactly(value: Any) -> None:
    encoded = CODEC.encode(spec_of(plain), value)
    assert json.loads(encoded) == json.loads(json.dumps(value))
    assert b" " not in encoded or isinstance(value, str)


def test_pydantic_model_without_annotation_is_dumped_as_json() -> None:
    encoded = CODEC.encode(spec_of(plain), Summary(count=2, names=["a", "b"]))
    assert json.loads(encoded) == {"count": 2, "names": ["a", "b"]}


def test_value_is_validated_against_the_return_annotation() -> None:
    encoded = CODEC.encode(spec_of(typed), {"count": "3", "names": []})
    assert json.loads(encoded) == {"count": 3, "names": []}
    assert json.loads(CODEC.encode(spec_of(returns_int), "7")) == 7


def test_value_that_does_not_match_the_annotation_names_the_field_not_the_value() -> None:
    with pytest.raises(ResultError) as caught:
        CODEC.encode(spec_of(typed), {"count": "secret-value", "names": []})
    assert "count" in str(caught.value)
    assert "secret-value" not in str(caught.value)


def test_none_annotation_does_not_refuse_a_value() -> None:
    assert CODEC.encode(spec_of(returns_none), 5) == b"5"


def test_result_error_is_a_message_error_so_it_is_never_retried() -> None:
    assert issubclass(ResultError, MessageError)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({1, 2}, "set"),
        (object(), "object"),
        ({"a": b"bytes"}, "bytes"),
        (math.nan, "NaN"),
        (math.inf, "NaN or infinity"),
        ({"x": [-math.inf]}, "infinity"),
        ("\ud800", "lone surrogate"),
    ],
)
def test_values_json_cannot_carry_fail_with_a_clear_error(value: Any, words: str) -> None:
    with pytest.raises(ResultError) as caught:
        CODEC.encode(spec_of(plain), value)
    assert words in str(caught.value)


def test_nan_inside_a_pydantic_model_is_refused_not_turned_into_null() -> None:
    class Point(BaseModel):
        x: float

    with pytest.raises(ResultError, match="NaN"):
        CODEC.encode(spec_of(plain), Point(x=math.nan))


def test_circular_result_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ResultError, match="itself"):
        CODEC.encode(spec_of(plain), loop)


def test_deeply_nested_result_is_refused_not_a_crash() -> None:
    value: Any = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(ResultError):
        CODEC.encode(spec_of(plain), value)


def test_oversized_result_says_its_size_and_the_limit() -> None:
    with pytest.raises(ResultError) as caught:
        CODEC.encode(spec_of(plain), "x" * 2000)
    assert "2002 bytes" in str(caught.value)
    assert "1024" in str(caught.value)


def test_coroutine_returned_by_mistake_is_closed_and_refused() -> None:
    async def forgotten() -> int:
        return 1

    coroutine = forgotten()
    with pytest.raises(ResultError, match="await"):
        CODEC.encode(spec_of(plain), coroutine)
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning later


def test_future_returned_by_mistake_is_refused() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ResultError, match="Future"):
            CODEC.encode(spec_of(plain), loop.create_future())
    finally:
        loop.close()


def test_control_characters_in_strings_are_escaped_in_the_json() -> None:
    encoded = CODEC.encode(spec_of(plain), "a\x1b[31mb\x00\n")
    assert b"\x1b" not in encoded and b"\x00" not in encoded
    assert json.loads(encoded) == "a\x1b[31mb\x00\n"


def test_a_serializer_that_raises_fails_the_attempt_not_the_worker() -> None:
    from pydantic import field_serializer

    class Bad(BaseModel):
        x: int

        @field_serializer("x")
        def boom(self, value: int) -> int:
            raise RuntimeError("serializer broke")

    with pytest.raises(ResultError, match="cannot be serialised"):
        CODEC.encode(spec_of(plain), Bad(x=1))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_any_json_value_round_trips(value: Any) -> None:
    codec = ResultCodec(max_bytes=1 << 20)
    assert json.loads(codec.encode(spec_of(plain), value)) == value
