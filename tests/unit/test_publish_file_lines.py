"""``jobsys publish --file``: what a line becomes, and how each result is reported (no broker)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsys.cli.publish_file import Defaults, Tally, _result, request_of
from jobsys.errors import PublishOutcomeUnknown, UnroutableError
from jobsys.publish.producer import JobRequest, Receipt

DEFAULTS = Defaults(priority=None, delay_s=None, headers={"source": "cli"})


def test_a_payload_line_gets_a_fresh_job_id_and_the_commands_options() -> None:
    one = request_of(b'{"a": 1}', "t", "payloads", DEFAULTS)
    two = request_of(b'{"a": 1}', "t", "payloads", DEFAULTS)

    assert one.payload == {"a": 1} and one.headers == {"source": "cli"}
    assert one.job_id and two.job_id and one.job_id != two.job_id


def test_a_job_line_overrides_the_options_and_merges_headers() -> None:
    line = json.dumps(
        {"payload": [1], "job_id": "j", "priority": 4, "delay": "1h30m", "headers": {"k": "v"}}
    ).encode()

    request = request_of(line, "t", "jobs", DEFAULTS)

    assert request == JobRequest("t", [1], 4, 5400.0, "j", {"source": "cli", "k": "v"})


@settings(max_examples=400)
@given(st.binary(max_size=200), st.sampled_from(["payloads", "jobs"]))
def test_any_line_is_a_request_or_a_value_error(line: bytes, fmt: str) -> None:
    try:
        request = request_of(line, "t", fmt, DEFAULTS)  # type: ignore[arg-type]
    except ValueError as exc:
        assert str(exc)
    else:
        assert request.job_id


def test_an_unknown_outcome_names_the_job_id_to_resubmit_with(
    capsys: pytest.CaptureFixture[str],
) -> None:
    tally = Tally()
    request = JobRequest("t", {}, None, None, "job-7", {})

    _result(tally, 3, request, PublishOutcomeUnknown("connection lost"), as_json=False)
    _result(tally, 4, request, UnroutableError("no queue"), as_json=False)
    _result(tally, 5, request, Receipt("job-7", "t", "x", "k", "m"), as_json=False)

    out, err = capsys.readouterr()
    assert out == "5\tjob-7\n"
    assert "line 3: unknown (job id job-7): connection lost" in err
    assert "line 4: refused: no queue" in err
    assert (tally.confirmed, tally.refused, tally.unknown) == (1, 1, 1)
    assert "may queue a second copy" in tally.summary()
