"""The node: ties engine and server together (discovery joins in later layers).

Use it from Python as ``async with Node(config) as node: ...`` or run the
``dellm-node`` daemon (:mod:`dellm_p2p.cli.node`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from .config import NodeConfig
from .engine import Engine
from .server import NodeServer

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]


def load_node_id(state_dir: Path) -> str:
    """Return the node id stored in ``state_dir/node_id``, creating it once.

    Ids are 16 lowercase hex characters and stable across restarts.
    """
    path = state_dir / "node_id"
    try:
        node_id = path.read_text().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    node_id = uuid.uuid4().hex[:16]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
    return node_id


def build_engine(config: NodeConfig, progress: ProgressCallback) -> Engine | None:
    """Create (not start) the engine that ``config`` asks for; ``None`` for ``engine = "none"``."""
    if config.engine == "none":
        return None
    if config.engine == "openai":
        from .engine.openai_engine import OpenAICompatEngine

        return OpenAICompatEngine(
            config.openai_base_url or "",
            model=config.openai_model,
            api_key=os.environ.get(config.openai_api_key_env),
            max_model_len=config.max_model_len,
        )
    from .engine.vllm_engine import VllmEngine
    from .models import resolve_model

    if config.model is None:
        progress("preparing the embedded default model (first run converts it, about 30 s)")
    resolved = resolve_model(config.model)
    return VllmEngine(
        resolved.path,
        name=resolved.name,
        dtype=config.dtype or _default_dtype(),
        max_model_len=config.max_model_len,
        kv_cache_gib=config.kv_cache_gib,
        engine_kwargs=config.vllm_args,
    )


def _default_dtype() -> str:
    # The default model degenerates in bfloat16 on CPU (shared/notes/vllm-cpu.md).
    try:
        import torch

        return "auto" if torch.cuda.is_available() else "float32"
    except ImportError:
        return "float32"


class Node:
    """A dellm node: an engine served to peers over the wire protocol.

    Args:
        config: the node's configuration.
        progress: called with one-line status messages while starting.

    Attributes:
        url: the ``ws://`` URL once started.
        node_id: the persistent node id.
    """

    def __init__(self, config: NodeConfig, progress: ProgressCallback | None = None):
        self.config = config
        self.progress = progress or (lambda message: log.info("%s", message))
        self.node_id = ""
        self.url = ""
        self.engine: Engine | None = None
        self.server: NodeServer | None = None
        self._closing_server: NodeServer | None = None

    async def start(self) -> str:
        """Load and warm up the model, then listen. Returns the ``ws://`` URL.

        Raises:
            dellm_p2p.models.ModelError: the model cannot be found or converted.
            dellm_p2p.engine.EngineError: the engine failed to start.
            OSError: the port cannot be bound.
        """
        config = self.config
        self.node_id = await asyncio.to_thread(load_node_id, config.resolved_state_dir)
        # Conversion of the default model is CPU-bound: keep it off the loop.
        self.engine = await asyncio.to_thread(build_engine, config, self.progress)
        if self.engine is not None:
            self.progress(f"loading the model into {config.engine} and warming it up")
            await self.engine.start()
        self.server = NodeServer(
            self.engine,
            node_id=self.node_id,
            name=config.name,
            max_concurrency=config.max_concurrency,
            max_frame_bytes=config.max_frame_bytes,
            request_timeout_s=config.request_timeout_s,
        )
        self.url = await self.server.start(config.host, config.port)
        return self.url

    def cancel_in_flight(self) -> None:
        """Cancel every request being served (a running :meth:`close` then finishes at once)."""
        server = self.server or self._closing_server
        if server is not None:
            server.cancel_in_flight()

    async def close(self, grace_s: float | None = None) -> None:
        """Stop accepting, give in-flight work ``grace_s`` [s], release the engine. Idempotent."""
        grace = self.config.grace_period_s if grace_s is None else grace_s
        server, self.server = self.server, None
        if server is not None:
            self._closing_server = server
            await server.shutdown(grace)
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.close()

    async def __aenter__(self) -> Node:
        try:
            await self.start()
        except BaseException:
            await self.close(0)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
