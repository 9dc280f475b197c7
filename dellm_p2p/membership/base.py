"""What the two membership services share: who we are, the peer table and pool, counters, refusals, leaving.

:class:`~dellm_p2p.membership.gossip.Membership` (heartbeat gossip) and
:class:`~dellm_p2p.membership.service.SwimMembership` (SWIM) keep the same
peer table for routing, ``dellm peers`` and the dashboard, and offer the same
hooks to the server (``on_hello``, ``on_members``) and to mDNS discovery
(``on_found``, ``on_removed``); a node or a Swarm holds either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol import ErrorCode
from .bootstrap import BootstrapResolver

if TYPE_CHECKING:
    from ..discovery import Announcement
    from ..identity import Identity
    from ..peer_table import PeerTable
    from ..pool import PeerPool
    from ..protocol import Hello, Members

log = logging.getLogger(__name__)

# Codes with which a peer refuses our handshake: a configuration problem on one side, not an outage.
REFUSAL_CODES = frozenset({ErrorCode.DUPLICATE_NODE_ID, ErrorCode.AUTHENTICATION_FAILED, ErrorCode.IDENTITY_MISMATCH})


def is_refusal(exc: BaseException) -> bool:
    """True when ``exc`` (a :class:`~dellm_p2p.client.PeerError`) is a peer refusing our handshake."""
    return getattr(exc, "code", None) in REFUSAL_CODES


class MembershipBase:
    """Attributes and lifecycle common to both membership services.

    Args:
        node_id, name, url: who we are (``url`` ``None``: a coordinator,
            which serves nothing and is never contacted).
        identity: our key pair (``node_id`` must derive from it; ``None``
            only for the gossip membership's plain observers).
        table: the peer table to maintain.
        pool: connection pool shared with the coordinator.
        bootstrap: ``ws://`` URLs to join through (our own URL is dropped);
            a DNS name stands for each of its addresses, re-resolved every
            :data:`~dellm_p2p.membership.bootstrap.DNS_REFRESH_S` seconds
            (:mod:`dellm_p2p.membership.bootstrap`).
        in_flight: returns how many requests we serve now.
        rpc_timeout_s: deadline of one exchange with a peer [s].

    Attributes:
        refusals: URL -> why that peer refused our handshake (cluster key,
            node id); the Swarm names them when it finds no node.
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        url: str | None,
        identity: Identity | None,
        table: PeerTable,
        pool: PeerPool,
        bootstrap: list[str] | None,
        in_flight: Callable[[], int],
        rpc_timeout_s: float,
    ):
        if identity is not None and identity.node_id != node_id:
            raise ValueError(f"identity {identity.node_id} does not match node id {node_id}")
        self.node_id, self.name, self.url = node_id, name, url
        self.identity = identity
        self.table = table
        self.pool = pool
        self.bootstrap = [u for u in (bootstrap or []) if u != url]
        self.dns = BootstrapResolver(self.bootstrap, own_url=url)
        self._dns_task: asyncio.Task | None = None
        self._dns_seen: set[str] = set()
        self.in_flight = in_flight
        self.rpc_timeout_s = rpc_timeout_s
        self.refusals: dict[str, str] = {}

    # Traffic counters (``stats``).

    def _own_bytes(self) -> tuple[int, int]:
        """Bytes (sent, received) outside the pooled websockets (SWIM: datagrams)."""
        return 0, 0

    @property
    def bytes_sent(self) -> int:
        """Payload bytes sent: pooled websockets and any traffic of our own [bytes]."""
        return self.pool.bytes_sent + self._own_bytes()[0]

    @property
    def bytes_received(self) -> int:
        """Payload bytes received: pooled websockets and any traffic of our own [bytes]."""
        return self.pool.bytes_received + self._own_bytes()[1]

    def _refused(self, url: str, exc: BaseException) -> bool:
        """Note a failed exchange with ``url``; True (and logged once, as an error) when it refused us."""
        if not is_refusal(exc):
            return False
        if self.refusals.get(url) != str(exc):
            log.error("peer at %s refused us: %s", url, exc)
        self.refusals[url] = str(exc)
        return True

    # Lifecycle.

    async def start(self) -> None:
        """Start in the background (join, then keep the table current)."""
        raise NotImplementedError

    async def _resolve_bootstrap(self) -> list[str]:
        """Resolve bootstrap names again (each bounded by the resolver's deadline); returns URLs not seen before.

        Sets :attr:`bootstrap` to the URLs of this round. Without names, nothing changes and nothing is new.
        """
        if not self.dns.has_names:
            return []
        self.bootstrap = await self.dns.resolve()
        new = [u for u in self.bootstrap if u not in self._dns_seen]
        self._dns_seen.update(new)
        return new

    def _watch_bootstrap(self, join: Callable[[str], None] | None) -> None:
        """Re-resolve bootstrap names every ``dns.refresh_s`` [s] in the background (only when there are names).

        ``join`` is called for each address that is new, or that is not the
        URL of a live member (a partition heals, a restarted pod is found);
        ``None``: the caller reads :attr:`bootstrap` itself.
        """
        if self.dns.has_names and self._dns_task is None:
            self._dns_task = asyncio.get_running_loop().create_task(self._refresh_bootstrap(join), name="dellm-dns")

    async def _refresh_bootstrap(self, join: Callable[[str], None] | None) -> None:
        while True:
            await asyncio.sleep(self.dns.refresh_s)
            try:
                new = await self._resolve_bootstrap()
            except Exception:  # resolve() handles DNS failures; anything else must not end the schedule
                log.exception("re-resolving bootstrap names failed")
                continue
            if join is None:
                continue
            live = {p.url for p in self.table.alive()}
            for url in self.bootstrap:
                if url in new or url not in live:
                    join(url)

    async def close(self, goodbye_timeout_s: float = 1.0) -> None:
        """Leave: stop our timers, tell peers we leave (bounded by ``goodbye_timeout_s`` [s]), close connections."""
        if self._dns_task is not None:
            self._dns_task.cancel()
            await asyncio.gather(self._dns_task, return_exceptions=True)
        await self._stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(goodbye_timeout_s):
                await self.say_goodbye()
        await self._release()
        await self.pool.close()

    async def _stop(self) -> None:
        """Stop the background tasks."""

    async def say_goodbye(self) -> None:
        """Tell peers we leave, so they mark us *left* at once (the caller bounds the time)."""

    async def _release(self) -> None:
        """Release what :meth:`start` opened besides the pool."""

    @property
    def joining(self) -> bool:
        """True while the first exchange with some bootstrap peer is still under way (a Swarm waits for it)."""
        return False

    # Hooks called by the server and by mDNS discovery.

    def on_hello(self, hello: Hello) -> None:
        """A peer connected to us."""

    def on_members(self, message: Members) -> Members:
        """A heartbeat-gossip ``members`` push: answered with the reply."""
        raise NotImplementedError

    def on_found(self, found: Announcement) -> None:
        """mDNS found a peer."""

    def on_removed(self, node_id: str) -> None:
        """mDNS goodbye (unsigned: a hint)."""
