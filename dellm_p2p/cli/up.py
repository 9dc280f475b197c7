"""``dellm up`` / ``dellm down``: a local swarm of ``dellm-node`` processes in one command.

``dellm up --nodes 3`` starts three nodes on 127.0.0.1 (free ports, mDNS on
the loopback interface only, each with its own state directory and, by
default, its own CPU core), waits until each has printed its ready line,
prints their URLs and stays in the foreground: Ctrl-C or SIGTERM stops them
all. ``--detach`` returns once they are ready and leaves them running;
``dellm down`` stops them. ``--models smollm2-135m,gemma3-270m`` gives the
nodes different models (one each, cycling): a swarm whose votes compare models.

Everything lives in one swarm directory (``--dir``, default
``$XDG_STATE_HOME/dellm/local``): per node ``<name>/`` is its state
directory (key, fitness) and holds ``node.pid``, ``node.out`` (its stdout:
the ready line) and ``node.log`` (its stderr).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Console

from ..models import check_model_option, known_model_names

err = Console(stderr=True, highlight=False, soft_wrap=True)

_READY = re.compile(r"^dellm-node (?P<name>\S+) \((?P<id>\w+)\) serving (?P<model>.+?) at (?P<url>wss?://\S+)$")
_HTTP = re.compile(r"^http API at (?P<url>https?://\S+)$")
_NODE_MODULE = "dellm_p2p.cli.node"


def default_swarm_dir() -> Path:
    """``$XDG_STATE_HOME/dellm/local`` (``~/.local/state/dellm/local``)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(base) / "dellm" / "local"


@dataclass
class LocalNode:
    """One node of the local swarm: a ``dellm-node`` child process and its files.

    Attributes:
        name: node name (``local-1`` …), also its directory name.
        directory: its state directory, which also holds its pid, stdout and stderr files.
        proc: the child process (``None`` for a node found through its pid file).
        pid: its process id.
        url, model, http_url: from its ready lines, once ready.
    """

    name: str
    directory: Path
    proc: subprocess.Popen | None = None
    pid: int = 0
    url: str = ""
    model: str = ""
    http_url: str = ""
    _files: list = field(default_factory=list)

    @property
    def pid_file(self) -> Path:
        return self.directory / "node.pid"

    @property
    def out_file(self) -> Path:
        return self.directory / "node.out"

    @property
    def log_file(self) -> Path:
        return self.directory / "node.log"

    def start(self, args: list[str]) -> None:
        """Start the node with ``args`` (its own session: a Ctrl-C in our terminal is ours to handle)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        out, log = open(self.out_file, "w"), open(self.log_file, "w")  # closed in close_files
        self._files = [out, log]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", _NODE_MODULE, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.pid_file.write_text(f"{self.pid}\n")

    def close_files(self) -> None:
        for fh in self._files:
            fh.close()
        self._files = []

    def poll_ready(self, want_http: bool) -> bool:
        """Read the ready lines the node printed so far; whether it is ready (and its HTTP line, if wanted)."""
        try:
            lines = self.out_file.read_text().splitlines()
        except OSError:
            return False
        for line in lines:
            if match := _READY.match(line):
                self.url, self.model = match["url"], match["model"]
            elif match := _HTTP.match(line):
                self.http_url = match["url"]
        return bool(self.url) and (self.http_url != "" or not want_http)

    def alive(self) -> bool:
        """Whether the process still runs (and, found by pid file, is still a dellm node)."""
        if self.proc is not None:
            return self.proc.poll() is None
        return _is_dellm_node(self.pid)

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _is_dellm_node(pid: int) -> bool:
    """Whether ``pid`` is a running ``dellm-node`` (not a stale pid reused by another program)."""
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:  # no /proc (macOS): trust the pid file
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return any(_NODE_MODULE.encode() in part or part.endswith(b"dellm-node") for part in cmdline)


def running_nodes(swarm_dir: Path) -> list[LocalNode]:
    """Nodes of the swarm in ``swarm_dir`` whose pid file names a running ``dellm-node``."""
    nodes = []
    for pid_file in sorted(swarm_dir.glob("*/node.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        node = LocalNode(pid_file.parent.name, pid_file.parent, pid=pid)
        if node.alive():
            nodes.append(node)
    return nodes


def stop_nodes(nodes: list[LocalNode], timeout_s: float) -> list[tuple[LocalNode, str]]:
    """SIGTERM every node at once, wait up to ``timeout_s`` [s] in all, then SIGKILL the stragglers' process groups.

    Returns each node with how it ended: ``"stopped"`` or ``"killed"``.
    Removes the pid files.
    """
    for node in nodes:
        if node.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    results = []
    for node in nodes:
        while node.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        how = "stopped"
        if node.alive():
            how = "killed"
            # The group holds the node's vLLM engine processes too (the node runs in its own session).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.pid, signal.SIGKILL)
        if node.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(10)
            node.close_files()
        with contextlib.suppress(OSError):
            node.pid_file.unlink()
        results.append((node, how))
    return results


def _node_help() -> str:
    return subprocess.run(
        [sys.executable, "-m", _NODE_MODULE, "--help"], capture_output=True, text=True, timeout=60
    ).stdout


@click.command()
@click.option("--nodes", "-n", "count", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option(
    "--model",
    callback=lambda ctx, param, value: _model_option(value),
    help="Model for every node: smollm2-135m (default), gemma3-270m, a model directory or a cached HF id.",
)
@click.option(
    "--models",
    metavar="M1,M2,...",
    callback=lambda ctx, param, value: _models_option(value),
    help="One model per node, cycling: --models smollm2-135m,gemma3-270m gives a mixed swarm.",
)
@click.option("--no-model", is_flag=True, help="Coordinator-only nodes (no model; for trying the network).")
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    help="Serve the OpenAI-compatible HTTP API: node 1 on this port, node 2 on the next, … (0: free ports).",
)
@click.option("--detach", "-d", is_flag=True, help="Return once the nodes are ready and leave them running.")
@click.option(
    "--dir",
    "swarm_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Swarm directory: node state, pid files, logs (default $XDG_STATE_HOME/dellm/local).",
)
@click.option("--name", "prefix", default="local", show_default=True, help="Node names are PREFIX-1 … PREFIX-N.")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds to wait for every node to be ready.",
)
@click.option("--cluster-key-file", type=click.Path(exists=True, dir_okay=False), help="Cluster key for every node.")
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False),
    help="API key every node's HTTP API requires (with --http-port; `dellm keygen` writes one).",
)
def up(
    count: int,
    model: str | None,
    models: list[str] | None,
    no_model: bool,
    http_port: int | None,
    detach: bool,
    swarm_dir: Path | None,
    prefix: str,
    timeout: float,
    cluster_key_file: str | None,
    api_key_file: str | None,
) -> None:
    """Start a local swarm of N nodes on 127.0.0.1 and wait until all are ready.

    Each node gets a free port, mDNS on 127.0.0.1 only, its own state
    directory and its own CPU core. In the foreground Ctrl-C stops them all;
    with --detach they keep running and `dellm down` stops them.
    """
    if sum(bool(x) for x in (model, models, no_model)) > 1:
        _fail("give one of --model, --models and --no-model", 2)
    per_node = models or ([model] if model else [None])
    root = (swarm_dir or default_swarm_dir()).expanduser()
    if running := running_nodes(root):
        names = ", ".join(n.name for n in running)
        _fail(f"a local swarm is already running in {root} ({names}); `dellm down` stops it", 1)
    if api_key_file and http_port is None:
        _fail("--api-key-file protects the HTTP API: give --http-port too", 2)
    if http_port is not None and "--http-port" not in _node_help():
        _fail("this dellm-node has no HTTP server (--http-port)", 2)

    nodes = [LocalNode(f"{prefix}-{i}", root / f"{prefix}-{i}") for i in range(1, count + 1)]
    interrupted = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        err.print(f"[dim]dellm up:[/] starting {count} node(s) in {root}")
        for i, node in enumerate(nodes):
            args = ["--name", node.name, "--host", "127.0.0.1", "--port", "0", "--state-dir", str(node.directory),
                    "--mdns-interface", "127.0.0.1"]  # fmt: skip
            if no_model:
                args.append("--no-model")
            elif node_model := per_node[i % len(per_node)]:
                args += ["--model", node_model]
            if http_port is not None:
                args += ["--http-port", str(http_port + i if http_port else 0)]
            if cluster_key_file:
                args += ["--cluster-key-file", cluster_key_file]
            if api_key_file:
                args += ["--api-key-file", api_key_file]
            node.start(args)
        failed = _wait_ready(nodes, http_port is not None, timeout, lambda: interrupted)
        if interrupted or failed:
            err.print("[dim]dellm up:[/] stopping the nodes")
            stop_nodes(nodes, 60.0)
            sys.exit(130 if interrupted and not failed else 1)
        _print_ready(nodes, root, detach)
        if detach:
            for node in nodes:  # they are on their own now; their files stay open in them
                node.close_files()
            return
        while not interrupted:
            for node in nodes:
                code = node.exit_code()
                if code is not None and node.pid_file.exists():
                    err.print(f"dellm up: {node.name} exited with code {code}; its log: {node.log_file}")
                    node.pid_file.unlink(missing_ok=True)
            if not any(n.alive() for n in nodes):
                sys.exit(1)
            time.sleep(0.2)
        err.print("[dim]dellm up:[/] stopping the nodes (in-flight requests get their grace period)")
        results = stop_nodes(nodes, 60.0)
        killed = [n.name for n, how in results if how == "killed"]
        if killed:
            err.print(f"dellm up: killed {', '.join(killed)} after 60 s")
        sys.exit(0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_ready(nodes: list[LocalNode], want_http: bool, timeout_s: float, interrupted) -> bool:
    """Poll until every node is ready; ``True`` when one failed or the time ran out (reported on stderr)."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    while pending and not interrupted():
        for node in list(pending):
            if node.poll_ready(want_http):
                pending.remove(node)
                err.print(f"[dim]dellm up:[/] {node.name} ready at {node.url}")
            elif not node.alive():
                err.print(f"dellm up: {node.name} exited with code {node.exit_code()} while starting:")
                err.print(node.log_tail(), markup=False)
                return True
        if time.monotonic() > deadline:
            err.print(f"dellm up: {', '.join(n.name for n in pending)} not ready within {timeout_s:g} s")
            return True
        time.sleep(0.2)
    return False


def _print_ready(nodes: list[LocalNode], root: Path, detach: bool) -> None:
    for node in nodes:
        http = f"  {node.http_url}" if node.http_url else ""
        click.echo(f"{node.name}  {node.url}  {node.model}{http}")
    err.print(
        '[dim]dellm up:[/] ask with: dellm ask --mdns-interface 127.0.0.1 "your question"; '
        f"logs in {root}/<name>/node.log"
    )
    if detach:
        err.print(f"[dim]dellm up:[/] running in the background; `dellm down{_dir_arg(root)}` stops them")
    else:
        err.print("[dim]dellm up:[/] Ctrl-C stops them")


def _dir_arg(root: Path) -> str:
    return "" if root == default_swarm_dir() else f" --dir {root}"


def _model_option(value: str | None) -> str | None:
    """``--model``: an embedded model's name, a directory or a cached HF id; else exit 2 naming the known ones."""
    if value is None:
        return None
    try:
        return check_model_option(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _models_option(value: str | None) -> list[str] | None:
    """``--models a,b``: each as ``--model``; ``None`` when not given."""
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names:
        raise click.BadParameter(f"name at least one model ({known_model_names()})")
    return [str(_model_option(name)) for name in names]


def _fail(message: str, code: int) -> None:
    err.print(f"dellm: error: {message}", markup=False)
    sys.exit(code)


@click.command()
@click.option(
    "--dir",
    "swarm_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Swarm directory given to `dellm up` (default $XDG_STATE_HOME/dellm/local).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds the nodes get to stop before they are killed.",
)
def down(swarm_dir: Path | None, timeout: float) -> None:
    """Stop the local swarm that `dellm up --detach` started (SIGTERM, then SIGKILL after --timeout)."""
    root = (swarm_dir or default_swarm_dir()).expanduser()
    nodes = running_nodes(root)
    if not nodes:
        for stale in root.glob("*/node.pid"):  # a node that died: nothing to stop, but no stale pid file either
            stale.unlink(missing_ok=True)
        err.print(f"dellm down: no local swarm running in {root}")
        return
    err.print(f"[dim]dellm down:[/] stopping {len(nodes)} node(s)")
    for node, how in stop_nodes(nodes, timeout):
        click.echo(f"{node.name} (pid {node.pid}) {how}")
