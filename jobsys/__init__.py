"""jobsys: a job system on RabbitMQ.

Importing jobsys never connects and never loads the broker client: the names that need
aio-pika (``Producer``, ``SyncProducer``, ``JobRequest``, ``Receipt``) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jobsys.app import App, JobContext
from jobsys.errors import (
    AccessRefused,
    BrokerBlockedError,
    BrokerError,
    ConfigError,
    ConnectionFailed,
    DecodeError,
    HandlerSignal,
    JobsysError,
    MessageError,
    PayloadTooLargeError,
    PayloadValidationError,
    PublishError,
    PublishOutcomeUnknown,
    QueueFullError,
    Reject,
    Retry,
    TopologyConflictError,
    TopologyError,
    TopologyLoadError,
    TopologyValidationError,
    UnknownJobTypeError,
    UnroutableError,
)
from jobsys.settings import Settings

if TYPE_CHECKING:
    from jobsys.publish.producer import JobRequest, Producer, Receipt
    from jobsys.publish.sync import SyncProducer

_LAZY = {
    "JobRequest": "jobsys.publish.producer",
    "Producer": "jobsys.publish.producer",
    "Receipt": "jobsys.publish.producer",
    "SyncProducer": "jobsys.publish.sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobsys' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AccessRefused",
    "App",
    "BrokerBlockedError",
    "BrokerError",
    "ConfigError",
    "ConnectionFailed",
    "DecodeError",
    "HandlerSignal",
    "JobContext",
    "JobRequest",
    "JobsysError",
    "MessageError",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "Producer",
    "PublishError",
    "PublishOutcomeUnknown",
    "QueueFullError",
    "Receipt",
    "Reject",
    "Retry",
    "Settings",
    "SyncProducer",
    "TopologyConflictError",
    "TopologyError",
    "TopologyLoadError",
    "TopologyValidationError",
    "UnknownJobTypeError",
    "UnroutableError",
]
