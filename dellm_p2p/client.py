"""The requesting side of one peer connection: :class:`PeerClient`.

One websocket per peer pair, many requests multiplexed over it by request id.
A reader task routes incoming frames to per-request queues; every wait has a
deadline, and a dropped connection ends every open request with
:class:`PeerError` code ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import websockets
from websockets.asyncio.client import ClientConnection

from . import __version__
from .identity import node_id_matches
from .protocol import (
    AUTH_SCHEME,
    CLOSE_AUTH_FAILED,
    CLOSE_IDENTITY_MISMATCH,
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    AdapterPart,
    Auth,
    Beat,
    Cancel,
    ChatMessage,
    Done,
    Error,
    ErrorCode,
    Generate,
    GetAdapter,
    GetPeers,
    GetStats,
    Hello,
    MemberEntry,
    Members,
    Peers,
    Ping,
    Pong,
    ProtocolError,
    RewardRecord,
    Rewards,
    SamplingParams,
    Stats,
    Sync,
    Token,
    decode,
    encode,
)
from .security import auth_proof, check_proof, new_nonce

log = logging.getLogger(__name__)


class PeerError(RuntimeError):
    """A peer answered with an ``error`` frame, or the connection failed.

    Attributes:
        code: a :class:`~dellm_p2p.protocol.ErrorCode` value (``str``).
        request_id: the request it ended, if any.
    """

    def __init__(self, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.request_id = request_id


class AuthenticationError(PeerError):
    """The cluster-key handshake failed: a key missing on one side, or different keys.

    ``code`` is ``authentication_failed``; ``str`` is one line naming the
    peer's URL and the reason, never the key or a proof.
    """

    def __init__(self, message: str):
        super().__init__(ErrorCode.AUTHENTICATION_FAILED, message)


@dataclass
class Completion:
    """A finished request: the text of each choice plus the ``done`` frame.

    Attributes:
        texts: full text per choice index.
        logprobs: sampled-token logprobs per choice (empty lists unless requested).
        done: the final ``done`` frame (finish reasons, usage, timings).
        first_token_ms: time from sending ``generate`` to the first token,
            measured on this side [ms]; ``None`` if no token came.
        total_ms: time from sending to ``done`` on this side [ms].
    """

    texts: list[str]
    logprobs: list[list[float]]
    done: Done
    first_token_ms: float | None = None
    total_ms: float = 0.0
    tokens: int = field(default=0)

    @property
    def text(self) -> str:
        """Text of choice 0."""
        return self.texts[0]


_CLOSED = object()


async def _handshake_frame(ws: ClientConnection, url: str):
    """The next frame of the handshake, decoded; an ``error`` about authentication or a 4003 close raises."""
    try:
        frame = await ws.recv()
    except websockets.exceptions.ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code == CLOSE_AUTH_FAILED:
            raise AuthenticationError(f"{url} closed the connection: {exc.rcvd.reason}") from None
        raise
    message = decode(frame)
    if isinstance(message, Error) and message.code == ErrorCode.AUTHENTICATION_FAILED:
        raise AuthenticationError(f"{url} refused the connection: {message.message}")
    return message


async def _authenticate(ws: ClientConnection, url: str, key: bytes | None, hello: Hello, reply: Hello) -> None:
    """Run our side of the cluster-key handshake (protocol docstring, Handshake); no-op when neither has a key.

    Raises:
        AuthenticationError: the node has no key while we do, or the reverse, or its proof is wrong.
        PeerError: it answered our proof with something else than ``auth``.
    """
    if key is None:
        if reply.auth is not None:
            raise AuthenticationError(f"{url} requires a cluster key; this client has none")
        return
    if reply.auth != AUTH_SCHEME or reply.auth_nonce is None:
        raise AuthenticationError(f"{url} has no cluster key; this client has one")
    assert hello.auth_nonce is not None
    ids = (hello.auth_nonce, reply.auth_nonce, hello.node_id, reply.node_id)
    await ws.send(encode(Auth(proof=auth_proof(key, "client", *ids))))
    answer = await _handshake_frame(ws, url)
    if isinstance(answer, Error):
        raise PeerError(answer.code, answer.message)
    if not isinstance(answer, Auth):
        raise PeerError(ErrorCode.INVALID_MESSAGE, f"{url} answered our auth with {answer.type!r}")
    if not check_proof(key, answer.proof, "server", *ids):
        raise AuthenticationError(f"{url} failed to prove the cluster key (a different key, or not a cluster node)")


class PeerClient:
    """A connection to one node. Create with :meth:`connect`; use as an async context manager.

    Attributes:
        url: the node's ``ws://`` URL.
        remote: the node's ``hello`` (node id, model, capacity, context window).
    """

    def __init__(self, url: str, ws: ClientConnection, remote: Hello):
        self.url = url
        self.remote = remote
        self._ws = ws
        self._streams: dict[str, asyncio.Queue] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future] = {}
        self._nonces = itertools.count(1)
        self._closed_reason: str | None = None
        self._closing: str | None = None  # why this side closed the connection, once it did
        self.bytes_sent = 0  # websocket payload bytes since the handshake
        self.bytes_received = 0
        self._reader = asyncio.create_task(self._read_loop(), name=f"dellm-reader {url}")

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        node_id: str | None = None,
        name: str = "client",
        listen_url: str | None = None,
        model: str | None = None,
        capacity: int = 0,
        timeout_s: float = 10.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        cluster_key: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        public_key: bytes | None = None,
    ) -> PeerClient:
        """Open the websocket and run the handshake (``hello`` both ways, then ``auth`` with a cluster key).

        Args:
            url: ``ws://host:port`` of the node, or ``wss://host:port`` for TLS.
            node_id: our id in the hello (a random one for short-lived clients).
            listen_url: our own ``ws://`` URL when we are a node, so the
                peer can add us to its table; ``None`` for plain clients.
            model, capacity: what we serve, when we are a node.
            timeout_s: deadline for connecting and the handshake [s].
            max_frame_bytes: largest frame we accept [bytes].
            cluster_key: the cluster's shared secret (see
                :func:`dellm_p2p.security.load_cluster_key`); both sides prove
                it. ``None`` connects only to nodes without a key.
            ssl_context: TLS context for a ``wss://`` URL (e.g.
                :func:`dellm_p2p.security.client_ssl_context` with a CA);
                ``None`` verifies against the system's CAs. Ignored for ``ws://``.
            public_key: our raw 32-byte Ed25519 public key when we have an
                identity (``node_id`` must derive from it); ``None`` for plain
                clients. A node whose hello carries a key its node id does
                not derive from is refused (``identity_mismatch``).

        Raises:
            AuthenticationError: the cluster key is missing on one side or
                differs (the node closes with 4003).
            PeerError: ``connection_lost`` when the node cannot be reached or
                does not answer in time, or the node's own error code.
        """
        nonce = new_nonce() if cluster_key is not None else None
        hello = Hello(
            protocol=PROTOCOL_VERSION,
            node_id=node_id or f"client-{uuid.uuid4().hex[:12]}",
            name=name,
            software=f"dellm-p2p/{__version__}",
            url=listen_url,
            model=model,
            capacity=capacity,
            auth=AUTH_SCHEME if cluster_key is not None else None,
            auth_nonce=nonce,
            public_key=public_key,
        )
        tls = {"ssl": ssl_context} if ssl_context is not None and url.startswith("wss://") else {}
        try:
            async with asyncio.timeout(timeout_s):
                # proxy=None: peers are direct (LAN or --peer URLs), and the default proxy lookup
                # scans the environment on every connect (~2 ms; bench_scale opens ~100/s).
                ws = await websockets.connect(
                    url, max_size=max_frame_bytes, compression=None, open_timeout=None, proxy=None, **tls
                )
                try:
                    await ws.send(encode(hello))
                    reply = await _handshake_frame(ws, url)
                    if isinstance(reply, Hello):
                        await _authenticate(ws, url, cluster_key, hello, reply)
                except AuthenticationError as exc:
                    await ws.close(CLOSE_AUTH_FAILED, str(exc)[:120])
                    raise
                except BaseException:
                    await ws.close()
                    raise
        except TimeoutError:
            raise PeerError(
                ErrorCode.CONNECTION_LOST, f"{url} did not complete the handshake within {timeout_s:g} s"
            ) from None
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            raise PeerError(ErrorCode.CONNECTION_LOST, f"cannot connect to {url}: {exc}") from None
        except ProtocolError as exc:
            raise PeerError(exc.code, f"{url} sent a bad hello: {exc}") from None
        if isinstance(reply, Error):
            await ws.close()
            raise PeerError(reply.code, reply.message)
        if not isinstance(reply, Hello):
            await ws.close()
            raise PeerError(ErrorCode.INVALID_MESSAGE, f"{url} answered the hello with {reply.type!r}")
        if reply.public_key is not None and not node_id_matches(reply.node_id, reply.public_key):
            await ws.close(CLOSE_IDENTITY_MISMATCH, "node id does not derive from its public key")
            raise PeerError(
                ErrorCode.IDENTITY_MISMATCH,
                f"{url} claims node id {reply.node_id[:64]}, which does not derive from its public key",
            )
        return cls(url, ws, reply)

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def busy(self) -> bool:
        """True while a request or a ping/stats/members exchange is open on this connection."""
        return bool(self._streams or self._waiters)

    @property
    def closed(self) -> bool:
        """True once the connection is gone."""
        return self._closed_reason is not None

    @property
    def close_reason(self) -> str | None:
        """Who closed the connection and why (one line), once it is gone; ``None`` while open."""
        return self._closed_reason

    async def close(self, reason: str = "closed by this side") -> None:
        """Close the connection; open requests end with ``connection_lost`` carrying ``reason``.

        Args:
            reason: why we close it (one line), reported to our own open requests.
        """
        if self._closing is None:
            self._closing = reason
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def generate(
        self,
        *,
        messages: Sequence[ChatMessage | dict] | None = None,
        prompt: str | None = None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        timeout_s: float = 300.0,
    ) -> AsyncIterator[Token | Done]:
        """Stream a request: yields ``token`` frames, then the ``done`` frame.

        Leaving the loop early sends ``cancel`` so the node stops generating.

        Args:
            messages: chat messages (dicts or :class:`ChatMessage`), or
            prompt: a raw prompt (exactly one of the two).
            params: sampling parameters (defaults: greedy, 256 tokens).
            request_id: unique on this connection; a random one by default.
            timeout_s: deadline for the whole request [s]; on expiry the
                request is cancelled and ``PeerError('timeout')`` raised.

        Raises:
            PeerError: the node's error code, ``timeout``, or ``connection_lost``.
        """
        rid = request_id or uuid.uuid4().hex[:16]
        if rid in self._streams:
            raise PeerError(ErrorCode.DUPLICATE_ID, f"request id {rid!r} is already in flight", rid)
        frame = Generate(
            id=rid,
            messages=[m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages]
            if messages is not None
            else None,
            prompt=prompt,
            params=params or SamplingParams(),
        )
        queue: asyncio.Queue = asyncio.Queue()
        self._streams[rid] = queue
        finished = False
        try:
            await self._send(frame)
            async with asyncio.timeout(timeout_s):
                while True:
                    item = await queue.get()
                    if item is _CLOSED:
                        raise PeerError(ErrorCode.CONNECTION_LOST, self._closed_reason or "connection closed", rid)
                    if isinstance(item, Error):
                        finished = True
                        raise PeerError(item.code, item.message, rid)
                    if isinstance(item, Done):
                        finished = True
                        yield item
                        return
                    yield item
        except TimeoutError:
            raise PeerError(ErrorCode.TIMEOUT, f"no answer from {self.url} within {timeout_s:g} s", rid) from None
        finally:
            self._streams.pop(rid, None)
            if not finished and not self.closed:
                with contextlib.suppress(Exception):
                    await self._send(Cancel(id=rid))

    async def complete(self, **kwargs) -> Completion:
        """Run :meth:`generate` to the end and collect it (same arguments and errors)."""
        started = time.perf_counter()
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list[float]] = {}
        first: float | None = None
        tokens = 0
        async for item in self.generate(**kwargs):
            if isinstance(item, Token):
                if first is None and item.text:
                    first = (time.perf_counter() - started) * 1000
                texts.setdefault(item.index, []).append(item.text)
                logprobs.setdefault(item.index, []).extend(item.logprobs or [])
                tokens += item.tokens
            else:
                n = len(item.finish_reasons)
                return Completion(
                    texts=["".join(texts.get(i, [])) for i in range(n)],
                    logprobs=[logprobs.get(i, []) for i in range(n)],
                    done=item,
                    first_token_ms=first,
                    total_ms=(time.perf_counter() - started) * 1000,
                    tokens=tokens,
                )
        raise PeerError(ErrorCode.CONNECTION_LOST, "stream ended without done")

    async def cancel(self, request_id: str) -> None:
        """Ask the node to abort ``request_id`` (its stream then ends with ``done``)."""
        await self._send(Cancel(id=request_id))

    async def ping(self, timeout_s: float = 5.0) -> float:
        """Round-trip time of an application ``ping`` [ms].

        Raises:
            PeerError: ``timeout`` or ``connection_lost``.
        """
        started = time.perf_counter()
        await self._request(Ping(nonce=next(self._nonces)), "pong", timeout_s)
        return (time.perf_counter() - started) * 1000

    async def stats(self, timeout_s: float = 5.0) -> Stats:
        """The node's counters (``stats`` frame). Raises :class:`PeerError`."""
        return await self._request(GetStats(nonce=next(self._nonces)), "stats", timeout_s)

    async def members(
        self,
        entries: list[MemberEntry],
        timeout_s: float = 5.0,
        rewards: list[RewardRecord] | None = None,
        *,
        beats: list[Beat] | None = None,
        want: list[str] | None = None,
    ) -> Members:
        """Push-pull membership gossip: send our entries, beats, wants (and recent rewards), return the peer's.

        The frame is built without validation (gossip sends hundreds of beats
        from the node's own table several times a round; validating them
        again cost more than encoding them, bench_scale): bad beats or ids
        are refused by the receiver (``invalid_message``).

        Raises:
            PeerError: ``timeout`` or ``connection_lost``.
        """
        message = Members.model_construct(
            nonce=next(self._nonces), entries=entries, beats=beats or [], want=want or [], rewards=rewards or []
        )
        return await self._request(message, "members", timeout_s)

    async def sync(self, digest: list, changes: list, timeout_s: float = 5.0, buckets: list | None = None) -> Sync:
        """SWIM push-pull: send our digest, changes and bucket hashes, return the peer's ``sync`` reply.

        Raises:
            PeerError: ``timeout`` or ``connection_lost``.
        """
        message = Sync.model_construct(
            nonce=next(self._nonces), reply=False, digest=digest, changes=changes, buckets=buckets or []
        )
        return await self._request(message, "sync", timeout_s)

    async def peers(self, timeout_s: float = 5.0) -> Peers:
        """The node's peer table (``peers`` frame). Raises :class:`PeerError`."""
        return await self._request(GetPeers(nonce=next(self._nonces)), "peers", timeout_s)

    async def adapter_part(self, adapter_id: str, offset: int, timeout_s: float = 30.0) -> AdapterPart:
        """One part of an adapter bundle from ``offset`` [bytes] (issue 23; :mod:`dellm_p2p.learn.share`).

        Raises:
            PeerError: ``timeout`` (a node that does not know ``get_adapter`` answers with an
                ``unknown_type`` error, logged, and the request times out) or ``connection_lost``.
        """
        return await self._request(GetAdapter(nonce=next(self._nonces), adapter_id=adapter_id, offset=offset),
                                   "adapter_part", timeout_s)  # fmt: skip

    async def rewards(self, records: list[RewardRecord]) -> None:
        """Push reward records (fitness gossip; no reply). Raises :class:`PeerError` if the connection is gone."""
        await self._send(Rewards(records=records))

    async def send_raw(self, frame: bytes | str) -> None:
        """Send an arbitrary frame (for tests and protocol debugging)."""
        await self._ws.send(frame)

    async def _request(
        self, message: Ping | GetStats | Members | GetPeers | Sync | GetAdapter, reply_type: str, timeout_s: float
    ):
        key = (reply_type, message.nonce)
        future = asyncio.get_running_loop().create_future()
        self._waiters[key] = future
        try:
            await self._send(message)
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise PeerError(
                ErrorCode.TIMEOUT, f"{self.url} did not answer {message.type} within {timeout_s:g} s"
            ) from None
        finally:
            self._waiters.pop(key, None)
            if future.done() and not future.cancelled():
                future.exception()  # the connection may fail it while _send still raises its own error

    async def _send(self, message) -> None:
        if self.closed:
            raise PeerError(ErrorCode.CONNECTION_LOST, self._closed_reason or "connection closed")
        frame = encode(message)
        self.bytes_sent += len(frame)
        try:
            await self._ws.send(frame)
        except websockets.exceptions.ConnectionClosed as exc:
            raise PeerError(ErrorCode.CONNECTION_LOST, f"connection to {self.url} closed: {exc}") from None

    async def _read_loop(self) -> None:
        try:
            async for frame in self._ws:
                self.bytes_received += len(frame)
                try:
                    message = decode(frame)
                except ProtocolError as exc:
                    log.warning("%s sent a bad frame: %s", self.url, exc)
                    continue
                self._dispatch(message)
            reason = self._close_reason(None)
        except websockets.exceptions.ConnectionClosed as exc:
            reason = self._close_reason(exc)
        self._closed_reason = reason
        for queue in self._streams.values():
            queue.put_nowait(_CLOSED)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(PeerError(ErrorCode.CONNECTION_LOST, reason))

    def _close_reason(self, exc: websockets.exceptions.ConnectionClosed | None) -> str:
        """One line saying who closed the connection and why (``exc`` is set for an abnormal close)."""
        if self._closing is not None:
            return f"connection to {self.url} closed by this side: {self._closing}"
        if exc is not None:
            return f"connection to {self.url} lost: {exc}"
        code, why = self._ws.close_code, self._ws.close_reason
        detail = f" ({code}{' ' + why if why else ''})" if code is not None else ""
        return f"connection to {self.url} closed by the peer{detail}"

    def _dispatch(self, message) -> None:
        if isinstance(message, Token | Done | Error) and message.id in self._streams:
            self._streams[message.id].put_nowait(message)
        elif isinstance(message, Pong | Stats | Peers | AdapterPart) or (
            isinstance(message, Members | Sync) and message.reply
        ):
            future = self._waiters.get((message.type, message.nonce))
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, Error):
            log.warning("%s reported %s: %s", self.url, message.code, message.message)
