"""Observing jobs: OpenTelemetry spans, propagation and metrics; the SDK set up for programs."""
