"""Fault-test harness: RabbitMQ nodes owned by the tests and a TCP fault proxy."""
