"""The handler registry: registration, signatures, payload models (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from jobsys.app import App, JobContext
from jobsys.errors import PayloadValidationError, UnknownJobTypeError


class Email(BaseModel):
    to: str
    subject: str
    retries: int = 0


def test_async_handler_with_a_payload_model_and_a_context_is_registered_as_such() -> None:
    app = App()

    @app.handler("send_email")
    async def send(payload: Email, ctx: JobContext) -> None: ...

    spec = app.get("send_email")
    assert spec.func is send
    assert spec.payload_model is Email
    assert spec.wants_context and spec.is_async
    assert app.job_types == ["send_email"] and "send_email" in app and len(app) == 1


def test_sync_handler_without_annotation_gets_raw_json_and_no_context() -> None:
    app = App()

    @app.handler("plain")
    def plain(payload): ...  # type: ignore[no-untyped-def]

    spec = app.get("plain")
    assert spec.payload_model is None and not spec.wants_context and not spec.is_async
    assert spec.parse_payload({"a": [1]}) == {"a": [1]}


def test_string_annotations_are_resolved_to_the_payload_model() -> None:
    # With `from __future__ import annotations` every annotation here is a string.
    app = App()

    async def send(payload: Email) -> None: ...

    assert app.register("e", send).payload_model is Email


def test_registering_the_same_job_type_twice_is_refused() -> None:
    app = App()
    app.register("a", lambda payload: None)
    with pytest.raises(ValueError, match="already has a handler"):
        app.register("a", lambda payload: None)


@pytest.mark.parametrize(
    "func",
    [lambda: None, lambda a, b, c: None, lambda a, *, must: None],
    ids=["no-parameter", "three-parameters", "required-keyword"],
)
def test_handler_that_cannot_take_a_payload_and_context_is_refused(func: Any) -> None:
    with pytest.raises(ValueError, match=r"must take \(payload\)"):
        App().register("x", func)


def test_unknown_job_type_raises_unknown_job_type_error() -> None:
    with pytest.raises(UnknownJobTypeError, match="no handler for job type 'nope'"):
        App().get("nope")


def test_invalid_payload_names_the_field_paths_but_never_the_values() -> None:
    app = App()

    async def send(payload: Email) -> None: ...

    spec = app.register("send_email", send)
    assert spec.parse_payload({"to": "a", "subject": "b"}) == Email(to="a", subject="b")
    with pytest.raises(PayloadValidationError) as info:
        spec.parse_payload({"to": "secret@example.com", "retries": "many"})
    text = str(info.value)
    assert "subject: Field required" in text
    assert "retries:" in text
    assert "secret@example.com" not in text and "many" not in text
