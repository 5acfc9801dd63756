"""OS processes: one worker served under signals, the supervisor and its children.

No click here, and no OpenTelemetry SDK unless the environment asks for an exporter.
"""
