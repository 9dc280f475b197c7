"""The serving side of the protocol: :class:`NodeServer`.

Accepts websocket connections from peers, runs the handshake, and serves
``generate`` requests from the node's engine, many at once per connection.
Peer input never crashes the node: every bad frame gets an ``error`` frame
with a stable code (see :mod:`dellm_p2p.protocol`) and the connection stays
usable, except an oversized frame, which websockets closes with 1009, and a
failed handshake (wrong protocol version, duplicate node id, a node id that
does not derive from the hello's public key, cluster key missing or wrong,
or no handshake within ``handshake_timeout_s``).

Limits per peer connection (see ``Limits`` in :mod:`dellm_p2p.protocol`):
requests in flight, messages per second (token bucket) and prompt length;
over a limit the peer gets an ``error`` frame and the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import websockets
from websockets.asyncio.server import Server, ServerConnection

from . import __version__
from .engine import Delta, Engine, EngineError, GenerationRequest, PromptTooLongError
from .identity import Identity, node_id_matches

if TYPE_CHECKING:
    from .learn.share import AdapterShelf
    from .membership import FitnessBook, MembershipBase

from .protocol import (
    AUTH_SCHEME,
    CLOSE_AUTH_FAILED,
    CLOSE_DUPLICATE_ID,
    CLOSE_HANDSHAKE_TIMEOUT,
    CLOSE_IDENTITY_MISMATCH,
    CLOSE_UNSUPPORTED_VERSION,
    DEFAULT_MAX_FRAME_BYTES,
    MAX_MODEL_ROWS,
    PROTOCOL_VERSION,
    AdapterPart,
    Auth,
    Cancel,
    Done,
    Error,
    ErrorCode,
    Generate,
    GetAdapter,
    GetPeers,
    GetStats,
    Hello,
    Members,
    ModelFitness,
    Peers,
    Ping,
    Pong,
    ProtocolError,
    Rewards,
    Stats,
    Sync,
    Timings,
    Token,
    Usage,
    decode,
    encode,
)
from .security import auth_proof, check_proof, new_nonce

log = logging.getLogger(__name__)

DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_REQUESTS_PER_S_PER_PEER = 500.0
DEFAULT_REQUEST_BURST_PER_PEER = 1000
DEFAULT_MAX_PROMPT_CHARS = 100_000


@dataclass
class ServerCounters:
    """Request counters since the server started (tokens = generated tokens)."""

    requests_total: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    tokens_generated: int = 0
    bytes_sent: int = 0  # websocket payload bytes, all inbound connections
    bytes_received: int = 0
    auth_failures: int = 0  # connections refused for a missing, unexpected or wrong cluster key
    handshake_timeouts: int = 0  # connections closed for not completing the handshake in time
    rate_limited: int = 0  # messages dropped by the per-peer rate limit


class NodeServer:
    """Serve an engine (or nothing, for a coordinator-only node) to peers.

    Args:
        engine: a started engine, or ``None`` for a node without a model.
        node_id: this node's id, sent in ``hello``.
        name: human-readable node name.
        max_concurrency: requests served at once across all connections;
            more get ``overloaded`` at once so the requester can pick
            another peer instead of queueing here.
        max_frame_bytes: largest accepted frame [bytes]; larger closes with 1009.
        request_timeout_s: deadline of one request on this node [s].
        cluster_key: the cluster's shared secret (bytes); peers must prove
            it in the handshake (close 4003 otherwise). ``None``: an open
            node that refuses only peers offering a key.
        ssl_context: serve ``wss://`` with this TLS server context.
        handshake_timeout_s: a connection that has not completed the
            handshake (authentication included) this long after opening is
            closed with 4004 [s].
        max_in_flight_per_peer: requests one connection may have in flight;
            more get ``too_many_in_flight``. ``None``: ``max_concurrency``.
        max_requests_per_s_per_peer: sustained messages per second one
            connection may send (every message but ``cancel``); above it
            messages get ``rate_limited`` and are dropped [1/s].
        request_burst_per_peer: token-bucket size of that rate: messages a
            connection may send at once [messages].
        max_prompt_chars: longest ``generate`` input: characters of the
            prompt, or of all message contents together; longer gets
            ``prompt_too_long``.
        identity: this node's key pair (``node_id`` must derive from it);
            its public key goes in the ``hello``. ``None``: none is sent.
    """

    def __init__(
        self,
        engine: Engine | None,
        *,
        node_id: str,
        name: str = "",
        max_concurrency: int = 32,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        request_timeout_s: float = 600.0,
        cluster_key: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        max_in_flight_per_peer: int | None = None,
        max_requests_per_s_per_peer: float = DEFAULT_REQUESTS_PER_S_PER_PEER,
        request_burst_per_peer: int = DEFAULT_REQUEST_BURST_PER_PEER,
        max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
        identity: Identity | None = None,
    ):
        if identity is not None and identity.node_id != node_id:
            raise ValueError(f"identity {identity.node_id} does not match node id {node_id}")
        self.identity = identity
        self.identity_rejected = 0  # hellos whose node id does not derive from their public key
        self.engine = engine
        self.cluster_key = cluster_key
        self.ssl_context = ssl_context
        self.handshake_timeout_s = handshake_timeout_s
        self.max_in_flight_per_peer = max_in_flight_per_peer
        self.max_requests_per_s_per_peer = max_requests_per_s_per_peer
        self.request_burst_per_peer = request_burst_per_peer
        self.max_prompt_chars = max_prompt_chars
        self.node_id = node_id
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_frame_bytes = max_frame_bytes
        self.request_timeout_s = request_timeout_s
        self.counters = ServerCounters()
        self.in_flight = 0
        self.shutting_down = False
        self.membership: MembershipBase | None = None  # set by the node when it joins a network (gossip or SWIM)
        self.fitness: FitnessBook | None = None
        self.adapters: AdapterShelf | None = None  # adapters this node trained, offered to peers (issue 23)
        self.url: str | None = None
        self._server: Server | None = None
        self._sessions: set[_Session] = set()
        self._session_ids = itertools.count(1)
        self._started = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def hello(self) -> Hello:
        """The ``hello`` this node sends."""
        info = self.engine.info if self.engine is not None else None
        return Hello(
            protocol=PROTOCOL_VERSION,
            node_id=self.node_id,
            name=self.name,
            model=info.name if info else None,
            capacity=self.max_concurrency if info else 0,
            max_model_len=info.max_model_len if info else None,
            software=f"dellm-p2p/{__version__}",
            url=self.url,
            public_key=self.identity.public_key if self.identity is not None else None,
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 picks a free port); returns the ``ws://`` (``wss://`` with TLS) URL."""
        self._server = await websockets.serve(
            self._handle,
            host,
            port,
            ssl=self.ssl_context,
            max_size=self.max_frame_bytes,
            compression=None,  # token frames are tiny; deflate costs more than it saves
            ping_interval=20,
            ping_timeout=20,
        )
        sock_host, sock_port = next(iter(self._server.sockets)).getsockname()[:2]
        self.port = sock_port
        self.url = f"{'wss' if self.ssl_context is not None else 'ws'}://{sock_host}:{sock_port}"
        return self.url

    def stats(self, nonce: int = 0) -> Stats:
        """Current counters as a ``stats`` frame."""
        engine_running = self.engine.stats().running if self.engine is not None else 0
        return Stats(
            nonce=nonce,
            node_id=self.node_id,
            model=self.engine.info.name if self.engine is not None else None,
            in_flight=self.in_flight,
            capacity=self.max_concurrency if self.engine is not None else 0,
            requests_total=self.counters.requests_total,
            requests_failed=self.counters.requests_failed,
            requests_cancelled=self.counters.requests_cancelled,
            tokens_generated=self.counters.tokens_generated,
            bytes_sent=self.counters.bytes_sent + (self.membership.bytes_sent if self.membership else 0),
            bytes_received=self.counters.bytes_received + (self.membership.bytes_received if self.membership else 0),
            engine_running=engine_running,
            uptime_s=round(time.monotonic() - self._started, 3),
            **self._trust_counters(),
        )

    def _trust_counters(self) -> dict[str, int]:
        """Reward records applied, duplicate and rejected (per reason), and identities rejected, for ``stats``."""
        counters = self.fitness.counters() if self.fitness is not None else {}
        rejected = self.identity_rejected
        swim: dict[str, int] = {}
        if self.membership is not None:
            rejected += self.membership.table.identity_rejected + self.membership.pool.identity_rejected
            swim = getattr(self.membership, "counters", dict)()
        return {**counters, **swim, "identity_rejected": rejected}

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish for ``grace_s`` [s], cancel the rest, close.

        Peers see close code 1001 (going away). Idempotent.
        """
        self.shutting_down = True
        if self._server is not None:
            # Stops the listener only; websockets ignores any later close() call.
            self._server.close(close_connections=False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        self.cancel_in_flight()
        sessions = list(self._sessions)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(s.ws.close(1001, "node shutting down") for s in sessions))
                if self._server is not None:
                    await self._server.wait_closed()

    def cancel_in_flight(self) -> None:
        """Cancel every request being served, on every connection."""
        for session in list(self._sessions):
            session.cancel_all()

    def _acquire(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def _handle(self, ws: ServerConnection) -> None:
        session = _Session(self, ws, next(self._session_ids))
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self._sessions.discard(session)


class _Session:
    """One peer connection: handshake, then dispatch of frames to request tasks."""

    def __init__(self, server: NodeServer, ws: ServerConnection, number: int):
        self.server = server
        self.ws = ws
        self.number = number
        self.peer: Hello | None = None  # the peer's hello, once received
        self.ready = False  # handshake complete (cluster key proven, when the node has one)
        self.closing = False  # refused: frames still in flight are ignored
        self.nonce: str | None = None  # our auth nonce on this connection (keyed nodes)
        self.deadline: asyncio.Timeout | None = None  # the handshake deadline until ready
        self.bucket = TokenBucket(server.max_requests_per_s_per_peer, server.request_burst_per_peer)
        self.rate_warned = False
        self.tasks: dict[str, asyncio.Task] = {}
        self.cancelled: set[str] = set()

    @property
    def remote(self) -> str:
        addr = self.ws.remote_address
        return f"{addr[0]}:{addr[1]}" if addr else "?"

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as requests:
                try:
                    async with asyncio.timeout(self.server.handshake_timeout_s) as self.deadline:
                        async for frame in self.ws:
                            await self._on_frame(frame, requests)
                except TimeoutError:
                    if self.deadline is None or not self.deadline.expired():
                        raise
                    if not self.closing:  # not already refused (and closing) when the deadline passed
                        await self._handshake_expired()
                except websockets.exceptions.ConnectionClosed as exc:
                    if (exc.rcvd and exc.rcvd.code == 1009) or (exc.sent and exc.sent.code == 1009):
                        log.warning(
                            "peer %s sent a frame over %d bytes; closed with 1009",
                            self.remote,
                            self.server.max_frame_bytes,
                        )
                finally:
                    # A dropped connection aborts its requests inside the engine.
                    self.cancel_all()
        except* Exception:  # request tasks report their own errors; never kill the server
            log.exception("session %s ended with an error", self.remote)

    def cancel_all(self) -> None:
        for task in self.tasks.values():
            task.cancel()

    async def send(self, message) -> None:
        frame = encode(message)
        self.server.counters.bytes_sent += len(frame)
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await self.ws.send(frame)

    async def _on_frame(self, frame: bytes | str, requests: asyncio.TaskGroup) -> None:
        self.server.counters.bytes_received += len(frame)
        if self.closing:
            return
        message, error = None, None
        try:
            message = decode(frame)
        except ProtocolError as exc:
            error = exc
        if not isinstance(message, Cancel) and not self.bucket.take():  # a cancel only ever frees work
            await self._over_rate(message, error)
            return
        if error is not None:
            if self.server.cluster_key is not None and not self.ready:
                await self._refuse(f"send hello and auth first; got an invalid frame ({error.code})")
                return
            log.info("bad frame from %s: %s: %s", self.remote, error.code, error)
            await self.send(Error(id=error.request_id, code=error.code, message=str(error)))
            return
        if not self.ready:
            await self._on_handshake(message)
            return
        match message:
            case Generate():
                await self._on_generate(message, requests)
            case Cancel():
                if message.id in self.tasks:
                    self.cancelled.add(message.id)
                    self.tasks[message.id].cancel()
            case Ping():
                await self.send(Pong(nonce=message.nonce))
            case GetStats():
                await self.send(self.server.stats(message.nonce))
            case Members() if not message.reply:
                membership = self.server.membership
                if membership is not None:
                    await self.send(membership.on_members(message))
                else:
                    await self.send(Members(nonce=message.nonce, reply=True))
            case Sync() if not message.reply:
                on_sync = getattr(self.server.membership, "on_sync", None)
                reply = on_sync(message) if on_sync is not None else Sync(nonce=message.nonce, reply=True)
                await self.send(reply)
            case GetPeers():
                membership, fitness = self.server.membership, self.server.fitness
                rows = membership.table.rows() if membership is not None else []
                own = fitness.self_fitness if fitness is not None else 0.5
                agreed, rewards = fitness.self_counts if fitness is not None else (0, 0)
                models = [
                    ModelFitness(model=m, kind=k, agreed=a, rewards=r)
                    for m, k, a, r in (fitness.model_rows()[:MAX_MODEL_ROWS] if fitness is not None else [])
                ]
                await self.send(
                    Peers(
                        nonce=message.nonce, node_id=self.server.node_id, fitness=own, peers=rows,
                        agreed=agreed, rewards=rewards, models=models,
                    )
                )  # fmt: skip
            case Rewards():
                if self.server.fitness is not None:
                    self.server.fitness.receive(message.records)
            case GetAdapter():  # issue 23: an adapter this node trained, part by part
                shelf = self.server.adapters
                if shelf is None:
                    missing = AdapterPart(nonce=message.nonce, adapter_id=message.adapter_id, error="no adapters here")
                    await self.send(missing)
                else:
                    await self.send(await shelf.part(message))
            case Error():
                log.info("peer %s reported %s: %s", self.remote, message.code, message.message)
            case Pong() | Hello() | Auth() | Members() | Sync() | AdapterPart():
                pass
            case _:
                await self.send(
                    Error(code=ErrorCode.INVALID_MESSAGE, message=f"a node does not accept {message.type!r} frames")
                )

    async def _over_rate(self, message, error: ProtocolError | None) -> None:
        """Drop a message over the per-peer rate; tell the peer (with the request id when there is one)."""
        server = self.server
        server.counters.rate_limited += 1
        if not self.rate_warned:
            self.rate_warned = True
            log.warning(
                "peer %s sends more than %g messages/s; dropping those over the limit",
                self.remote,
                server.max_requests_per_s_per_peer,
            )
        rid = message.id if isinstance(message, Generate) else error.request_id if error is not None else None
        reason = (
            f"more than {server.max_requests_per_s_per_peer:g} messages per second "
            f"(bursts of {server.request_burst_per_peer}) on this connection; message dropped, slow down"
        )
        await self.send(Error(id=rid, code=ErrorCode.RATE_LIMITED, message=reason))

    async def _refuse(self, reason: str) -> None:
        """Fail authentication: one log line, an ``error`` frame and close code 4003 (never the key or a proof)."""
        self.closing = True
        self.server.counters.auth_failures += 1
        log.warning("peer %s failed authentication: %s", self.remote, reason)
        await self.send(Error(code=ErrorCode.AUTHENTICATION_FAILED, message=reason))
        await self.ws.close(CLOSE_AUTH_FAILED, f"authentication failed: {reason}"[:120])

    async def _handshake_expired(self) -> None:
        self.closing = True
        self.server.counters.handshake_timeouts += 1
        timeout = self.server.handshake_timeout_s
        log.warning("peer %s did not complete the handshake within %g s; closing with 4004", self.remote, timeout)
        await self.ws.close(CLOSE_HANDSHAKE_TIMEOUT, f"handshake not completed within {timeout:g} s")

    def _complete_handshake(self) -> None:
        self.ready = True
        if self.deadline is not None:
            self.deadline.reschedule(None)
        if self.server.membership is not None and self.peer is not None:
            self.server.membership.on_hello(self.peer)

    async def _on_auth(self, message) -> None:
        """A keyed node after the peer's hello: only a correct ``auth`` proof completes the handshake."""
        server, peer, key = self.server, self.peer, self.server.cluster_key
        assert peer is not None and key is not None and self.nonce is not None and peer.auth_nonce is not None
        if not isinstance(message, Auth):
            await self._refuse(f"expected 'auth' after hello, got {message.type!r}")
            return
        ids = (peer.auth_nonce, self.nonce, peer.node_id, server.node_id)
        if not check_proof(key, message.proof, "client", *ids):
            await self._refuse("wrong cluster key")
            return
        await self.send(Auth(proof=auth_proof(key, "server", *ids)))
        self._complete_handshake()

    async def _on_handshake(self, message) -> None:
        keyed = self.server.cluster_key is not None
        if self.peer is not None:  # keyed node, hello received: waiting for the proof
            await self._on_auth(message)
            return
        if not isinstance(message, Hello) and keyed:
            await self._refuse(f"send hello and auth first; got {message.type!r}")
            return
        if not isinstance(message, Hello):
            await self.send(
                Error(
                    id=getattr(message, "id", None),
                    code=ErrorCode.HANDSHAKE_REQUIRED,
                    message="send hello before any other message",
                )
            )
            return
        if message.protocol != PROTOCOL_VERSION:
            reason = f"protocol {message.protocol} is not supported; this node speaks {PROTOCOL_VERSION}"
            log.warning("peer %s: %s", self.remote, reason)
            await self.send(Error(code=ErrorCode.UNSUPPORTED_VERSION, message=reason))
            await self.ws.close(CLOSE_UNSUPPORTED_VERSION, reason[:120])
            return
        if keyed and (message.auth != AUTH_SCHEME or message.auth_nonce is None):
            offered = "none" if message.auth is None else "an unsupported scheme"
            await self._refuse(f"this node requires a cluster key; the peer offered {offered}")
            return
        if not keyed and message.auth is not None:
            await self._refuse("this node has no cluster key; the peer offered one")
            return
        if message.node_id == self.server.node_id:
            reason = f"duplicate node id {message.node_id}: the peer uses this node's id (copied state directory?)"
            log.error("peer %s: %s", self.remote, reason)
            await self.send(Error(code=ErrorCode.DUPLICATE_NODE_ID, message=reason))
            await self.ws.close(CLOSE_DUPLICATE_ID, "duplicate node id")
            return
        if message.public_key is not None and not node_id_matches(message.node_id, message.public_key):
            self.server.identity_rejected += 1
            reason = f"node id {message.node_id[:64]} does not derive from the hello's public key"
            log.warning("peer %s: %s", self.remote, reason)
            await self.send(Error(code=ErrorCode.IDENTITY_MISMATCH, message=reason))
            await self.ws.close(CLOSE_IDENTITY_MISMATCH, "node id does not derive from its public key")
            return
        self.peer = message
        if keyed:
            self.nonce = new_nonce()
            await self.send(self.server.hello.model_copy(update={"auth": AUTH_SCHEME, "auth_nonce": self.nonce}))
            return
        await self.send(self.server.hello)
        self._complete_handshake()

    async def _on_generate(self, message: Generate, requests: asyncio.TaskGroup) -> None:
        server = self.server
        refusal = None
        if server.shutting_down:
            refusal = (ErrorCode.SHUTTING_DOWN, "node is shutting down")
        elif server.engine is None:
            refusal = (ErrorCode.NO_MODEL, "this node serves no model")
        elif message.id in self.tasks:
            refusal = (ErrorCode.DUPLICATE_ID, f"request id {message.id!r} is already in flight")
        elif server.in_flight >= server.max_concurrency:
            refusal = (ErrorCode.OVERLOADED, f"node is at capacity ({server.max_concurrency} requests)")
        elif server.max_in_flight_per_peer is not None and len(self.tasks) >= server.max_in_flight_per_peer:
            refusal = (
                ErrorCode.TOO_MANY_IN_FLIGHT,
                f"this connection has {len(self.tasks)} requests in flight, the most this node allows per peer",
            )
        elif (chars := _prompt_chars(message)) > server.max_prompt_chars:
            refusal = (
                ErrorCode.PROMPT_TOO_LONG,
                f"the prompt is {chars:,} characters; this node accepts at most {server.max_prompt_chars:,}",
            )
        elif message.params.n > 1 and message.params.temperature == 0:
            # Greedy decoding gives one answer; vLLM raises on such a request (a traceback, not a clean error).
            refusal = (
                ErrorCode.INVALID_PARAMS,
                f"params.n: {message.params.n} samples need a temperature above 0 (greedy decoding gives one answer)",
            )
        elif message.params.max_tokens > server.engine.info.max_model_len:
            refusal = (
                ErrorCode.INVALID_PARAMS,
                f"params.max_tokens: {message.params.max_tokens} exceeds the context window "
                f"of {server.engine.info.max_model_len} tokens",
            )
        if refusal is not None:
            await self.send(Error(id=message.id, code=refusal[0], message=refusal[1]))
            return
        server._acquire()
        server.counters.requests_total += 1
        self.tasks[message.id] = requests.create_task(self._serve(message, time.perf_counter()))

    async def _serve(self, message: Generate, received: float) -> None:
        server, rid = self.server, message.id
        assert server.engine is not None
        progress = _Progress(received, [None] * message.params.n)
        request = GenerationRequest(message.params, message.messages, message.prompt)
        try:
            async with asyncio.timeout(server.request_timeout_s):
                stream = server.engine.generate(request, f"s{self.number}-{rid}")
                async with contextlib.aclosing(stream):
                    async for delta in stream:
                        if not progress.add(delta):
                            continue
                        server.counters.tokens_generated += delta.tokens
                        await self.send(
                            Token(
                                id=rid, index=delta.index, text=delta.text, tokens=delta.tokens, logprobs=delta.logprobs
                            )
                        )
            await self.send(progress.done(rid, "stop"))
        except asyncio.CancelledError:
            server.counters.requests_cancelled += 1  # by a cancel frame, a dropped connection or shutdown
            if rid not in self.cancelled:
                raise  # connection gone or node stopping: nobody to tell
            await self.send(progress.done(rid, "cancelled"))
        except TimeoutError:
            await self._fail(
                rid, ErrorCode.TIMEOUT, f"request exceeded the node's {server.request_timeout_s:g} s deadline"
            )
        except PromptTooLongError as exc:
            await self._fail(rid, ErrorCode.PROMPT_TOO_LONG, str(exc))
        except EngineError as exc:
            log.warning("request %s from %s failed: %s", rid, self.remote, exc)
            await self._fail(rid, ErrorCode.ENGINE_ERROR, str(exc))
        except Exception as exc:  # a bug must cost one request, not the node
            log.exception("request %s from %s crashed", rid, self.remote)
            await self._fail(rid, ErrorCode.ENGINE_ERROR, f"internal error: {type(exc).__name__}")
        finally:
            self.tasks.pop(rid, None)
            self.cancelled.discard(rid)
            server._release()

    async def _fail(self, rid: str, code: ErrorCode, message: str) -> None:
        self.server.counters.requests_failed += 1
        await self.send(Error(id=rid, code=code, message=message))


def _prompt_chars(message: Generate) -> int:
    """Length of a request's input [characters]: the prompt, or all message contents together."""
    if message.prompt is not None:
        return len(message.prompt)
    return sum(len(m.content) for m in message.messages or [])


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up; starts full.

    Args:
        rate: refill rate [tokens/s].
        burst: capacity [tokens].
    """

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        """Take one token; False (taking nothing) when the bucket is empty."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class _Progress:
    """What one request has produced so far, for its ``done`` frame."""

    received: float  # perf_counter() at receipt of the generate frame
    reasons: list[str | None]  # finish reason per choice
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None
    queued_ms: float | None = None

    def add(self, delta: Delta) -> bool:
        """Account for a delta; False when it carries no text or tokens to forward."""
        self.prompt_tokens = delta.prompt_tokens or self.prompt_tokens
        if self.queued_ms is None:
            self.queued_ms = delta.queued_ms
        if delta.finish_reason and delta.index < len(self.reasons):
            self.reasons[delta.index] = delta.finish_reason
        if not delta.text and not delta.tokens:
            return False
        if self.first_token is None:
            self.first_token = time.perf_counter()
        self.completion_tokens += delta.tokens
        return True

    def done(self, rid: str, default_reason: str) -> Done:
        """The ``done`` frame; choices without a finish reason get ``default_reason``."""
        first_ms = (self.first_token - self.received) * 1000 if self.first_token else None
        return Done(
            id=rid,
            finish_reasons=[r or default_reason for r in self.reasons],
            usage=Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens),
            timings=Timings(
                queued_ms=self.queued_ms,
                first_token_ms=round(first_ms, 3) if first_ms is not None else None,
                total_ms=round((time.perf_counter() - self.received) * 1000, 3),
            ),
        )
