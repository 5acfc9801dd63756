"""The dashboard's pages, one module per concern, each giving one ``Page``: its title and path
for the navigation, and its routes.

A page is added by writing its module and listing it in ``default_pages``; ``create_app`` also
takes pages of its own (``extra_pages``), which appear after these in the navigation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from starlette.routing import BaseRoute


@dataclass(frozen=True)
class Page:
    """One entry of the navigation and the routes that serve it."""

    title: str
    path: str
    routes: Sequence[BaseRoute] = field(default_factory=tuple)


def default_pages() -> list[Page]:
    """Queues, workers, delay levels, dead-letter queues, schedules and the job lookup, in the
    navigation's order."""
    from jobsys.dashboard.pages import deadletters, delays, jobs, queues, schedules, workers

    return [
        queues.page(),
        workers.page(),
        delays.page(),
        deadletters.page(),
        schedules.page(),
        jobs.page(),
    ]
