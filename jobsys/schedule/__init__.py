"""Schedules at run time: the elected scheduler that fires them, its state in the broker."""
