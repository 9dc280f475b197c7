"""``dellm-node``: the daemon that serves a model to peers.

Prints progress to stderr while it converts and loads the model, then one
line on stdout with the ``ws://`` URL once the model is warm. SIGINT/SIGTERM
stop it cleanly (in-flight requests get the grace period); a second signal
stops at once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import click
from rich.console import Console

from ..config import ConfigError, NodeConfig, load_config
from ..engine import EngineError
from ..identity import IdentityError
from ..models import ModelError
from ..node import Node
from ..runtime import limit_malloc_arenas, run, setup_logging
from ..security import SecurityConfigError
from .options import peer_url

console = Console(stderr=True, highlight=False, soft_wrap=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config", "config_path", type=click.Path(exists=True, dir_okay=False), help="Node TOML file (see nodes/)."
)
@click.option(
    "--model",
    help="Embedded model (smollm2-135m, gemma3-270m), local HF model directory or cached model id. "
    "Default: the embedded smollm2-135m (SmolLM2-135M-Instruct).",
)
@click.option("--engine", type=click.Choice(["vllm", "openai", "none"]), help="Model backend (default vllm).")
@click.option("--no-model", is_flag=True, default=None, help="Serve no model (coordinator-only node).")
@click.option(
    "--openai-url",
    help="API root of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (implies --engine openai).",
)
@click.option("--openai-model", help="Model name on that server (default: the first it lists).")
@click.option("--host", help="Address to listen on (default 127.0.0.1; 0.0.0.0 serves the LAN).")
@click.option("--port", type=click.IntRange(0, 65535), help="Websocket port; 0 picks a free one (default 7070).")
@click.option("--name", help="Node name (default: host name).")
@click.option("--max-concurrency", type=click.IntRange(1, 4096), help="Requests served at once (default 32).")
@click.option("--max-model-len", type=click.IntRange(16), help="Context window in tokens (default 2048).")
@click.option("--kv-cache-gib", type=click.FloatRange(0, min_open=True), help="vLLM CPU KV cache in GiB (default 1).")
@click.option(
    "--cpu-bind",
    metavar="CORES",
    help="Cores for vLLM's CPU worker, e.g. 1 or 0-3, or auto (vLLM's choice). "
    "Default: cores no other dellm node here has claimed.",
)
@click.option(
    "--cpu-cores", type=click.IntRange(1, 4096), help="How many cores to claim without --cpu-bind (default 1)."
)
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where the node id is kept.")
@click.option(
    "--peer", "peers", multiple=True, metavar="URL", callback=peer_url,
    help="Bootstrap peer ws://host:port (repeatable).",
)  # fmt: skip
@click.option("--no-mdns", is_flag=True, default=None, help="Do not announce or browse on mDNS.")
@click.option(
    "--mdns-interface", "mdns_interfaces", multiple=True, metavar="IP", help="IPv4 address for mDNS (repeatable)."
)
@click.option("--advertise-url", metavar="URL", help="The ws:// URL peers should use to reach this node.")
@click.option(
    "--cluster-key-file",
    type=click.Path(dir_okay=False),
    help="Shared cluster secret (`dellm keygen` writes one): only peers with the same key get in.",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate: serve wss:// (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert.")
@click.option(
    "--tls-ca", type=click.Path(dir_okay=False), help="PEM CA bundle to verify wss:// peers (default: system CAs)."
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    help="Serve the OpenAI-compatible HTTP API on this port (0 picks a free one; default off).",
)
@click.option("--http-host", help="Address of the HTTP API (default 127.0.0.1).")
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="File with the key HTTP requests must send as 'Authorization: Bearer KEY'. Env: DELLM_API_KEY_FILE.",
)
@click.option(
    "--http-insecure", is_flag=True, default=None, help="Allow an HTTP API without a key on a non-loopback address."
)
@click.option("-v", "--verbose", count=True, help="-v: info logs, -vv: debug and vLLM logs.")
def main(config_path: str | None, no_model: bool | None, no_mdns: bool | None, verbose: int, **options) -> None:
    """Serve a language model to dellm peers over websockets."""
    limit_malloc_arenas()  # first: before any thread has an arena of its own
    setup_logging(verbose)
    if no_mdns:
        options["mdns"] = False
    for key in ("peers", "mdns_interfaces"):  # empty = not given: keep the file's value
        options[key] = list(options[key]) or None
    if no_model:
        options["engine"] = "none"
    elif options.get("openai_url") and not options.get("engine"):
        options["engine"] = "openai"
    options["openai_base_url"] = options.pop("openai_url")
    try:
        config = load_config(config_path, **options)
    except ConfigError as exc:
        console.print(f"dellm-node: error: {exc}")
        sys.exit(2)
    sys.exit(run(serve(config)))


async def serve(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    started = time.monotonic()
    node = Node(config, progress=lambda message: console.print(f"[dim]dellm-node:[/] {message}"))
    starting = asyncio.create_task(node.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await node.close(0)
        console.print("dellm-node: interrupted during start-up")
        return 130
    stopping.cancel()
    try:
        url = starting.result()
    except (ModelError, EngineError, OSError, SecurityConfigError, IdentityError) as exc:
        await node.close(0)
        console.print(f"dellm-node: error: {exc}")
        return 1

    model = node.engine.info.name if node.engine else "no model"
    print(f"dellm-node {config.name} ({node.node_id}) serving {model} at {url}", flush=True)
    if node.http_url:
        print(f"http API at {node.http_url}/v1", flush=True)
        print(f"dashboard at {node.http_url}/", flush=True)
    console.print(f"[dim]dellm-node:[/] ready in {time.monotonic() - started:.1f} s; Ctrl-C stops")
    failed = asyncio.create_task(node.engine_failure())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if failed.done():
        console.print(f"dellm-node: error: {failed.result()}; leaving the network (restart the node to serve again)")
        await node.close(0)
        return 1
    failed.cancel()
    console.print(f"[dim]dellm-node:[/] shutting down (in-flight requests get {config.grace_period_s:g} s)")
    closing = asyncio.create_task(node.close())
    forced = asyncio.create_task(force.wait())
    await asyncio.wait({closing, forced}, return_when=asyncio.FIRST_COMPLETED)
    if not closing.done():
        console.print("[dim]dellm-node:[/] second signal: cancelling in-flight requests")
        node.cancel_in_flight()
        await closing
    forced.cancel()
    return 0


if __name__ == "__main__":
    main()
