"""A worker's job-type limits, set up together: ``max_running`` permits, ``rate_limit`` tokens
and their elected refiller, and circuit breakers. Each part exists only when the topology asks
for it; the attempt runner consults them before a handler runs."""

from __future__ import annotations

from dataclasses import dataclass

from jobsys.broker.connection import BrokerConnection
from jobsys.consume.attempt import AttemptRunner
from jobsys.consume.breakers import Breakers
from jobsys.consume.permits import Permits
from jobsys.consume.rates import Refiller, Tokens
from jobsys.topology.model import Topology
from jobsys.topology.own import OwnLayout

__all__ = ["Limits"]


@dataclass
class Limits:
    """The limits of one worker; ``start`` checks their queues and hands them to the runner."""

    permits: Permits | None = None
    tokens: Tokens | None = None
    #: For a topology with rate limits: this worker stands for election as the one process
    #: that refills the token buckets.
    refiller: Refiller | None = None
    breakers: Breakers | None = None

    @classmethod
    async def start(
        cls, connection: BrokerConnection, topology: Topology, runner: AttemptRunner
    ) -> Limits:
        """Set up what ``topology`` asks for; ``TopologyError`` when a queue of it is missing."""
        limits = cls()
        job_types = topology.job_types.values()
        if any(jt.max_running is not None for jt in job_types):
            limits.permits = runner.permits = Permits(connection, topology)
            await limits.permits.check()
        if any(jt.rate_limit is not None for jt in job_types):
            limits.tokens = runner.tokens = Tokens(connection, topology)
            await limits.tokens.check(OwnLayout(topology.namespace).refiller_queue)
            limits.refiller = Refiller(connection, topology)
            limits.refiller.start()
        if any(jt.breaker is not None for jt in job_types):
            limits.breakers = runner.breakers = Breakers(connection, topology)
            await limits.breakers.start()
        return limits

    async def close(self) -> None:
        """Stop refilling and close the limits' channels: the broker returns any permit still
        held, and the election token goes to the next worker."""
        for part in (self.refiller, self.tokens, self.permits, self.breakers):
            if part is not None:
                await part.close()
