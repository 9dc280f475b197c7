"""The asyncio layer around the SWIM core: datagrams, timers, push-pull, the peer table.

:class:`SwimMembership` drives :class:`~dellm_p2p.membership.swim.Swim`:
it sends the core's messages as UDP datagrams (on the port of the node's
``ws://`` URL; see ``SWIM datagrams`` in :mod:`dellm_p2p.protocol`), feeds it
received ones and the time, and applies its events to the
:class:`~dellm_p2p.peer_table.PeerTable` that routing, ``dellm peers`` and the
dashboard read. Probes go over UDP, not the pooled websockets: SWIM probes
every member in turn, and at N = 500 a pool of 64 connections would open a
new connection for almost every probe (a TCP and hello handshake on both
sides, the cost that made bench_scale's gossip CPU-bound before).

Full state goes over the websocket as ``sync`` push-pull (summarised: 64
bucket hashes first, then rows of the differing buckets only): at start with
every bootstrap URL (the join), with any node heard of by mDNS or an inbound
hello that the core does not know, and every ``push_pull_interval_s`` ×
:func:`push_pull_scale` with one random live member (memberlist's
pushPullScale: the interval grows with log N so a node's sync traffic does
not grow with N).

Reward records: the issuer pushes them over websockets to the ln N + 2 peers
it holds pooled connections to (:meth:`FitnessBook.forward`); a node that
applies one queues it in the core, which piggybacks it
``retransmit_mult`` times (:meth:`Swim.broadcast_reward`). The first frame of a
push-pull and its reply also carry each side's recent records (at most
:data:`REWARDS_PER_SYNC`, applied within the last 10 s): anti-entropy, so a
node that joins just after a question, or missed the pushes and their
piggybacked copies, still gets them.

RTT: a coordinator pings each newly joined model peer; a push-pull with a
peer whose RTT we lack starts with a ping on that connection, so a peer found
by mDNS, a hello or a bootstrap URL shows in the table with an RTT; probe
acks refine it (EWMA) for every member within a probe pass.

Leaving: :meth:`SwimMembership.close` signs a *left* entry and sends it by
datagram to a few members and over every open connection. An mDNS goodbye
(unsigned, so only a hint) makes a node push-pull with that member at once:
a node that left answers with its *left* entry; one that does not answer is
suspected, as after a failed probe, and declared dead only if it does not
refute.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgpack

from ..client import PeerError
from ..discovery import Announcement
from ..peer_table import PeerState, PeerTable
from ..pool import PeerPool
from ..protocol import Hello, Members, RewardRecord, Sync
from .base import MembershipBase
from .bootstrap import DNS_REFRESH_S, is_ip, is_loopback, resolve_addresses
from .gossip import Membership
from .swim import (
    ALIVE,
    COUNTERS,
    DEAD,
    LEFT,
    Acked,
    MemberChanged,
    RewardsReceived,
    Swim,
    SwimConfig,
)

if TYPE_CHECKING:
    from ..identity import Identity
    from .fitness import FitnessBook

log = logging.getLogger(__name__)

RECEIVE_BUFFER_BYTES = 1 << 20
MAC_BYTES = 16
MAC_CONTEXT = b"dellm-swim/1\x00"
# Push-pull summarises the view in 64 bucket hashes (~600 bytes) from this many members on: below it, the
# digest itself (~35 bytes a member) is smaller.
SUMMARY_MIN_MEMBERS = 24
JOIN_REPAIR_S = 5.0  # the first periodic push-pull comes this long (× 0.5-1.5) after start
REWARDS_PER_SYNC = 64  # newest reward records a push-pull frame carries: ~16 KB at most
DROP_ENV = "DELLM_BENCH_DROP_RATE"  # benchmarks only: drop this share of outgoing SWIM datagrams on purpose
_STATES = {"alive": PeerState.ALIVE, "suspect": PeerState.SUSPECT, "dead": PeerState.DEAD, "left": PeerState.LEFT}


def push_pull_scale(interval_s: float, n: int) -> float:
    """The push-pull interval [s] among ``n`` members: ``interval_s`` up to 32, then × (ceil(log2 n − 5) + 1).

    memberlist util.go pushPullScale (its threshold is 32 too).
    """
    if n <= 32:
        return interval_s
    return interval_s * (math.ceil(math.log2(n) - 5) + 1)


def udp_address(url: str) -> tuple[str, int] | None:
    """The (host, port) a member's SWIM datagrams go to: its ``ws://`` URL's host and port."""
    try:
        parts = urlsplit(url)
        return (parts.hostname or "", parts.port or 0) if parts.hostname and parts.port else None
    except ValueError:
        return None


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, owner: SwimMembership):
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable from a dead member: expected
        log.debug("SWIM datagram error: %s", exc)


class SwimMembership(MembershipBase):
    """Keeps a node's peer table current with SWIM; same hooks as :class:`~dellm_p2p.membership.gossip.Membership`.

    Args:
        node_id, name, url: who we are (``url`` ``None``: a coordinator,
            which probes but is never probed; it binds an ephemeral port).
        identity: our key pair (signs our member entry).
        model, capacity: what we serve (in the signed entry).
        table: the peer table to maintain.
        pool: websocket pool (push-pull, reward pushes).
        bootstrap: ``ws://`` URLs to push-pull with until one answers.
        in_flight: returns our requests in flight (reported in acks).
        config: SWIM timing (:class:`SwimConfig`).
        push_pull_interval_s: base push-pull interval [s] (memberlist: 30 s).
        rpc_timeout_s: deadline of one push-pull [s].
        cluster_key: authenticates datagrams (HMAC-SHA256, 16 bytes).
        bind_host: the address the node listens on (``--host``): a loopback
            address is bound as such, anything else as ``0.0.0.0``; ``None``:
            our URL's host (an advertised name says nothing about it).
        drop_rate: share of outgoing datagrams dropped on purpose
            (benchmarks; default from ``DELLM_BENCH_DROP_RATE``, else 0).
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        url: str | None,
        identity: Identity,
        model: str | None,
        capacity: int,
        table: PeerTable,
        pool: PeerPool,
        bootstrap: list[str] | None = None,
        in_flight: Callable[[], int] = lambda: 0,
        config: SwimConfig | None = None,
        push_pull_interval_s: float = 30.0,
        rpc_timeout_s: float = 3.0,
        cluster_key: bytes | None = None,
        drop_rate: float | None = None,
        bind_host: str | None = None,
    ):
        super().__init__(
            node_id=node_id,
            name=name,
            url=url,
            identity=identity,
            table=table,
            pool=pool,
            bootstrap=bootstrap,
            in_flight=in_flight,
            rpc_timeout_s=rpc_timeout_s,
        )
        table.detect = False
        self.push_pull_interval_s = push_pull_interval_s
        self.cluster_key = cluster_key
        self.drop_rate = float(os.environ.get(DROP_ENV, "0") or 0) if drop_rate is None else drop_rate
        self.bind_host = bind_host
        self.core = Swim(
            identity,
            url=url,
            name=name,
            model=model,
            capacity=capacity,
            incarnation=time.time_ns() // 1_000_000,  # a restart outbids every claim about the previous run
            config=config,
        )
        self._fitness: FitnessBook | None = None
        self._failures: dict[str, str] = {}  # url -> why our last push-pull with it failed (logged once per cause)
        self.datagram_bytes = [0, 0]  # sent, received
        self.bad_datagrams = 0
        self.dropped_on_purpose = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._joining: set[str] = set()
        self._first_tries: set[str] = set()  # join URLs (bootstrap, mDNS, hello) not tried once yet
        self._addrs: dict[str, tuple[str, int] | None] = {}
        self._named: dict[str, float] = {}  # member URL with a DNS name -> when its address is looked up again
        self._resolving: dict[str, list[dict]] = {}  # such URL -> datagrams waiting for its first address
        self._rng = random.Random()
        self._next_sweep = 0.0

    # Compatibility with Membership's attributes read elsewhere.

    @property
    def incarnation(self) -> int:
        return self.core.me.incarnation

    @property
    def model(self) -> str | None:
        return self.core.me.model

    @property
    def capacity(self) -> int:
        return self.core.me.capacity

    def _own_bytes(self) -> tuple[int, int]:
        """SWIM datagram bytes (sent, received)."""
        return self.datagram_bytes[0], self.datagram_bytes[1]

    def counters(self) -> dict[str, int]:
        """SWIM counters as ``stats`` fields (see ``stats`` in :mod:`dellm_p2p.protocol`)."""
        c = self.core.counters
        return {
            **{k: c[k] for k in COUNTERS if k.startswith("member_")},
            "swim_probes": c["probes"],
            "swim_probes_failed": c["probes_failed"],
            "swim_awareness": self.core.awareness,
            "swim_bad_datagrams": self.bad_datagrams,
        }

    @property
    def fitness(self) -> FitnessBook | None:
        """The fitness book; once set, records it applies ride on SWIM messages."""
        return self._fitness

    @fitness.setter
    def fitness(self, fitness: FitnessBook | None) -> None:
        self._fitness = fitness
        if fitness is not None:
            fitness.broadcast = self._broadcast_rewards

    def _broadcast_rewards(self, records: list[RewardRecord]) -> None:
        for record in records:
            self.core.broadcast_reward(record.model_dump())
        self._wake.set()

    # Lifecycle.

    async def start(self) -> None:
        """Bind the datagram socket, start the timers and join (push-pull with the bootstrap peers).

        Bootstrap DNS names are resolved first (each within the resolver's
        deadline) and then again on a schedule (:mod:`.bootstrap`).
        """
        loop = asyncio.get_running_loop()
        await self._resolve_bootstrap()
        if self.url is not None:
            local = udp_address(self.url)
            host = self.bind_host or (local[0] if local else "127.0.0.1")
            # A loopback address is bound as such: nodes on 127.0.0.2, 127.0.0.3... may share a port.
            bind = (host if is_loopback(host) else "0.0.0.0", local[1] if local else 0)
        else:  # a coordinator: any port, answers come back to it
            loopback = all(is_loopback((udp_address(u) or ("",))[0]) for u in self.bootstrap)
            bind = ("127.0.0.1" if loopback else "0.0.0.0", 0)
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self), local_addr=bind)
        sock = self._transport.get_extra_info("socket")
        with contextlib.suppress(OSError):  # the kernel caps it at net.core.rmem_max
            # A busy event loop reads late; the default ~200 KB holds only ~16 full datagrams (join bursts).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self._spawn(self._run(), "dellm-swim")
        self._spawn(self._push_pull_loop(), "dellm-swim-sync")
        for url in self.bootstrap:
            self._join(url)
        self._watch_bootstrap(self._join)

    async def _stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):  # cancelled tasks end at once; bounded all the same
            async with asyncio.timeout(1.0):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def say_goodbye(self) -> None:
        """Sign our *left* entry; send it by datagram to a few members and over every open connection.

        Datagrams may be lost; a ``sync`` on a connection already open is
        delivered or fails visibly, and costs no handshake. :meth:`close`
        bounds the time.
        """
        self.core.leave()
        left = [self.core.me.to_wire()]
        live = self.core.live()
        for member in self._rng.sample(live, min(len(live), 3 * self.core.config.gossip_nodes)):
            self._send(member.entry.url, {"t": "gossip", "from": self.node_id, "c": left})
        clients = self.pool.clients()
        await asyncio.gather(*(c.sync([], left, self.rpc_timeout_s) for c in clients), return_exceptions=True)

    async def _release(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.core.load = self.in_flight()
                now = loop.time()
                self.core.tick(now)
                self._flush()
                if now >= self._next_sweep:  # forgets old dead/left rows only; walks every row: once a second
                    self._next_sweep = now + 1.0
                    self.table.sweep()
            except Exception:  # one bad tick must not stop failure detection
                log.exception("SWIM tick failed")
            self._wake.clear()
            wait = min(1.0, max(0.0, self.core.next_deadline() - loop.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    # Datagrams.

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        self.datagram_bytes[1] += len(data)
        if self.cluster_key is not None:
            mac, data = data[:MAC_BYTES], data[MAC_BYTES:]
            if not hmac.compare_digest(mac, self._mac(data)):
                self.bad_datagrams += 1
                return
        try:
            message = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:  # msgpack raises several unrelated types on garbage
            self.bad_datagrams += 1
            return
        try:
            self.core.handle(message, addr, asyncio.get_running_loop().time())
            self._flush()
        except Exception:
            log.exception("SWIM message from %s failed", addr)
            return
        sender = message.get("from") if isinstance(message, dict) else None
        peer = self.table.get(sender) if isinstance(sender, str) else None
        if peer is not None and peer.state is PeerState.ALIVE:
            # Any authenticated datagram is a sign of life: `dellm peers` shows "last seen" from it,
            # not only from our own probe of that member (once per pass, N × period apart).
            peer.last_seen = self.table.clock()

    def _mac(self, payload: bytes) -> bytes:
        assert self.cluster_key is not None
        return hmac.new(self.cluster_key, MAC_CONTEXT + payload, hashlib.sha256).digest()[:MAC_BYTES]

    def _send(self, to: Any, message: dict) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        if isinstance(to, str):
            if to not in self._addrs or (to in self._named and self._named[to] < time.monotonic()):
                target = udp_address(to)
                if target is not None and not is_ip(target[0]):
                    # A member advertised by a DNS name: socket.sendto would resolve it in the event loop,
                    # blocking it. Resolve in the background; datagrams wait for a first address, later
                    # ones use the last address until the new one is in.
                    self._resolve_member(to, target, message)
                    if to not in self._addrs:
                        return
                else:
                    if len(self._addrs) > 8192:
                        self._addrs.clear()
                    self._addrs[to] = target
            addr = self._addrs[to]
            if addr is None:
                return
        else:
            addr = to
        if self.drop_rate and self._rng.random() < self.drop_rate:
            self.dropped_on_purpose += 1
            return
        payload = msgpack.packb(message, use_bin_type=True)
        if self.cluster_key is not None:
            payload = self._mac(payload) + payload
        self.datagram_bytes[0] += len(payload)
        self._transport.sendto(payload, addr)

    def _resolve_member(self, url: str, target: tuple[str, int], message: dict) -> None:
        """Resolve a member's host name off the loop (at most one lookup per URL at a time), then send what waits."""
        waiting = self._resolving.get(url)
        if waiting is None:
            waiting = self._resolving[url] = []
            self._spawn(self._resolved_member(url, target), "dellm-swim-dns")
        if url not in self._addrs and len(waiting) < 64:
            waiting.append(message)

    async def _resolved_member(self, url: str, target: tuple[str, int]) -> None:
        host, port = target
        try:
            addresses = await resolve_addresses(host, port, self.rpc_timeout_s)
        except (OSError, TimeoutError) as exc:
            log.info("SWIM: member host %s does not resolve: %s", host, exc or "timeout")
            addresses = []
        waiting = self._resolving.pop(url, [])
        # The socket is IPv4 unless bound otherwise: prefer an IPv4 address.
        address = next((a for a in addresses if ":" not in a), addresses[0] if addresses else None)
        if address is None:
            return  # nothing cached: the next datagram to this member tries again
        if len(self._addrs) > 8192:
            self._addrs.clear()
            self._named.clear()
        self._addrs[url] = (address, port)
        self._named[url] = time.monotonic() + DNS_REFRESH_S  # a restarted container may come back elsewhere
        for message in waiting:
            self._send(url, message)

    def _flush(self) -> None:
        for send in self.core.take_sends():
            self._send(send.to, send.message)
        events = self.core.take_events()
        for event in events:
            if isinstance(event, MemberChanged):
                self._apply(event)
            elif isinstance(event, Acked):
                peer = self.table.get(event.node_id)
                if peer is not None:
                    rtt_ms, a = event.rtt_s * 1000, self.table.rtt_alpha
                    peer.rtt_ms = rtt_ms if peer.rtt_ms is None else (1 - a) * peer.rtt_ms + a * rtt_ms
                    peer.in_flight = event.load
                    peer.last_seen = self.table.clock()
            elif isinstance(event, RewardsReceived) and self.fitness is not None:
                self.fitness.receive_raw(event.records)

    def _apply(self, event: MemberChanged) -> None:
        entry = event.entry
        state = _STATES[event.state]
        before = self.table.apply_member(
            entry.node_id,
            state,
            url=entry.url,
            public_key=entry.public_key,
            name=entry.name,
            model=entry.model,
            capacity=entry.capacity,
            incarnation=event.incarnation,
        )
        if state is PeerState.DEAD and before is not PeerState.DEAD and entry.url:
            self._spawn(self.pool.drop(entry.url, f"peer {entry.node_id} is dead (SWIM)"), "dellm-swim-drop")
        elif before is None and state is PeerState.ALIVE and entry.url and entry.model and self.url is None:
            # A coordinator routes at once and wants every model peer's RTT; probes measure one member
            # per period, so it pings a newcomer once (nodes do not: 500 joining nodes pinging each
            # other would be a connection storm; their acks give RTTs within a pass).
            self._spawn(self._measure(entry.node_id, entry.url), "dellm-swim-rtt")

    async def _measure(self, node_id: str, url: str) -> None:
        with contextlib.suppress(PeerError, TimeoutError):
            async with asyncio.timeout(self.rpc_timeout_s):
                client = await self.pool.get(url)
                rtt_ms = await client.ping(self.rpc_timeout_s)
                peer = self.table.get(node_id)
                if peer is not None and peer.rtt_ms is None:
                    peer.rtt_ms = rtt_ms

    # Push-pull.

    def on_sync(self, message: Sync) -> Sync:
        """A peer's ``sync`` push: merge what it sent, answer with what it lacks (see ``sync`` in the protocol).

        With bucket hashes and no digest (the first frame of a push-pull): our
        hashes and our digest rows of the buckets that differ. With both (the
        second): the changes its rows lack in those buckets. With a digest
        only (an initiator without buckets): our full digest and what it lacks.
        """
        now = asyncio.get_running_loop().time()
        self.core.apply_changes(message.changes, now, sync=True)
        mine = self.core.bucket_hashes() if message.buckets else []
        scope = self.core.differing_buckets(message.buckets, mine) if message.buckets else None
        # The opening frame of a push-pull has buckets or a digest, not both; its reply carries our recent rewards.
        rewards = self._reward_changes() if bool(message.buckets) != bool(message.digest) else []
        reply = Sync.model_construct(nonce=message.nonce, reply=True, digest=[], changes=rewards, buckets=[])
        if scope is not None and not message.digest:
            reply = reply.model_copy(update={"buckets": mine, "digest": self.core.digest(scope)})
        elif message.digest:
            changes = self.core.newer_than(message.digest, scope)
            digest = self.core.digest() if scope is None else []
            reply = reply.model_copy(update={"digest": digest, "changes": changes + reply.changes})
        self._flush()
        return reply

    def on_members(self, message: Members) -> Members:
        """Heartbeat gossip from a node of the older membership: answered empty (rewards still applied)."""
        if self.fitness is not None and message.rewards:
            self.fitness.receive(message.rewards)
        return Members.model_construct(nonce=message.nonce, reply=True, entries=[], beats=[], want=[], rewards=[])

    async def push_pull(self, url: str, gone_is_news: bool = True) -> bool:
        """One full exchange with the node at ``url``; False when it failed.

        Failures are logged once per cause (``gone_is_news`` False: at info
        level, for a node we expect to be gone). The first frame and its
        reply carry recent reward records too (see the module docstring).
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.rpc_timeout_s):
                client = await self.pool.get(url)
                # A first RTT sample of a partner we have none of (a join): probe acks measure each member
                # only once per pass (N x the period). Taken before the sync and stored right after its rows
                # are applied, so the partner never shows in our table without an RTT.
                known = self.table.get(client.remote.node_id)
                rtt_ms = await client.ping(self.rpc_timeout_s) if known is None or known.rtt_ms is None else None
                scope = None
                rewards = self._reward_changes()
                if self.core.size() >= SUMMARY_MIN_MEMBERS:
                    mine = self.core.bucket_hashes()
                    first = await client.sync([], rewards, self.rpc_timeout_s, buckets=mine)
                    self.core.apply_changes(first.changes, loop.time(), sync=True)  # its recent rewards
                    scope = self.core.differing_buckets(first.buckets, mine)
                    rewards = []
                if scope is None:  # a small view, or a peer without bucket summaries: full digests
                    reply = await client.sync(self.core.digest(), rewards, self.rpc_timeout_s)
                    self.core.apply_changes(reply.changes, loop.time(), sync=True)
                    missing = self.core.newer_than(reply.digest)
                    if missing:
                        await client.sync([], missing, self.rpc_timeout_s)
                elif scope:
                    missing = self.core.newer_than(first.digest, scope)
                    digest = self.core.digest(scope)
                    reply = await client.sync(digest, missing, self.rpc_timeout_s, buckets=mine)
                    self.core.apply_changes(reply.changes, loop.time(), sync=True)
                self._flush()
                peer = self.table.get(client.remote.node_id)
                if rtt_ms is not None and peer is not None and peer.rtt_ms is None and peer.url == url:
                    peer.rtt_ms = rtt_ms
        except (PeerError, TimeoutError) as exc:
            why = str(exc) or f"no reply within {self.rpc_timeout_s:g} s"
            if not self._refused(url, exc) and self._failures.get(url) != why:
                log.log(logging.WARNING if gone_is_news else logging.INFO, "push-pull with %s failed: %s", url, why)
            self._failures[url] = why
            await self.pool.drop(url, f"push-pull failed: {why}")
            return False
        self.refusals.pop(url, None)
        self._failures.pop(url, None)
        return True

    def _reward_changes(self) -> list[list]:
        """Our recent reward records as sync changes: the newest :data:`REWARDS_PER_SYNC` of the last 10 s."""
        if self._fitness is None:
            return []
        return [["r", record.model_dump()] for record in self._fitness.recent()[-REWARDS_PER_SYNC:]]

    def _join(self, url: str) -> None:
        if url in self._joining or url == self.url:
            return
        self._joining.add(url)
        self._first_tries.add(url)
        self._spawn(self._join_until_answered(url), "dellm-swim-join")

    async def _join_until_answered(self, url: str, tries: int = 30) -> None:
        try:
            delay = 0.5
            for _ in range(tries):
                answered = await self.push_pull(url)
                self._first_tries.discard(url)
                if answered:
                    return
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
        finally:
            self._joining.discard(url)
            self._first_tries.discard(url)

    @property
    def joining(self) -> bool:
        """True until every node we join through (bootstrap, found by mDNS, or that connected to us)
        has answered our join push-pull or failed it once (each try is bounded by ``rpc_timeout_s``)."""
        return bool(self._first_tries)

    async def _push_pull_loop(self) -> None:
        # The first one soon after the join: while many nodes join at once, loaded loops and full receive
        # buffers lose some of the gossip that carries their entries, and the next exchange is minutes
        # away at N = 500 (push_pull_scale). With bucket summaries a push-pull between equal views is ~1 KiB.
        interval = min(JOIN_REPAIR_S, self.push_pull_interval_s)
        while True:
            await asyncio.sleep(interval * self._rng.uniform(0.5, 1.5))  # jittered: no synchronized bursts
            interval = push_pull_scale(self.push_pull_interval_s, self.core.size())
            live = self.core.live()
            if live:
                await self.push_pull(self._rng.choice(live).entry.url)
            elif self.bootstrap:
                await self.push_pull(self._rng.choice(self.bootstrap))

    # Hooks called by the server and by mDNS discovery.

    def on_hello(self, hello: Hello) -> None:
        """A peer connected to us: push-pull with it if the core does not know it yet."""
        if hello.url and hello.node_id != self.node_id and hello.node_id not in self.core.members:
            self._join(hello.url)

    def on_found(self, found: Announcement) -> None:
        """mDNS found a peer: push-pull with it if unknown (or not alive)."""
        member = self.core.members.get(found.node_id)
        if found.node_id != self.node_id and (member is None or member.state in (DEAD, LEFT)):
            self._join(found.url)

    def on_removed(self, node_id: str) -> None:
        """mDNS goodbye: a hint only (mDNS is unsigned): push-pull with that member at once.

        A node leaves (its signed *left* entry) before its mDNS goodbye and
        answers syncs until it closes, so the push-pull usually brings its
        *left* entry, if gossip has not already. If it does not answer, we
        suspect it as after a failed probe: it is declared dead only if it
        does not refute within the suspicion timeout, so a forged goodbye
        costs a live node nothing.
        """
        member = self.core.members.get(node_id)
        if member is not None and member.state == ALIVE and member.entry.url:
            self._spawn(self._check_goodbye(node_id, member.entry.url), "dellm-swim-goodbye")

    async def _check_goodbye(self, node_id: str, url: str) -> None:
        if await self.push_pull(url, gone_is_news=False):
            return
        member = self.core.members.get(node_id)
        if member is not None and member.state == ALIVE:
            self.core.on_suspect(node_id, member.incarnation, self.node_id, asyncio.get_running_loop().time())
            self._flush()
            self._wake.set()  # the suspicion's deadline is new: recompute the tick's wait


def membership_for(config: Any, **kwargs: Any) -> Membership | SwimMembership:
    """The membership ``config.membership`` names (a :class:`~dellm_p2p.config.NodeConfig`), built from ``kwargs``.

    ``kwargs``: node_id, name, url, model, capacity, table, pool, in_flight,
    identity, cluster_key; bootstrap peers and timings come from ``config``.
    """
    cluster_key = kwargs.pop("cluster_key", None)
    membership: Membership | SwimMembership
    if config.membership == "gossip":
        membership = Membership(
            **kwargs,
            bootstrap=config.peers,
            gossip_interval_s=config.gossip_interval_s,
            fanout=config.fanout,
        )
    else:
        swim = SwimConfig(probe_interval_s=config.probe_interval_s, probe_timeout_s=config.probe_interval_s / 2)
        membership = SwimMembership(
            **kwargs,
            bootstrap=config.peers,
            config=swim,
            push_pull_interval_s=config.push_pull_interval_s,
            cluster_key=cluster_key,
            bind_host=getattr(config, "host", None),
        )
    membership.dns.refresh_s = getattr(config, "dns_refresh_s", membership.dns.refresh_s)
    return membership
