"""Whether the ``OTEL_*`` variables ask for telemetry, decided without importing the SDK.

The OpenTelemetry SDK costs a process about 60 modules to import (its metrics package most of
all; 0.12 s of a worker's start-up under cProfile, which inflates it). A worker or a publish
command whose environment names no exporter would install nothing with it
(``telemetry_setup.configure_from_env``), so these commands ask here first and import the SDK
only when it can do something. The rules are that module's; the unit tests hold the two to the
same answers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping


def telemetry_wanted(env: Mapping[str, str]) -> bool:
    """True when ``configure_from_env`` could install a provider or warn about an exporter:
    an exporter is named (other than ``none``) or an OTLP endpoint is set, and the SDK is not
    disabled."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [env.get("OTEL_TRACES_EXPORTER"), env.get("OTEL_METRICS_EXPORTER")]
    named = any(e and any(n.strip() not in ("", "none") for n in e.split(",")) for e in exporters)
    return named or any(k.startswith("OTEL_EXPORTER_OTLP_") and k.endswith("ENDPOINT") for k in env)


def telemetry_from_env(service_name: str) -> contextlib.AbstractContextManager[object]:
    """The providers the environment asks for, shut down when the context ends; with none
    asked for, an empty context and no SDK import."""
    if not telemetry_wanted(os.environ):
        return contextlib.nullcontext()
    from jobsys.observe.telemetry_setup import configure_from_env

    return configure_from_env(service_name)
