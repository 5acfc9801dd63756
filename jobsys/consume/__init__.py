"""Consuming jobs: the worker, its pools, one attempt, the retry decision, settlement, acks."""
