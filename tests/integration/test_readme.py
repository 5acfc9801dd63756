"""The README's Python example runs as written, against the example topology."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from jobsys.broker.connection import BrokerConnection
from jobsys.ops.declare import apply_topology
from jobsys.process.child import load_app
from jobsys.settings import Settings
from jobsys.topology.loader import load_topology

ROOT = Path(__file__).resolve().parents[2]


def _python_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    [block] = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    return block


def test_the_readme_python_example_publishes_a_confirmed_job(
    vhost_settings: Settings, tmp_path: Path
) -> None:
    example = tmp_path / "emails.py"
    example.write_text(_python_example(), encoding="utf-8")

    async def apply() -> None:
        async with BrokerConnection(vhost_settings) as connection:
            await apply_topology(connection, load_topology(ROOT / "topology/example.yaml"))

    asyncio.run(apply())
    result = subprocess.run(
        [sys.executable, str(example)],
        cwd=ROOT,  # the example names topology/example.yaml relative to the checkout
        env={**os.environ, "JOBSYS_URL": vhost_settings.url, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert re.search(r"confirmed: job [0-9a-f-]{36}, due in 30s", result.stdout), result.stdout


def test_the_readme_example_module_is_an_app_a_worker_can_load(tmp_path: Path) -> None:
    (tmp_path / "readme_emails.py").write_text(_python_example(), encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        app = load_app("readme_emails:app")
    finally:
        sys.path.remove(str(tmp_path))
    assert app.job_types == ["send_email"]
    assert app.get("send_email").payload_model is not None
