"""RabbitMQ nodes owned by the tests, on their own ports, data dirs and Erlang cookie.

Node N is ``rabbitN@localhost`` with AMQP on ``5671+N`` and distribution on ``25671+N``
(N >= 2; N = 1 would be the shared broker's 5672). The node's scripts are called from
``/usr/lib/rabbitmq/bin`` directly: the ``/usr/sbin`` wrappers switch to the shared node's
user and cookie. A node's processes are found by the exact ``RABBITMQ_NODENAME`` in
``/proc/PID/environ``, never by a name pattern, so nothing here can touch the shared node.

A lock file per node name (``/tmp/jobsys-test-nodes/rabbitN.lock``) keeps two test sessions
on one machine from killing each other's node: only the holder of the lock may start, kill or
clean up ``rabbitN@localhost``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
LOCK_DIR = Path("/tmp/jobsys-test-nodes")
DEFAULT_WATERMARK = "0.4"
# Far below what an idle node uses, so the memory alarm goes off at once.
ALARM_WATERMARK = "0.000001"

# Nodes started by this process and not closed yet; killed at exit if a finalizer never ran.
_live_nodes: set[RabbitNode] = set()


class NodeError(RuntimeError):
    """A test node failed to start, stop or answer a command."""


class RabbitNode:
    """One RabbitMQ node for tests: ``rabbitN@localhost`` on port ``5671+N``.

    ``base_dir`` holds the node's data, logs and config, and a ``home`` directory with the
    Erlang cookie (nodes sharing a ``base_dir`` share the cookie, so they can cluster).
    """

    def __init__(self, n: int, base_dir: str | Path, *, extra_config: str = "") -> None:
        if not 2 <= n <= 99:
            raise ValueError("n must be between 2 and 99 (n=1 would be the shared broker)")
        self.n = n
        self.name = f"rabbit{n}@localhost"
        self.port = 5671 + n
        self.dist_port = 25671 + n
        self.base_dir = Path(base_dir)
        self.home = self.base_dir / "home"
        self.node_dir = self.base_dir / f"rabbit{n}"
        self.log_dir = self.node_dir / "log"
        self.extra_config = extra_config
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        self._frozen = False

    # -- addresses -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/``."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log_file(self) -> Path:
        """The node's own log file."""
        return self.log_dir / f"{self.name}.log"

    def __repr__(self) -> str:
        return f"RabbitNode({self.name}, port={self.port})"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout_s: float = 90.0) -> RabbitNode:
        """Start the node (a no-op if it is running) and wait until it accepts AMQP."""
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def launch(self) -> None:
        """Start the node's process without waiting for it to boot (see ``wait_ready``)."""
        if self._lock_file is not None and self.is_running():
            return  # started by this object; a node we do not hold the lock for is a leftover
        self._acquire_lock()
        leftovers = self.pids()
        self._kill_pids(leftovers)  # leftovers of a crashed run, or a frozen node
        self._reap()
        # A killed node's main thread turns zombie before its other threads have exited, and
        # its listening socket closes only with the last of them: on a loaded machine the port
        # stays open for a moment after ``_kill_pids`` returned (seen once in CI).
        deadline = time.monotonic() + (10.0 if leftovers else 0.0)
        while _port_open(self.port):
            if time.monotonic() >= deadline:
                raise NodeError(
                    f"port {self.port} for {self.name} is taken by a process that is not ours"
                )
            time.sleep(0.1)
        self._write_files()
        stdout = open(self.log_dir / "stdout.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self._proc = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self._server_env(),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=self.node_dir,
                start_new_session=True,
            )
        finally:
            stdout.close()
        self._frozen = False
        _live_nodes.add(self)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until the node answers an AMQP protocol header; raise with its log if not."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise NodeError(
                    f"{self.name} exited with status {self._proc.returncode} while starting"
                    f"\n{self.log_tail()}"
                )
            if _amqp_answers(self.port):
                return
            time.sleep(0.2)
        raise NodeError(f"{self.name} did not start within {timeout_s:.0f} s\n{self.log_tail()}")

    def ensure_running(self, timeout_s: float = 90.0) -> RabbitNode:
        """Thaw the node if frozen and start it if it is down."""
        if self._frozen:
            self.thaw()
        return self.start(timeout_s)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the node gracefully (``rabbitmqctl stop``); kill it if that fails."""
        if self._frozen:
            self.thaw()
        if self.pids():
            try:
                self.ctl("stop", str(self.node_dir / "rabbit.pid"), timeout_s=timeout_s)
            except NodeError:
                self.kill()
        self._wait_down(timeout_s)

    def kill(self, timeout_s: float = 30.0) -> None:
        """``kill -9`` the node's processes and wait until they are gone and the port is closed."""
        self._kill_pids(self.pids(), timeout_s)
        self._frozen = False
        self._wait_down(timeout_s)

    def restart(self, timeout_s: float = 90.0) -> RabbitNode:
        """Stop the node if it runs and start it again on the same data directory."""
        if self.is_running() or self._frozen:
            self.stop()
        return self.start(timeout_s)

    def close(self) -> None:
        """Stop the node (kill it if stopping fails) and release its name for other sessions."""
        try:
            if self.pids():
                self.stop(timeout_s=30.0)
        finally:
            if self.pids():
                self.kill()
            self._release_lock()
            _live_nodes.discard(self)

    def freeze(self) -> None:
        """``kill -STOP`` the node: it keeps its sockets open but answers nothing."""
        for pid in self.pids():
            _signal(pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """``kill -CONT`` a frozen node."""
        for pid in self.pids():
            _signal(pid, signal.SIGCONT)
        self._frozen = False

    def is_running(self) -> bool:
        """True when the node's process exists, is not frozen and its AMQP port is open."""
        return not self._frozen and bool(self.pids()) and _port_open(self.port)

    # -- commands --------------------------------------------------------------------------

    def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run ``rabbitmqctl -n NAME ARGS`` against this node and return its stdout."""
        return self._run_cli("rabbitmqctl", *args, timeout_s=timeout_s)

    def queues_cli(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run ``rabbitmq-queues -n NAME ARGS`` against this node and return its stdout."""
        return self._run_cli("rabbitmq-queues", *args, timeout_s=timeout_s)

    def set_memory_alarm(self, on: bool, timeout_s: float = 30.0) -> None:
        """Raise (or clear) the memory alarm; returns once the node reports the new state.

        While it is on the broker blocks every connection that publishes: confirms stop.
        """
        self.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK if on else DEFAULT_WATERMARK)
        deadline = time.monotonic() + timeout_s
        while self.memory_alarm() != on:
            if time.monotonic() > deadline:
                raise NodeError(f"memory alarm on {self.name} did not become {on}")
            time.sleep(0.2)

    def memory_alarm(self) -> bool:
        """True while the node has a memory alarm."""
        alarms = self.ctl("eval", "rabbit_alarm:get_alarms().")
        return "memory" in alarms

    # -- processes -------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """PIDs of this node's processes, matched exactly by ``RABBITMQ_NODENAME``."""
        return _pids_with_env(f"RABBITMQ_NODENAME={self.name}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the node's log and of its stdout, for error messages."""
        parts = []
        for path in (self.log_file, self.log_dir / "stdout.log"):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            parts.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts) or f"(no log in {self.log_dir})"

    def _kill_pids(self, pids: Iterable[int], timeout_s: float = 30.0) -> None:
        pids = list(pids)
        for pid in pids:
            _signal(pid, signal.SIGCONT)  # a stopped process dies only once continued
            _signal(pid, signal.SIGKILL)
        self._reap()
        deadline = time.monotonic() + timeout_s
        while any(_alive(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name} processes {pids} survived kill -9")
            time.sleep(0.05)
            self._reap()

    def _wait_down(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.pids() or _port_open(self.port):
            if time.monotonic() > deadline:
                raise NodeError(f"{self.name} still up {timeout_s:.0f} s after stop/kill")
            self._reap()
            time.sleep(0.05)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    # -- files and environment -------------------------------------------------------------

    def _write_files(self) -> None:
        for path in (self.home, self.node_dir, self.log_dir, self.node_dir / "mnesia"):
            path.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        config = "\n".join(
            ["# written by tests/harness/rabbit_node.py; ports come from the environment"]
            + ([self.extra_config] if self.extra_config else [])
        )
        (self.node_dir / "rabbitmq.conf").write_text(config + "\n")
        (self.node_dir / "advanced.config").write_text("[].\n")
        (self.node_dir / "enabled_plugins").write_text("[].\n")
        (self.node_dir / "rabbitmq-env.conf").write_text("")

    def _base_env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": str(self.node_dir / "rabbitmq-env.conf"),
        }

    def _server_env(self) -> dict[str, str]:
        d = self.node_dir
        return self._base_env() | {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
        }

    def _run_cli(self, tool: str, *args: str, timeout_s: float) -> str:
        # The CLI gets no RABBITMQ_NODENAME, so it never matches this node's process lookup.
        command = [str(RABBITMQ_BIN / tool), "-n", self.name, *args]
        try:
            done = subprocess.run(
                command,
                env=self._base_env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeError(f"{' '.join(command)} timed out after {timeout_s:.0f} s") from exc
        if done.returncode != 0:
            raise NodeError(
                f"{' '.join(command)} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    # -- the per-name lock -----------------------------------------------------------------

    def _acquire_lock(self, timeout_s: float = 120.0) -> None:
        if self._lock_file is not None:
            return
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        handle = open(LOCK_DIR / f"rabbit{self.n}.lock", "a+")  # noqa: SIM115 - held open
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "unknown"
                    handle.close()
                    where = (
                        "another RabbitNode in this process (use the own_broker fixture)"
                        if holder == str(os.getpid())
                        else f"another test session (pid {holder})"
                    )
                    raise NodeError(f"{self.name} is in use by {where}") from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _release_lock(self) -> None:
        handle, self._lock_file = self._lock_file, None
        if handle is not None:
            handle.close()  # closing drops the flock


class RabbitCluster:
    """Nodes ``ns`` joined into one cluster, the first node being the one the others join."""

    def __init__(self, ns: Iterable[int], base_dir: str | Path) -> None:
        self.nodes = {n: RabbitNode(n, base_dir) for n in ns}
        if len(self.nodes) < 2:
            raise ValueError("a cluster needs at least two nodes")
        self.seed = next(iter(self.nodes.values()))

    def __iter__(self) -> Iterator[RabbitNode]:
        return iter(self.nodes.values())

    def __getitem__(self, n: int) -> RabbitNode:
        return self.nodes[n]

    @property
    def urls(self) -> list[str]:
        """One AMQP URL per node, in node order."""
        return [node.url for node in self]

    def start(self, timeout_s: float = 120.0) -> RabbitCluster:
        """Start every node (in parallel) and join the others to the first."""
        for node in self:
            node.launch()
        for node in self:
            node.wait_ready(timeout_s)
        for node in self:
            if node is self.seed or self.seed.name in self.running_nodes(node):
                continue
            node.ctl("stop_app")
            node.ctl("join_cluster", self.seed.name)
            node.ctl("start_app")
            node.wait_ready(timeout_s)
        return self

    def running_nodes(self, node: RabbitNode | None = None) -> list[str]:
        """The cluster's running nodes as ``node`` (default: the first) sees them."""
        status = json.loads((node or self.seed).ctl("cluster_status", "--formatter", "json"))
        return list(status.get("running_nodes", []))

    def kill(self, n: int) -> None:
        """``kill -9`` node ``n``."""
        self.nodes[n].kill()

    def restart(self, n: int, timeout_s: float = 120.0) -> None:
        """Start node ``n`` again (it rejoins the cluster from its data directory)."""
        self.nodes[n].restart(timeout_s)

    def quorum_leader(self, queue: str, vhost: str = "/") -> str:
        """The node name leading quorum queue ``queue``, asked of any running node."""
        errors = []
        for node in self:
            if not node.is_running():
                continue
            try:
                rows = json.loads(
                    node.ctl(
                        "list_queues",
                        "-p",
                        vhost,
                        "name",
                        "leader",
                        "--formatter",
                        "json",
                        "--quiet",
                    )
                )
            except (NodeError, ValueError) as exc:
                errors.append(str(exc))
                continue
            for row in rows:
                if row.get("name") == queue and row.get("leader"):
                    return str(row["leader"])
            errors.append(f"{node.name} lists no leader for {queue!r}")
        raise NodeError(f"no leader found for quorum queue {queue!r}: {'; '.join(errors)}")

    def close(self) -> None:
        """Stop every node (in parallel); keep going when one fails."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            futures = [pool.submit(node.close) for node in self]
        errors = [exc for future in futures if (exc := future.exception()) is not None]
        if errors:
            raise errors[0]


def _pids_with_env(entry: str) -> list[int]:
    needle = entry.encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            # epmd may have been started by one of our nodes but serves every node.
            if (proc / "comm").read_text().strip() == "epmd":
                continue
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _amqp_answers(port: int) -> bool:
    """True when the broker answers the AMQP 0-9-1 header with a method frame."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.settimeout(2.0)
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


def cleanup_all_nodes() -> None:
    """Kill every node this process started and has not closed (used at exit)."""
    for node in list(_live_nodes):
        with contextlib.suppress(Exception):
            if node.pids():
                node.kill(timeout_s=10.0)
        node._release_lock()


atexit.register(cleanup_all_nodes)
