"""jobsys: a job system on RabbitMQ.

Importing jobsys never connects and never loads the broker client: the names below that need
aio-pika (the producers, the worker), pydantic (the app) or the topology loader load on first
use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobsys.errors import (
    AccessRefused,
    BrokerBlockedError,
    BrokerError,
    CallTimeout,
    ConfigError,
    ConnectionFailed,
    ContentTypeError,
    DecodeError,
    HandlerSignal,
    HandlerThreadsBusy,
    HostNotFound,
    JobFailed,
    JobsysError,
    KitError,
    LoopBlocked,
    MessageError,
    MessageRefusedError,
    PayloadTooLargeError,
    PayloadValidationError,
    PublishError,
    PublishOutcomeUnknown,
    QueueFullError,
    Reject,
    ResultError,
    ResultUnknown,
    Retry,
    StartupFailed,
    TLSHandshakeFailed,
    TopologyChangedDuringApply,
    TopologyConflictError,
    TopologyError,
    TopologyLoadError,
    TopologyValidationError,
    UnknownJobTypeError,
    UnroutableError,
)
from jobsys.settings import Settings

if TYPE_CHECKING:
    from jobsys.app import App, JobContext, State
    from jobsys.consume.options import WorkerOptions, WorkerStats
    from jobsys.consume.worker import Worker
    from jobsys.publish.producer import JobRequest, Producer, PublishResult, Receipt
    from jobsys.publish.sync import SyncProducer
    from jobsys.schedule.scheduler import Scheduler, SchedulerStats
    from jobsys.topology.loader import LoadedTopology, load_topology, load_topology_text
    from jobsys.topology.model import Topology

_LAZY = {
    # jobsys.app loads pydantic: a process that never builds an app (the supervisor of
    # ``--processes``) does without it.
    "App": "jobsys.app",
    "JobContext": "jobsys.app",
    "State": "jobsys.app",
    "load_topology": "jobsys.topology.loader",
    "load_topology_text": "jobsys.topology.loader",
    "LoadedTopology": "jobsys.topology.loader",
    "Topology": "jobsys.topology.model",
    "JobRequest": "jobsys.publish.producer",
    "Producer": "jobsys.publish.producer",
    "PublishResult": "jobsys.publish.producer",
    "Receipt": "jobsys.publish.producer",
    "SyncProducer": "jobsys.publish.sync",
    "Worker": "jobsys.consume.worker",
    "WorkerOptions": "jobsys.consume.options",
    "WorkerStats": "jobsys.consume.options",
    "Scheduler": "jobsys.schedule.scheduler",
    "SchedulerStats": "jobsys.schedule.scheduler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobsys' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [  # noqa: RUF022 - grouped by topic, not sorted
    # settings and the topology file
    "Settings",
    "load_topology",
    "load_topology_text",
    "LoadedTopology",
    "Topology",
    # handlers
    "App",
    "JobContext",
    "State",
    "StartupFailed",
    "Retry",
    "Reject",
    "HandlerSignal",
    "HandlerThreadsBusy",
    "LoopBlocked",
    # publishing
    "Producer",
    "SyncProducer",
    "JobRequest",
    "Receipt",
    "PublishResult",
    # consuming
    "Worker",
    "WorkerOptions",
    "WorkerStats",
    # schedules
    "Scheduler",
    "SchedulerStats",
    # errors, grouped by what the caller can do
    "JobsysError",
    "ConfigError",
    "TopologyError",
    "TopologyLoadError",
    "TopologyValidationError",
    "TopologyConflictError",
    "TopologyChangedDuringApply",
    "BrokerError",
    "ConnectionFailed",
    "TLSHandshakeFailed",
    "HostNotFound",
    "AccessRefused",
    "CallTimeout",
    "JobFailed",
    "KitError",
    "ResultUnknown",
    "PublishError",
    "UnroutableError",
    "QueueFullError",
    "MessageRefusedError",
    "BrokerBlockedError",
    "PublishOutcomeUnknown",
    "MessageError",
    "DecodeError",
    "ContentTypeError",
    "UnknownJobTypeError",
    "PayloadValidationError",
    "PayloadTooLargeError",
    "ResultError",
]
