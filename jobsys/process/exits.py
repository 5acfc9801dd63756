"""The exit codes of jobsys's commands, documented in docs/cli.md.

A module of their own so that the supervisor, which loads no asyncio, can use them too.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # the work was not (all) done: a publish not confirmed, a worker stopped early
EXIT_INVALID = 2  # bad input: usage, an invalid topology file, a bad payload
EXIT_CONFLICT = 3  # the broker's topology differs from the file
EXIT_BROKER = 4  # the broker could not be reached or refused access
EXIT_STARTUP = 5  # a startup hook of the app failed: the worker took no job
