"""docs/tutorial.md works as written: every file it shows is written and every command it shows
is run, in order, in an empty directory, against a private vhost (with a fresh venv and jobsys
installed into it, as a new user would)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from jobsys.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```(\w+)(?: file=(\S+))?\n(.*?)^```$", re.MULTILINE | re.DOTALL)

pytestmark = pytest.mark.timeout(600)


def tutorial_script() -> str:
    """The tutorial as one bash script: files written where they appear, commands run."""
    parts = ["set -euo pipefail"]
    for language, filename, body in BLOCK.findall(TUTORIAL.read_text(encoding="utf-8")):
        if filename:
            parts.append(
                f"cat > {shlex.quote(filename)} <<'JOBSYS_TUTORIAL_EOF'\n{body}JOBSYS_TUTORIAL_EOF"
            )
        elif language == "sh":
            parts.append(body.replace("/path/to/jobsys", shlex.quote(str(ROOT))))
    return "\n".join(parts) + "\n"


def test_the_tutorial_takes_an_empty_directory_to_a_replayed_job(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    script = tutorial_script()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JOBSYS_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["JOBSYS_URL"] = vhost_settings.url
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )

    started = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    took = time.monotonic() - started

    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    orders = (tmp_path / "shop" / "orders.log").read_text().splitlines()
    # Orders 1 and 2 ran together (the pool runs 4 at once); order 3 after its replay.
    assert sorted(line.split(":")[0] for line in orders[:2]) == ["order 1", "order 2"]
    assert orders[2].startswith("order 3: 4 x lamp")
    assert "UnknownItem" in done.stdout  # dlq list showed why order 3 failed
    assert "replayed 1 job to shop.orders" in done.stdout
    assert "deleted" in done.stdout
    print(f"tutorial: empty directory to a replayed job and a clean vhost in {took:.1f}s")
