"""The node: ties engine and server together (discovery joins in later layers).

Use it from Python as ``async with Node(config) as node: ...`` or run the
``dellm-node`` daemon (:mod:`dellm_p2p.cli.node`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .client import PeerClient
from .config import NodeConfig
from .cores import CoreClaim, CoreClaimError, claim_cores, parse_cpu_list
from .discovery import MdnsDiscovery
from .engine import Engine
from .engine.vllm_engine import vllm_on_cpu
from .identity import Identity, load_identity
from .learn.records import RecordStore
from .learn.share import AdapterShelf
from .membership import FitnessBook, Membership, SwimMembership, membership_for
from .peer_table import PeerRecord, PeerState, PeerTable
from .pool import PeerPool
from .security import client_ssl_context, load_cluster_key, server_ssl_context
from .server import NodeServer

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]


def load_node_id(state_dir: Path) -> str:
    """The node id derived from the key in ``state_dir`` (created once; see :func:`dellm_p2p.identity.load_identity`).

    Ids are 17 characters (``n`` + 16 base32) and stable across restarts.
    """
    return load_identity(state_dir).node_id


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
    from .models import cache_dir, needs_conversion, resolve_model

    if needs_conversion(config.model):
        progress(f"converting the embedded model once into {cache_dir() / 'models'} (30 s to a few minutes)")
    resolved = resolve_model(config.model)
    adapter = served_adapter(config, resolved.path, resolved.name, progress) if config.learn_serve else None
    return VllmEngine(
        resolved.path,
        name=resolved.name,
        dtype=config.dtype or _default_dtype(),
        max_model_len=config.max_model_len,
        kv_cache_gib=config.kv_cache_gib,
        cpu_bind=config.cpu_bind,
        engine_kwargs=config.vllm_args,
        engine_env=config.engine_env,
        cpu=_vllm_on_cpu(),
        **adapter,
    )


def served_adapter(config: NodeConfig, model_dir: str, model_name: str, progress: ProgressCallback) -> dict:
    """``VllmEngine`` arguments for the adapter adopted for this model (issue 23), or ``{}``.

    Only an adapter whose base model hash is this model's is served; a
    missing, damaged or mismatched one is skipped with a log line (the node
    serves the base model).
    """
    from .learn.adapters import AdapterError, adopted, model_hash

    state = config.resolved_state_dir
    try:
        found = adopted(state, model_name)
        if found is None:
            return {}
        directory, meta = found
        if Path(model_dir).is_dir() and model_hash(Path(model_dir)) != meta.base_hash:
            log.warning("adapter %s was trained on another %s (base hash differs); not served", meta.id, model_name)
            return {}
    except (AdapterError, OSError) as exc:
        log.warning("not serving the adopted adapter: %s", exc)
        return {}
    progress(f"serving adapter {meta.id} on {model_name} (trained on {meta.examples} consensus records)")
    return {"adapter": str(directory), "adapter_id": meta.id, "adapter_rank": meta.rank}


def _advertised_url(listen_url: str, port: int) -> str:
    """The URL peers should dial: the listen URL, or the first LAN address for a wildcard host."""
    scheme, rest = listen_url.split("://", 1)
    host = rest.rsplit(":", 1)[0]
    if host not in ("0.0.0.0", "::", "[::]"):
        return listen_url
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return f"{scheme}://{ip.ip}:{port}"
    return f"{scheme}://127.0.0.1:{port}"


def _default_dtype() -> str:
    # The default model degenerates in bfloat16 on CPU (shared/notes/vllm-cpu.md).
    return "float32" if _vllm_on_cpu() else "auto"


_vllm_on_cpu = vllm_on_cpu  # a module global, so tests can pretend either way


def claim_cpu_cores(config: NodeConfig) -> CoreClaim | None:
    """Claim cores for a CPU vLLM engine; ``None`` when there is nothing to claim.

    Without ``config.cpu_bind``: ``config.cpu_cores`` cores no other node
    holds. With an explicit core list: those cores (so nodes that pick
    their own avoid them); ``auto`` or ``nobind`` claims nothing. A claim
    that fails (unwritable runtime directory) is logged and leaves vLLM's
    default binding: a node should still start.
    """
    if config.engine != "vllm" or not _vllm_on_cpu():
        return None
    try:
        if config.cpu_bind is None:
            return claim_cores(config.cpu_cores)
        given = parse_cpu_list(config.cpu_bind)
        return claim_cores(len(given), available=given) if given else None
    except CoreClaimError as exc:
        log.warning("%s; vLLM binds its default cores (set --cpu-bind)", exc)
        return None


class Node:
    """A dellm node: an engine served to peers over the wire protocol.

    Args:
        config: the node's configuration.
        progress: called with one-line status messages while starting.

    Attributes:
        url: the ``ws://`` URL once started.
        node_id: the persistent node id, derived from :attr:`identity`.
        identity: the node's Ed25519 key pair, kept in its state directory.
    """

    def __init__(self, config: NodeConfig, progress: ProgressCallback | None = None):
        self.config = config
        self.progress = progress or (lambda message: log.info("%s", message))
        self.node_id = ""
        self.identity: Identity | None = None
        self.url = ""
        self.engine: Engine | None = None
        self.server: NodeServer | None = None
        self._closing_server: NodeServer | None = None
        self.table: PeerTable | None = None
        self.membership: Membership | SwimMembership | None = None
        self.mdns: MdnsDiscovery | None = None
        self.fitness: FitnessBook | None = None
        self._saver: asyncio.Task | None = None
        self._cluster_key: bytes | None = None
        self._client_ssl = None
        self._api_key: str | None = None
        self.http = None  # dellm_p2p.http.server.HttpServer once the API listens
        self.gateway = None  # dellm_p2p.http.gateway.Gateway behind it
        self.http_url = ""  # http://host:port of the API once it listens
        self.cores: CoreClaim | None = None
        # The consensus this node's questions reach (issue 23), unless learn_records is off.
        self.records = (
            RecordStore(config.resolved_state_dir / "learn", config.learn_max_records) if config.learn_records else None
        )

    async def start(self) -> str:
        """Load and warm up the model, then listen. Returns the ``ws://`` URL.

        Raises:
            dellm_p2p.models.ModelError: the model cannot be found or converted.
            dellm_p2p.engine.EngineError: the engine failed to start.
            dellm_p2p.security.SecurityConfigError: the cluster key or a TLS
                file cannot be used (checked first, before the model loads).
            dellm_p2p.identity.IdentityError: the node key file cannot be used.
            OSError: the port cannot be bound or the state directory written.
        """
        config = self.config
        if config.cluster_key_file is not None:
            self._cluster_key = load_cluster_key(config.cluster_key_file)
        if config.http_port is not None and config.api_key_file is not None:
            from .http.server import load_api_key

            self._api_key = load_api_key(config.api_key_file)
        server_ssl = server_ssl_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
        self._client_ssl = client_ssl_context(config.tls_ca) if config.tls_ca is not None else None
        self.identity = await asyncio.to_thread(load_identity, config.resolved_state_dir)
        self.node_id = self.identity.node_id
        self.cores = await asyncio.to_thread(claim_cpu_cores, config)
        if self.cores is not None and config.cpu_bind is None:
            config = config.model_copy(update={"cpu_bind": self.cores.spec})
            shared = " (shared with another node: more nodes than cores)" if any(self.cores.slots) else ""
            self.progress(f"vLLM's CPU worker runs on core {self.cores.spec}{shared}; --cpu-bind overrides")
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
            cluster_key=self._cluster_key,
            ssl_context=server_ssl,
            handshake_timeout_s=config.handshake_timeout_s,
            max_in_flight_per_peer=config.max_in_flight_per_peer,
            max_requests_per_s_per_peer=config.max_requests_per_s_per_peer,
            request_burst_per_peer=config.request_burst_per_peer,
            max_prompt_chars=config.max_prompt_chars,
            identity=self.identity,
        )
        # Adapters this node trained, offered to peers serving the same base model (issue 23).
        self.server.adapters = AdapterShelf(config.resolved_state_dir, self.identity)
        listen_url = await self.server.start(config.host, config.port)
        self.url = config.advertise_url or _advertised_url(listen_url, self.server.port)
        self.server.url = self.url
        await self._join()
        if config.http_port is not None:
            await self._serve_http()
        return self.url

    async def _serve_http(self) -> None:
        """Start the OpenAI-compatible HTTP API (:mod:`dellm_p2p.http`) in this loop; sets :attr:`http_url`."""
        from .http.app import ApiSettings, create_app
        from .http.gateway import Gateway
        from .http.limits import RateLimits
        from .http.server import HttpServer

        config = self.config
        self.gateway = Gateway.for_node(self, records=self.records)
        settings = ApiSettings(
            api_key=self._api_key,
            max_body_bytes=config.http_max_body_bytes,
            max_concurrent=config.http_max_concurrent,
            max_queue=config.http_max_queue,
            limits=RateLimits(config.http_requests_per_minute, config.http_tokens_per_minute),
        )
        self.http = HttpServer(create_app(self.gateway, settings), config.http_host, config.http_port or 0)
        self.http_url = await self.http.start()

    async def _join(self) -> None:
        """Start membership gossip and mDNS discovery."""
        config, server = self.config, self.server
        assert server is not None
        self.table = PeerTable(
            self.node_id, self.url, suspect_after_s=config.suspect_after_s, dead_after_s=config.dead_after_s
        )
        pool = PeerPool(
            node_id=self.node_id,
            name=config.name,
            url=self.url,
            max_frame_bytes=config.max_frame_bytes,
            cluster_key=self._cluster_key,
            ssl_context=self._client_ssl,
            identity=self.identity,
        )
        hello = server.hello
        pool.model, pool.capacity = hello.model, hello.capacity
        self.membership = membership_for(
            config,
            node_id=self.node_id,
            name=config.name,
            url=self.url,
            model=hello.model,
            capacity=hello.capacity,
            table=self.table,
            pool=pool,
            in_flight=lambda: server.in_flight,
            identity=self.identity,
            cluster_key=self._cluster_key,
        )
        server.membership = self.membership
        self.fitness = FitnessBook(
            self.node_id,
            self.table,
            path=config.resolved_state_dir / "fitness.json",
            pool=pool,
            fanout=config.fanout,
            identity=self.identity,
            window_s=config.reward_window_s,
        )
        server.fitness = self.fitness
        self.membership.fitness = self.fitness
        self._saver = asyncio.create_task(self._save_fitness(), name="dellm-fitness-saver")
        await self.membership.start()
        if config.mdns:
            self.mdns = MdnsDiscovery(
                node_id=self.node_id,
                name=config.name,
                port=server.port,
                model=hello.model,
                capacity=hello.capacity,
                interfaces=config.resolved_mdns_interfaces,
                on_found=self.membership.on_found,
                on_removed=self.membership.on_removed,
                tls=server.ssl_context is not None,
                fingerprint=self.identity.fingerprint,
            )
            await self.mdns.start()

    # What the HTTP gateway asks of its node (dellm_p2p.http.gateway.LocalNode).

    def network(self) -> tuple[PeerTable, PeerPool, FitnessBook]:
        """The started node's peer table, connection pool and fitness book.

        Raises:
            RuntimeError: the node is not started (or closed).
        """
        if self.table is None or self.membership is None or self.fitness is None:
            raise RuntimeError("the node is not started")
        return self.table, self.membership.pool, self.fitness

    def in_flight(self) -> int:
        """Requests this node's server is serving now (0 when it does not serve)."""
        return self.server.in_flight if self.server is not None else 0

    def self_record(self) -> PeerRecord | None:
        """This node as one peer of its own network (alive, RTT 0 ms, its own fitness now).

        ``None`` when it serves no model, or once its server has stopped.
        """
        server = self.server
        if server is None or not server.hello.model:
            return None
        return PeerRecord(
            node_id=self.node_id,
            url=self.url,
            name=self.config.name,
            model=server.hello.model,
            capacity=server.hello.capacity,
            in_flight=server.in_flight,
            rtt_ms=0.0,
            fitness=self.fitness.self_fitness if self.fitness else 0.5,
            state=PeerState.ALIVE,
            source="self",
        )

    async def connect_self(self) -> PeerClient:
        """A plain client connection to this node's own server, over loopback.

        No identity and no listen URL: the server refuses its own node id.

        Raises:
            dellm_p2p.client.PeerError: the server cannot be reached.
        """
        return await PeerClient.connect(
            self.url,
            name=f"{self.config.name}-http",
            cluster_key=self._cluster_key,
            ssl_context=self._client_ssl,
            max_frame_bytes=self.config.max_frame_bytes,
        )

    async def _save_fitness(self, every_s: float = 5.0) -> None:
        """Persist fitness every few seconds when it changed, so a crash loses little."""
        while True:
            await asyncio.sleep(every_s)
            if self.fitness is not None:
                try:
                    await asyncio.to_thread(self.fitness.save)
                except OSError as exc:
                    log.warning("cannot save fitness: %s", exc)

    async def engine_failure(self, every_s: float = 1.0) -> str:
        """Wait until the engine can serve no more (:meth:`Engine.failure`) and return its one-line reason.

        Polls every ``every_s`` [s]; never returns for a node without an
        engine. ``dellm-node`` then leaves the network and exits with status 1,
        so that peers stop routing to it and a supervisor can restart it.
        """
        while True:
            reason = self.engine.failure() if self.engine is not None else None
            if reason:
                return reason
            await asyncio.sleep(every_s)

    def cancel_in_flight(self) -> None:
        """Cancel every request being served (a running :meth:`close` then finishes at once)."""
        server = self.server or self._closing_server
        if server is not None:
            server.cancel_in_flight()

    async def close(self, grace_s: float | None = None) -> None:
        """Stop accepting, give in-flight work ``grace_s`` [s], release the engine. Idempotent."""
        grace = self.config.grace_period_s if grace_s is None else grace_s
        http, self.http = self.http, None
        if http is not None:  # no new API questions; open streams get a moment, then are cut
            await http.close(min(grace, 5.0))
        gateway, self.gateway = self.gateway, None
        if gateway is not None:
            await gateway.close()
        # Leave first (a signed *left* entry under SWIM), then the mDNS goodbye: a peer that takes the
        # unsigned goodbye as a hint and asks us finds us already left (we answer until the server stops).
        membership, self.membership = self.membership, None
        if membership is not None:
            await membership.close()
        mdns, self.mdns = self.mdns, None
        if mdns is not None:
            await mdns.close()
        if self._saver is not None:
            self._saver.cancel()
        fitness, self.fitness = self.fitness, None
        if fitness is not None:
            await fitness.close()
        server, self.server = self.server, None
        if server is not None:
            self._closing_server = server
            await server.shutdown(grace)
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.close()
        cores, self.cores = self.cores, None
        if cores is not None:  # after the engine: its worker used them until now
            cores.release()

    async def __aenter__(self) -> Node:
        try:
            await self.start()
        except BaseException:
            await self.close(0)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
