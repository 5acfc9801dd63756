"""Follow-up jobs on the wire (pure): the ids they get from their parent, and the
``jobsys-then`` header that chains a job type to a job's result.

A follow-up's id is derived from its parent's id and its place among the parent's follow-ups
(``<parent>/1``, ``<parent>/2``, ...; the chained job is ``<parent>/then``), so an attempt that
runs again after a crash between publishing its follow-ups and its ack publishes the same ids:
handlers that deduplicate by ``ctx.job_id`` run each once. An id that would pass the job-id
limit becomes ``fu-`` and a SHA-256 of the long form, as deterministic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container

from jobsys.errors import PayloadTooLargeError, PayloadValidationError, UnknownJobTypeError
from jobsys.wire.envelope import MAX_JOB_ID_BYTES
from jobsys.wire.headers import HEADER_THEN
from jobsys.wire.table import shown

#: The suffix of the job a ``jobsys-then`` header starts.
THEN_SUFFIX = "then"
_MAX_JOB_TYPE_BYTES = 255


def followup_id(parent: str, suffix: int | str) -> str:
    """The id of the follow-up ``suffix`` (1, 2, ... or ``then``) of job ``parent``."""
    long_form = f"{parent}/{suffix}"
    encoded = long_form.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_JOB_ID_BYTES and long_form.isascii() and long_form.isprintable():
        return long_form
    return "fu-" + hashlib.sha256(encoded).hexdigest()


def then_job_type(value: object, known: Container[str]) -> str:
    """``value`` when it names a job type in ``known``; the error says what is wrong with it
    otherwise (``PayloadValidationError``, ``PayloadTooLargeError``, ``UnknownJobTypeError``,
    all ``MessageError``: refused at publish, dead-lettered on receipt)."""
    if isinstance(value, bytes):
        raise PayloadValidationError(f"{HEADER_THEN} must be text, got bytes {shown(value, 40)}")
    if not isinstance(value, str) or not value:
        raise PayloadValidationError(
            f"{HEADER_THEN} must be a job type, got {type(value).__name__} {shown(value, 40)}"
        )
    if len(value) > _MAX_JOB_TYPE_BYTES or len(value.encode("utf-8", "surrogatepass")) > (
        _MAX_JOB_TYPE_BYTES
    ):
        raise PayloadTooLargeError(f"{HEADER_THEN} is longer than {_MAX_JOB_TYPE_BYTES} bytes")
    if not value.isprintable():
        raise PayloadValidationError(f"{HEADER_THEN} {shown(value, 80)} holds control characters")
    if value not in known:
        raise UnknownJobTypeError(
            f"{HEADER_THEN} names job type {shown(value, 80)}, which is not in the topology"
        )
    return value
