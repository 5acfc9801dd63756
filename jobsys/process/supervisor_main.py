"""The supervisor as a program of its own: ``python -m jobsys.process.supervisor_main SPEC
OPTIONS``.

``jobsys worker --processes P`` checks its input (the app imports, the topology loads, the
options agree) and then *replaces itself* with this program (``exec``: the same process, so
the same pid for systemd, Kubernetes or a shell's job control). What the check loaded (the
app, pydantic, aio-pika, click) is gone with the old image: the supervisor lives for the
service's whole life and needs none of it, and this entry point imports only the standard
library and ``jobsys.process`` (about 15 MiB resident instead of about 45 MiB).

The broker URL, like the children's, comes in the environment, never on the command line.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

from jobsys.process.child import ChildSpec
from jobsys.process.logs import configure_logging
from jobsys.process.supervisor import Supervisor, SupervisorOptions

#: Where ``command`` ends: the arguments this program takes.
USAGE = "usage: python -m jobsys.process.supervisor_main SPEC OPTIONS (started by jobsys worker)"


def command(spec: ChildSpec, options: SupervisorOptions) -> list[str]:
    """The command line ``jobsys worker --processes`` execs into."""
    return [
        sys.executable,
        "-m",
        "jobsys.process.supervisor_main",
        spec.to_json(),
        json.dumps(asdict(options)),
    ]


def main(argv: list[str]) -> int:
    """Supervise the children ``argv`` (``SPEC OPTIONS``) describes; the exit code."""
    if len(argv) != 2:
        print(USAGE, file=sys.stderr)
        return 2
    spec = ChildSpec.from_json(argv[0])
    options = SupervisorOptions(**json.loads(argv[1]))
    configure_logging(spec.verbose, service=True)
    return Supervisor(spec, options, os.environ).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
