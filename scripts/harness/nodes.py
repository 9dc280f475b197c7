"""Real nodes for benchmarks: start ``dellm-node`` processes on 127.0.0.1, wait until they are ready, stop them.

Nodes started here are named ``soak-a``, ``soak-b``, …, each with its own
state folder and CPU core, mDNS off, every node bootstrapping from the
others (and from any ``--peer`` given). Their memory is read by
:mod:`harness.memory`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def listening_pid(url: str) -> int | None:
    """The pid listening on a local ``ws://127.0.0.1:PORT`` URL, if this machine has it (else ``None``)."""
    import psutil

    match = re.match(r"wss?://(127\.0\.0\.1|localhost|\[::1\]):(\d+)", url)
    if not match:
        return None
    port = int(match[2])
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    return None


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports on 127.0.0.1 that were free a moment ago (bound once, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class NodeSlot:
    """A node the script knows: started here (``process`` set, may be killed) or given with ``--peer``."""

    name: str
    url: str
    process: Any = None  # dellm_p2p.local.NodeProcess
    node_id: str = ""
    rss_start: int | None = None
    rss_end: int | None = None
    rss_series: list[tuple[float, int | None]] = field(default_factory=list)  # (s into the run, bytes) per tick
    restarted: bool = False
    variant: str = ""  # the extra environment it was started with (--node-env)
    memory: Any = None  # harness.memory.MemorySeries when --sample-every is on

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.proc.pid if self.process.proc.poll() is None else None
        return listening_pid(self.url)


def node_envs(specs: list[str], count: int) -> list[dict[str, str]]:
    """Per started node, the extra environment of ``--node-env`` specs.

    ``KEY=VALUE`` applies to every node started here; ``L:KEY=VALUE`` only to node
    ``soak-L`` (``a`` is the first). Raises ``ValueError`` on a malformed spec."""
    envs: list[dict[str, str]] = [{} for _ in range(count)]
    for spec in specs:
        target, sep, assignment = spec.partition(":")
        if not sep or "=" in target:
            target, assignment = "", spec
        key, eq, value = assignment.partition("=")
        if not eq or not key:
            raise ValueError(f"--node-env {spec!r}: expected KEY=VALUE or L:KEY=VALUE")
        if target:
            index = ord(target.lower()) - ord("a") if len(target) == 1 else -1
            if not 0 <= index < count:
                raise ValueError(f"--node-env {spec!r}: no node soak-{target} among {count} started")
            envs[index][key] = value
        else:
            for env in envs:
                env[key] = value
    return envs


def start_nodes(
    count: int, peers: list[str], state_root: Path, max_concurrency: int, envs: list[dict[str, str]] | None = None
) -> list[NodeSlot]:
    """Spawn ``count`` nodes (not waiting for them); each bootstraps from ``peers`` and the others.

    ``envs[i]`` is node i's extra environment (see :func:`node_envs`)."""
    from dellm_p2p.local import NodeProcess

    ports = free_ports(count)
    urls = [f"ws://127.0.0.1:{p}" for p in ports]
    cores = os.cpu_count() or 1
    slots = []
    for i, port in enumerate(ports):
        name = f"soak-{chr(ord('a') + i)}"
        args = [
            "--name", name,
            "--state-dir", str(state_root / name),
            "--cpu-bind", str(i % cores),
            "--max-concurrency", str(max_concurrency),
            "--port", str(port),
            "--no-mdns",
        ]  # fmt: skip
        for other in [*peers, *urls]:
            if other != urls[i]:
                args += ["--peer", other]
        env = envs[i] if envs else {}
        variant = ", ".join(f"{k}={v}" for k, v in env.items())
        slots.append(NodeSlot(name, urls[i], NodeProcess(args, env=env), variant=variant))
    return slots


def stop_nodes(slots: list[NodeSlot], timeout_s: float = 60.0) -> None:
    """Stop every node this script started (:func:`dellm_p2p.local.stop_all`)."""
    from dellm_p2p.local import stop_all

    stop_all([s.process for s in slots if s.process is not None], timeout_s)


def wait_ready(slots: list[NodeSlot], timeout_s: float, on_ready: Callable[[NodeSlot], None] | None = None) -> None:
    """Wait until every started node of ``slots`` is ready, all within ``timeout_s`` [s] (each gets at least 1 s).

    ``on_ready`` is called with each node once it is ready.

    Raises:
        dellm_p2p.local.NodeStartError: a node exited, or did not get ready in time.
    """
    deadline = time.monotonic() + timeout_s
    for slot in slots:
        slot.process.wait_ready(max(1.0, deadline - time.monotonic()))
        if on_ready is not None:
            on_ready(slot)


@contextlib.contextmanager
def started_nodes(
    count: int,
    peers: list[str],
    *,
    prefix: str,
    max_concurrency: int,
    timeout_s: float,
    envs: list[dict[str, str]] | None = None,
    on_ready: Callable[[NodeSlot], None] | None = None,
) -> Iterator[list[NodeSlot]]:
    """``count`` nodes (see :func:`start_nodes`) in a fresh temporary state folder named ``prefix``…, ready.

    Yields them once all are ready (within ``timeout_s`` [s], see
    :func:`wait_ready`); on leaving, stops them and removes the folder,
    whatever happened.

    Raises:
        dellm_p2p.local.NodeStartError: a node exited, or did not get ready in time.
    """
    state = tempfile.TemporaryDirectory(prefix=prefix)
    slots: list[NodeSlot] = []
    try:
        slots = start_nodes(count, peers, Path(state.name), max_concurrency, envs)
        wait_ready(slots, timeout_s, on_ready)
        yield slots
    finally:
        stop_nodes(slots)
        state.cleanup()


def run_on_nodes(
    bench: Callable[[list[NodeSlot]], Coroutine[Any, Any, T]],
    count: int,
    peers: list[str],
    *,
    prefix: str,
    max_concurrency: int,
    timeout_s: float,
    progress: Callable[[str], None],
    envs: list[dict[str, str]] | None = None,
    on_ready: Callable[[NodeSlot], None] | None = None,
) -> tuple[int, T | None]:
    """Run ``bench(nodes)`` in an event loop over ``count`` freshly started nodes (:func:`started_nodes`).

    Returns ``(0, result)``; ``(130, None)`` when interrupted (Ctrl-C);
    ``(1, None)`` when a node did not start, said in one line through
    ``progress``. The nodes are stopped in every case.
    """
    from dellm_p2p.local import NodeStartError
    from dellm_p2p.runtime import run

    try:
        with started_nodes(
            count, peers, prefix=prefix, max_concurrency=max_concurrency, timeout_s=timeout_s, envs=envs,
            on_ready=on_ready,
        ) as nodes:  # fmt: skip
            return 0, run(bench(nodes))
    except KeyboardInterrupt:
        progress("interrupted")
        return 130, None
    except NodeStartError as exc:
        progress(f"a node did not start: {str(exc).splitlines()[0].rstrip(':')}")
        return 1, None
