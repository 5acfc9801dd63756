"""``jobsys worker`` in a subprocess, as an operator starts it, for tests that signal, kill or
watch a real worker process; and the polling helper those tests wait with."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

_REPO_ROOT = str(Path(__file__).resolve().parents[2])


async def wait_until(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) until it is truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")
        await asyncio.sleep(0.05)


class WorkerSubprocess:
    """``python -m jobsys [-v] worker APP --topology FILE ARGS...`` with stderr in a file the
    test can poll; stdout is discarded."""

    #: How long ``wait_for_output`` waits by default.
    output_timeout_s = 20.0

    def __init__(
        self,
        app_target: str,
        topology_path: Path,
        stderr_path: Path,
        env: Mapping[str, str],
        args: Sequence[str],
        *,
        verbose: bool = True,
    ) -> None:
        self.stderr_path = stderr_path
        command = [
            sys.executable,
            "-m",
            "jobsys",
            *(["-v"] if verbose else []),
            "worker",
            app_target,
            "--topology",
            str(topology_path),
            *args,
        ]
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env={**os.environ, **env},
                cwd=_REPO_ROOT,
            )

    @property
    def stderr(self) -> str:
        """Everything the worker wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    async def wait_for_output(self, text: str, timeout_s: float | None = None) -> None:
        """Wait until ``text`` appears on stderr (fails early if the worker exits)."""

        def seen() -> bool:
            if text in self.stderr:
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.stderr}")
            return False

        await wait_until(seen, timeout_s or self.output_timeout_s, what=repr(text))

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        """The exit code, waiting at most ``timeout_s``."""
        await wait_until(lambda: self.proc.poll() is not None, timeout_s, what="worker exit")
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker."""
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """Stop the worker if it still runs (test cleanup)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
