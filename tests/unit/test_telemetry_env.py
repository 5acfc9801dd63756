"""The commands' check for OTEL_* variables, made without the SDK, against the SDK setup itself:
wherever the check says "not wanted", the setup would have installed nothing and said nothing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobsys.observe.telemetry_env import telemetry_from_env, telemetry_wanted
from jobsys.observe.telemetry_setup import Telemetry, configure_from_env

_KEYS = [
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_SERVICE_NAME",
]
_VALUES = [
    "",
    " ",
    "none",
    "NONE",
    " none , none ",
    ",",
    "console",
    "none,console",
    "zipkin",
    "true",
    "TRUE ",
    "false",
    "http://127.0.0.1:9",
    "\x00\x1b[31m",
    "é",
]


# No deadline: the first example pays the SDK's resource detection, which is slow once.
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(env=st.dictionaries(st.sampled_from(_KEYS), st.sampled_from(_VALUES) | st.text(max_size=8)))
def test_not_wanted_means_the_setup_would_install_nothing_and_log_nothing(
    env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    if telemetry_wanted(env):
        return
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="jobsys.observe.telemetry_setup"):
        telemetry = configure_from_env("jobsys-worker", env, set_global=False)
    telemetry.shutdown()
    assert telemetry == Telemetry()
    said = [r for r in caplog.records if r.name.startswith(("jobsys", "opentelemetry"))]
    assert said == []


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_METRICS_EXPORTER": "none,console"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},  # unknown: the setup warns about it, so it runs
        {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_an_exporter_or_an_endpoint_is_wanted(env: dict[str, str]) -> None:
    assert telemetry_wanted(env)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": " none "},
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"},
        {"OTEL_SERVICE_NAME": "billing"},
    ],
)
def test_nothing_asked_for_is_not_wanted(env: dict[str, str]) -> None:
    assert not telemetry_wanted(env)


def _sdk_modules_after(code: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    program = (
        "import sys\n" + code + "\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=clean | env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


_COMMAND = (
    "import jobsys.cli\n"
    "from jobsys.observe.telemetry_env import telemetry_from_env\n"
    "with telemetry_from_env('jobsys-worker'):\n"
    "    pass"
)


def test_the_command_line_without_otel_variables_never_loads_the_sdk() -> None:
    assert _sdk_modules_after(_COMMAND, {}) == "[]"


def test_the_command_line_loads_the_sdk_when_an_exporter_is_named() -> None:
    assert "opentelemetry.sdk.trace" in _sdk_modules_after(
        _COMMAND, {"OTEL_TRACES_EXPORTER": "console"}
    )


def test_telemetry_from_env_installs_what_the_variables_ask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    with telemetry_from_env("jobsys-worker") as nothing:
        assert nothing is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    with telemetry_from_env("jobsys-worker") as disabled:
        assert disabled is None
