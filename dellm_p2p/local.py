"""Start ``dellm-node`` daemons as child processes on this machine.

Used by scripts, benchmarks and tests to run several nodes side by side on
127.0.0.1, each in its own process as on separate hosts.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable

_READY = re.compile(r"serving (?P<model>.+?) at (?P<url>wss?://\S+)")
_HTTP = re.compile(r"^http API at (?P<url>https?://\S+)/v1$")


class NodeStartError(RuntimeError):
    """The node exited or did not get ready in time; ``str`` ends with its last stderr lines."""


class NodeProcess:
    """A ``dellm-node`` child process.

    Args:
        args: extra ``dellm-node`` arguments (``--port 0`` and ``--host
            127.0.0.1`` are added unless given).
        env: extra environment variables.

    Attributes:
        url: the node's ``ws://`` URL once :meth:`wait_ready` returned.
        model: the model it serves ("no model" for ``--no-model``).
        node_id: the node id from its ready line.
        http_url: ``http://host:port`` of its HTTP API (``--http-port``), once ready.
    """

    def __init__(self, args: list[str] | None = None, env: dict[str, str] | None = None):
        args = list(args or [])
        if "--port" not in args:
            args += ["--port", "0"]
        if "--host" not in args:
            args += ["--host", "127.0.0.1"]
        self.args = args
        self.extra_env = dict(env or {})  # to restart it the same way
        self.url = ""
        self.model = ""
        self.node_id = ""
        self.http_url = ""
        self._stderr_file = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dellm_p2p.cli.node", *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,  # a Ctrl-C in the parent's terminal is the parent's to handle
        )
        self._lines: deque[str] = deque()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line.rstrip("\n"))

    @property
    def stdout_lines(self) -> list[str]:
        """Lines the node printed on stdout so far."""
        return list(self._lines)

    def stderr_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the node's stderr."""
        self._stderr_file.flush()
        self._stderr_file.seek(0)
        return "\n".join(self._stderr_file.read().splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = 300.0) -> str:
        """Block until the node prints its URL; returns it.

        Raises:
            NodeStartError: the node exited, or ``timeout_s`` [s] passed.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self._lines):
                match = _READY.search(line)
                if match and "--http-port" in self.args and not self._http_line():
                    break  # its "http API at" line follows at once
                if match:
                    self.url, self.model = match["url"], match["model"]
                    self.node_id = line.split("(", 1)[1].split(")", 1)[0] if "(" in line else ""
                    return self.url
            if self.proc.poll() is not None:
                raise NodeStartError(f"dellm-node exited with {self.proc.returncode}:\n{self.stderr_tail()}")
            time.sleep(0.1)
        self.kill()
        raise NodeStartError(f"dellm-node was not ready within {timeout_s:g} s:\n{self.stderr_tail()}")

    def _http_line(self) -> bool:
        """Sets :attr:`http_url` from the node's ``http API at`` line; False until it printed one."""
        for line in list(self._lines):
            if match := _HTTP.match(line):
                self.http_url = match["url"]
                return True
        return False

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait up to ``timeout_s`` [s] (then SIGKILL); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the node's whole process group (its vLLM engine processes too)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def stop_all(nodes: Iterable[NodeProcess], timeout_s: float = 60.0) -> list[int | None]:
    """SIGTERM every node at once (a second SIGTERM would cancel in-flight work), wait, SIGKILL stragglers.

    ``timeout_s`` [s] is one deadline shared by all. Returns each node's exit
    code, ``None`` for one that had to be killed.
    """
    nodes = list(nodes)
    for node in nodes:
        if node.proc.poll() is None:
            try:
                node.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    codes: list[int | None] = []
    for node in nodes:
        try:
            codes.append(node.proc.wait(max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            node.kill()
            codes.append(None)
    return codes
