"""Operator actions against a live broker: plan and apply a topology, status, dead letters."""
