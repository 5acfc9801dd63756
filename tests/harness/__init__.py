"""Fault-test harness: RabbitMQ nodes owned by the tests and a TCP fault proxy.

Fixtures (from ``tests.harness.fixtures``, loaded for every test)::

    async def test_worker_survives_broker_kill(running_own_broker, make_fault_proxy):
        settings = node_settings(running_own_broker)      # rabbit2@localhost, port 5673
        proxy = make_fault_proxy(running_own_broker.port)  # or `fault_proxy` (shared broker)
        ...
        running_own_broker.kill()         # kill -9; .restart() keeps durable data
        proxy.set_mode("blackhole")       # silent partition; "reset" sends RSTs
        running_own_broker.set_memory_alarm(True)  # publishers get blocked

``rabbit_cluster`` (slow) is rabbit3..5@localhost on 5674-5676, with ``quorum_leader(queue)``.
"""
