"""The connection pool: one reusable :class:`~dellm_p2p.client.PeerClient` per peer URL.

Membership (gossip, SWIM push-pull), fitness gossip and coordinators all
reach peers through one :class:`PeerPool`, so a node holds one websocket
per peer whoever uses it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

from .client import PeerClient, PeerError
from .protocol import DEFAULT_MAX_FRAME_BYTES, ErrorCode

if TYPE_CHECKING:
    from .identity import Identity

EVICT_GRACE_S = 5.0  # a connection handed out this recently is never evicted (see PeerPool._evict)


class PeerPool:
    """One reusable :class:`PeerClient` per peer URL.

    Args:
        node_id, name, url: our identity, sent in every ``hello``.
        model, capacity: what we serve, sent in every ``hello`` too (set
            by the node once its engine is up).
        connect_timeout_s: deadline for connect plus handshake [s].
        max_frame_bytes: largest frame accepted from peers [bytes].
        max_connections: open connections kept; beyond it the least recently
            used idle ones are closed (gossip reaches a few random peers per
            round, so a large network need not hold a full mesh).
        cluster_key: the cluster's shared secret, proven in every handshake
            (``None``: reach only nodes without a key).
        ssl_context: TLS context for ``wss://`` peers (``None``: system CAs).
        identity: our key pair; its public key goes in every ``hello``
            (``None``: none is sent, we are a plain client).

    Attributes:
        identity_rejected: peers refused because their hello's node id does
            not derive from its public key.
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        url: str | None,
        connect_timeout_s: float = 3.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_connections: int = 64,
        cluster_key: bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        identity: Identity | None = None,
    ):
        self.node_id, self.name, self.url = node_id, name, url
        self.identity = identity
        self.identity_rejected = 0
        self.cluster_key = cluster_key
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self._last_used: dict[str, float] = {}
        self.model: str | None = None
        self.capacity = 0
        self.connect_timeout_s = connect_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self._clients: dict[str, PeerClient] = {}
        self._closed_bytes = [0, 0]  # sent, received by connections already closed
        self._connecting: dict[str, asyncio.Future[PeerClient]] = {}

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def bytes_sent(self) -> int:
        """Payload bytes sent on pooled connections, closed ones included."""
        return self._closed_bytes[0] + sum(c.bytes_sent for c in self._clients.values())

    @property
    def bytes_received(self) -> int:
        """Payload bytes received on pooled connections, closed ones included."""
        return self._closed_bytes[1] + sum(c.bytes_received for c in self._clients.values())

    def _retire(self, client: PeerClient) -> None:
        self._closed_bytes[0] += client.bytes_sent
        self._closed_bytes[1] += client.bytes_received

    def clients(self) -> list[PeerClient]:
        return [c for c in self._clients.values() if not c.closed]

    def open_urls(self) -> set[str]:
        """URLs with an open pooled connection."""
        return {url for url, client in self._clients.items() if not client.closed}

    def connection(self, url: str) -> PeerClient | None:
        """The pooled connection to ``url`` if one is open (never connects)."""
        client = self._clients.get(url)
        return client if client is not None and not client.closed else None

    async def get(self, url: str) -> PeerClient:
        """The open connection to ``url``, connecting if needed.

        Raises:
            PeerError: the peer cannot be reached or fails the handshake.
        """
        self._last_used[url] = time.monotonic()
        client = self._clients.get(url)
        if client is not None and not client.closed:
            return client
        pending = self._connecting.get(url)
        if pending is None:  # one connect per URL even when many callers race
            pending = asyncio.ensure_future(self._connect(url))
            self._connecting[url] = pending
            pending.add_done_callback(lambda done: self._connected(url, done))
        return await asyncio.shield(pending)

    def _connected(self, url: str, done: asyncio.Future[PeerClient]) -> None:
        self._connecting.pop(url, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every waiter may have given up (timeout) before it failed

    async def _connect(self, url: str) -> PeerClient:
        try:
            client = await PeerClient.connect(
                url,
                node_id=self.node_id,
                name=self.name,
                listen_url=self.url,
                model=self.model,
                capacity=self.capacity,
                timeout_s=self.connect_timeout_s,
                max_frame_bytes=self.max_frame_bytes,
                cluster_key=self.cluster_key,
                ssl_context=self.ssl_context,
                public_key=self.identity.public_key if self.identity is not None else None,
            )
        except PeerError as exc:
            if exc.code == ErrorCode.IDENTITY_MISMATCH:
                self.identity_rejected += 1
            raise
        old = self._clients.pop(url, None)
        if old is not None:
            self._retire(old)
            await old.close("replaced by a new connection")
        self._clients[url] = client
        await self._evict()
        return client

    async def _evict(self) -> None:
        """Close least recently used idle connections above ``max_connections``.

        A connection handed out by :meth:`get` in the last ``EVICT_GRACE_S``
        is kept even when idle: its caller may not have sent its request yet,
        and closing it then failed that request with ``connection_lost``
        (seen in ``scripts/bench_scale.py``'s live learning phase). The pool
        may exceed ``max_connections`` for that long.
        """
        excess = len(self._clients) - self.max_connections
        if excess <= 0:
            return
        handed_out = time.monotonic() - EVICT_GRACE_S
        idle = sorted(
            (u for u, c in self._clients.items() if not c.busy and self._last_used.get(u, 0.0) < handed_out),
            key=lambda u: self._last_used.get(u, 0.0),
        )
        for url in idle[:excess]:
            self._last_used.pop(url, None)
            await self.drop(url, f"idle connection evicted (pool keeps {self.max_connections})")

    async def drop(self, url: str, reason: str = "connection dropped by this node") -> None:
        """Close and forget the connection to ``url``; its open requests end with ``connection_lost: reason``."""
        client = self._clients.pop(url, None)
        if client is not None:
            self._retire(client)
            await client.close(reason)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            self._retire(client)
        await asyncio.gather(
            *(c.close("this node is closing its connections") for c in clients), return_exceptions=True
        )
