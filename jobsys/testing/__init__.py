"""The in-memory test kit: run an ``App`` against its topology without a broker, on a virtual
clock, through the same ``Producer``, ``AttemptRunner`` and ``Settler`` a real worker uses
(``Kit``), with helpers to see what was published, what ran and what was dead-lettered.
A contract suite (tests/contract/) runs the same scenarios here and on RabbitMQ and compares
the outcomes. See docs/testing.md. Nothing in jobsys imports this package but the demo."""

from jobsys.testing.edge import Sent
from jobsys.testing.inspect import DeadLetter, Queued, Run
from jobsys.testing.kit import Kit

__all__ = ["DeadLetter", "Kit", "Queued", "Run", "Sent"]
