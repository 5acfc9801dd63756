"""``jobsys worker --reload``: the development loop. The worker runs as a child process
(``python -m jobsys worker ...`` with the same arguments, less ``--reload``); when a Python
file under the current directory or the topology file changes, the child gets SIGINT, drains
as it does for any stop (running jobs finish within ``--grace``, waiting ones are requeued) and
a fresh one starts with the new code and topology. File watching is ``watchfiles``, a kept
library (``pip install 'jobsys[reload]'``)."""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from jobsys.errors import ConfigError

#: Extra seconds past ``--grace`` before a child that did not drain is killed.
_STOP_SLACK_S = 5.0


def child_command(argv: Sequence[str]) -> list[str]:
    """The worker command a reloading parent runs: its own arguments without ``--reload`` and
    without ``--url``, which reaches the child in the environment (``JOBSYS_URL``, set by the
    parent): a command line is readable by every user of the machine."""
    kept: list[str] = []
    skip_value = False
    for arg in argv:
        if skip_value:
            skip_value = False
        elif arg == "--url":
            skip_value = True
        elif arg != "--reload" and not arg.startswith("--url="):
            kept.append(arg)
    return [sys.executable, "-m", "jobsys", *kept]


def watched_paths(topology_file: str) -> list[Path]:
    """What a change restarts the worker for: the current directory (the app's code) and the
    topology file's directory when it lies elsewhere."""
    here = Path.cwd().resolve()
    topology_dir = Path(topology_file).resolve().parent
    if topology_dir == here or here in topology_dir.parents:
        return [here]
    return [here, topology_dir]


def run_reloading(
    argv: Sequence[str], topology_file: str, grace_s: float, echo: Callable[[str], None]
) -> int:
    """Run the worker in a child and restart it on every change until interrupted."""
    try:
        import watchfiles
    except ImportError:
        raise ConfigError("--reload needs watchfiles: pip install 'jobsys[reload]'") from None
    topology = Path(topology_file).resolve()
    ignored = watchfiles.DefaultFilter()  # .venv, .git, caches, editor files

    def wanted(change: watchfiles.Change, path: str) -> bool:
        if not ignored(change, path):
            return False
        return Path(path) == topology or path.endswith(".py")

    def changed(changes: set[tuple[watchfiles.Change, str]]) -> None:
        names = sorted({Path(path).name for _, path in changes})
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        echo(f"reload: {shown} changed; draining the worker and starting a new one")

    paths = watched_paths(topology_file)
    echo("reload: watching " + ", ".join(str(p) for p in paths) + " (.py and the topology file)")
    watchfiles.run_process(
        *paths,
        target=shlex.join(child_command(argv)),
        target_type="command",
        callback=changed,
        watch_filter=wanted,
        sigint_timeout=math.ceil(grace_s + _STOP_SLACK_S),
        debounce=400,
    )
    return 0
