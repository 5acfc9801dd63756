"""A handler's return value as the job's result: checked and encoded as JSON (pure, no I/O).

A handler that returns None costs nothing here: the attempt never calls ``ResultCodec``. Any
other value becomes the job's result, encoded once as compact UTF-8 JSON:

* when the handler's return annotation names a type (``-> int``, ``-> list[str]``, a pydantic
  model...), the value is validated against it with pydantic first, and encoded as pydantic
  dumps that type;
* otherwise a pydantic model is dumped as JSON, and anything else must be what ``json`` takes
  as it is (dict with string keys, list, tuple, str, int, float, bool, None).

A value that cannot be a result fails the attempt with ``ResultError`` (the job is
dead-lettered at once, the reason in its dead-letter headers): not JSON-serialisable, NaN or
infinity (JSON has no such numbers, and other languages' parsers refuse them), a string that is
not valid Unicode, a value that does not match the annotation, a coroutine returned without
being awaited, or an encoding larger than ``max_payload_bytes``. Error messages name types and
field paths, never the values: they end up in dead-letter headers, which must not leak a job's
data.
"""

from __future__ import annotations

import inspect
import json
import logging
import typing
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from jobsys.app import HandlerSpec
from jobsys.errors import ResultError

log = logging.getLogger(__name__)

_MAX_VALIDATION_ERRORS = 5
#: Annotations that say nothing to validate against.
_UNCHECKED: tuple[object, ...] = (None, type(None), Any, object, inspect.Signature.empty)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class ResultCodec:
    """Encodes handlers' results; the return annotation of each handler is read once, on its
    first result that is not None."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._adapters: dict[Any, TypeAdapter[Any] | None] = {}  # by handler function

    def encode(self, handler: HandlerSpec, value: Any) -> bytes:
        """``value``, returned by ``handler``, as JSON bytes; ``ResultError`` says why not."""
        job_type = handler.job_type
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()  # never awaited: closing it spares a "never awaited" warning
            raise ResultError(
                f"the handler of job type {job_type!r} returned {type(value).__name__} "
                "instead of a result: a missing `await`?"
            )
        adapter = self._adapter(handler)
        try:
            if adapter is not None:
                data = adapter.dump_python(adapter.validate_python(value), mode="json")
            elif isinstance(value, BaseModel):
                data = value.model_dump(mode="json")
            else:
                data = value
        except ValidationError as exc:
            raise ResultError(_describe(exc, job_type)) from None
        except Exception as exc:  # a serializer of the user's model, pydantic meeting a type
            raise ResultError(
                f"the result of job type {job_type!r} cannot be serialised ({type(exc).__name__})"
            ) from None
        return self._dump(data, job_type)

    def _dump(self, data: Any, job_type: str) -> bytes:
        try:
            encoded = _ENCODER.encode(data).encode("utf-8")
        except TypeError as exc:
            # json names the offending type ("Object of type set is not JSON serializable").
            raise ResultError(
                f"the result of job type {job_type!r} is not JSON-serialisable: {exc}"
            ) from None
        except UnicodeEncodeError:
            raise ResultError(
                f"the result of job type {job_type!r} holds a string that is not valid Unicode "
                "(a lone surrogate)"
            ) from None
        except ValueError as exc:
            if "Circular" in str(exc):
                why = "it contains a reference to itself"
            else:
                why = "it contains NaN or infinity, which JSON cannot carry"
            raise ResultError(
                f"the result of job type {job_type!r} cannot be encoded: {why}"
            ) from None
        except RecursionError:
            raise ResultError(
                f"the result of job type {job_type!r} is nested too deeply to encode"
            ) from None
        if len(encoded) > self.max_bytes:
            raise ResultError(
                f"the result of job type {job_type!r} is {len(encoded)} bytes encoded; "
                f"results are limited to {self.max_bytes} bytes (max_payload_bytes)"
            )
        return encoded

    def _adapter(self, handler: HandlerSpec) -> TypeAdapter[Any] | None:
        try:
            return self._adapters[handler.func]
        except KeyError:
            pass
        adapter = self._adapters[handler.func] = return_adapter(handler)
        return adapter


def return_adapter(handler: HandlerSpec) -> TypeAdapter[Any] | None:
    """A pydantic adapter for ``handler``'s return annotation; None when it has none, or one
    that says nothing (``None``, ``Any``, ``object``) or pydantic cannot build a schema for
    (logged once: its results are then only checked to be JSON)."""
    try:
        hint: Any = typing.get_type_hints(handler.func).get("return", None)
    except Exception:  # resolved once at registration already; a later failure is not ours
        return None
    if any(hint is unchecked for unchecked in _UNCHECKED):
        return None
    try:
        return TypeAdapter(hint)
    except Exception as exc:
        log.warning(
            "the return annotation of the handler of %r cannot be checked by pydantic (%s); "
            "its results are only checked to be JSON",
            handler.job_type,
            type(exc).__name__,
        )
        return None


def _describe(exc: ValidationError, job_type: str) -> str:
    errors = exc.errors(include_input=False, include_url=False)
    parts = []
    for error in errors[:_MAX_VALIDATION_ERRORS]:
        path = ".".join(str(part) for part in error["loc"]) or "result"
        parts.append(f"{path}: {error['msg']}")
    more = len(errors) - _MAX_VALIDATION_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return (
        f"the result of job type {job_type!r} does not match the handler's return annotation: "
        + "; ".join(parts)
    )
