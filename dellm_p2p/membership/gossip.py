"""Membership: bootstrap peers, peer exchange by gossip, liveness and RTT.

Every round a node raises its heartbeat, applies the failure-detection
timeouts of its :class:`~dellm_p2p.peer_table.PeerTable`, and exchanges
member lists (push-pull ``members`` frames) with ``fanout`` peers (one
beyond 32 members, see ``large_fanout``): its own
entry in full, every other member as a compact *beat* (id, incarnation,
heartbeat, in-flight); a member the receiver does not know yet is asked for
(``want``) and sent in full by a follow-up push or the reply. A round lasts
``gossip_interval_s`` up to 32 members and grows with log N beyond (see
:meth:`Membership.round_interval`), so per-node gossip traffic grows as
N / log N rather than N. Partners are unknown bootstrap peers, then peers
never reached (in a small network all of them; in a large one through the
exploration slot only), then random alive ones it already holds a connection
to, with one slot for an unconnected peer so the partners keep mixing (see
``Membership._targets``). An exchange also pings the peer (at most every
``ping_every_s`` per peer), feeding its RTT EWMA. A
node that knows one peer therefore learns the rest within a few rounds
(O(log N) rounds for N nodes), and silence propagates as suspect, then dead.
A coordinator-only member (a Swarm: no URL) gossips its own entry like any
node, so peers know its public key; it is never contacted.

Connections are pooled (:class:`~dellm_p2p.pool.PeerPool`): one websocket per
peer, reused by gossip and by coordinators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..client import PeerError
from ..discovery import Announcement
from ..peer_table import Observed, PeerState, PeerTable
from ..pool import PeerPool
from ..protocol import Beat, ErrorCode, Hello, MemberEntry, Members, RewardRecord
from .base import MembershipBase

if TYPE_CHECKING:
    from ..identity import Identity
    from .fitness import FitnessBook

log = logging.getLogger(__name__)

SMALL_NETWORK = 32  # members; beyond: one partner a round, rounds stretch, never-reached peers explored slowly
EXPLORE_PROBABILITY = 1 / 3  # chance per round to gossip with an unconnected peer once the pool is full


def _forget_before(stamps: dict[str, float], horizon: float, members: int) -> dict[str, float]:
    """``stamps`` (key -> monotonic time) without those older than ``horizon``, once it holds
    more than 2 × ``members`` + 64 keys (peers forgotten since); otherwise ``stamps`` itself."""
    if len(stamps) <= 2 * members + 64:
        return stamps
    return {key: at for key, at in stamps.items() if at > horizon}


class Membership(MembershipBase):
    """Keeps a node's peer table current. Hooks: :meth:`on_members`, :meth:`on_hello`, mDNS callbacks.

    Args:
        node_id, name, url: who we are (``url`` is our reachable ``ws://``
            URL; ``None`` for a short-lived coordinator that serves nothing:
            it is gossiped as a url-less member, so peers can check the
            reward records it signs, and is never contacted).
        identity: our key pair (``node_id`` must derive from it); our member
            entry carries its public key. ``None``: we are not gossiped at
            all (a plain observer).
        model, capacity: what we serve, gossiped to peers.
        table: the peer table to maintain.
        pool: connection pool shared with the coordinator.
        bootstrap: ``ws://`` URLs contacted until they answer.
        in_flight: returns how many requests we serve now (gossiped).
        gossip_interval_s: time between rounds [s].
        fanout: peers contacted per round, up to 32 members.
        large_fanout: peers contacted per round beyond 32 members. Every
            exchange carries one beat per member, so at N = 500 three
            partners a round (each also contacting us) made gossip the
            whole CPU of bench_scale's 500 nodes on 2 cores; one partner a
            round is what Cassandra's gossiper does, and push-pull with one
            partner still spreads news in O(log N) rounds (the failure
            timeouts stretch accordingly, see ``_scale_timeouts``).
        rpc_timeout_s: deadline of one exchange (connect, ping, members) [s].
        ping_every_s: an exchange pings its partner (an RTT sample) when the
            last sample of that peer is older than this [s]; the members
            round trip alone still proves the peer alive. Ping and pong are
            two of an exchange's four frames, so most exchanges send half.
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        url: str | None,
        model: str | None,
        capacity: int,
        table: PeerTable,
        pool: PeerPool,
        bootstrap: list[str] | None = None,
        in_flight: Callable[[], int] = lambda: 0,
        gossip_interval_s: float = 0.5,
        fanout: int = 3,
        rpc_timeout_s: float = 3.0,
        identity: Identity | None = None,
        ping_every_s: float = 5.0,
        large_fanout: int = 1,
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
        self.model, self.capacity = model, capacity
        self.gossip_interval_s = gossip_interval_s
        self.fanout = fanout
        self.large_fanout = large_fanout
        self.ping_every_s = ping_every_s
        self.incarnation = time.time_ns() // 1_000_000
        self.heartbeat = 0
        self.left = False
        self._unreachable: dict[str, float] = {}  # url -> time of the last failed attempt
        self._pinged: dict[str, float] = {}  # url -> time of our last RTT sample of it
        self._asked: dict[str, float] = {}  # node id -> when we last asked a peer for its full entry
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._digest: tuple[int, list[MemberEntry], list[Beat]] | None = None
        self.interval_s = gossip_interval_s  # this round's length (grows with the network, see round_interval)
        self._base_timeouts = (table.suspect_after_s, table.dead_after_s)
        self.fitness: FitnessBook | None = None  # set by the owner: reward records ride along (anti-entropy)

    def self_entry(self) -> MemberEntry | None:
        """Our own member entry (``None`` without an identity: an entry must carry a public key)."""
        if self.identity is None:
            return None
        return MemberEntry(
            node_id=self.node_id,
            url=self.url,
            public_key=self.identity.public_key,
            name=self.name,
            model=self.model,
            capacity=self.capacity,
            incarnation=self.incarnation,
            heartbeat=self.heartbeat,
            state="left" if self.left else "alive",
            in_flight=self.in_flight(),
        )

    def digest(self) -> tuple[list[MemberEntry], list[Beat]]:
        """What every exchange sends: our own entry in full (if we have one) and the other members as beats.

        Built once per round (and cached), since every exchange of the round sends it.
        """
        if self._digest is None or self._digest[0] != self.heartbeat:
            me = self.self_entry()
            self._digest = (self.heartbeat, [me] if me is not None else [], self.table.beats())
        return self._digest[1], self._digest[2]

    async def start(self) -> None:
        """Start gossiping in the background (bootstrap DNS names resolved first, then on a schedule)."""
        await self._resolve_bootstrap()
        self._watch_bootstrap(None)  # each round's partners come from `bootstrap` (see _targets)
        self._task = asyncio.create_task(self._run(), name="dellm-membership")

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def say_goodbye(self) -> None:
        """Push our *left* entry to every connected peer (best effort; :meth:`close` bounds it)."""
        self.left = True
        self.heartbeat += 1
        goodbye = self.self_entry()
        if goodbye is not None:
            clients = self.pool.clients()
            await asyncio.gather(*(c.members([goodbye]) for c in clients), return_exceptions=True)

    # Hooks called by the server and by mDNS discovery.

    def on_members(self, message: Members) -> Members:
        """A peer pushed its member list (and recent rewards): merge them, answer with ours."""
        # Wake the loop only for a new or revived peer: heartbeats are news on
        # every push, and waking for them made rounds cascade far above the interval.
        joined = self.table.observe_all(message.entries)
        beat_news, want = self.table.observe_beats(message.beats, self.incarnation)
        want = self._not_asked(want)
        if max(joined, beat_news) is Observed.JOINED:
            self._wake.set()
        if self.fitness is not None:
            self.fitness.receive(message.rewards)
        entries, beats = self.digest()
        if message.want:
            entries = entries + self.table.entries_for(message.want)
        return Members.model_construct(  # our own, already validated data (see PeerClient.members)
            nonce=message.nonce,
            reply=True,
            entries=entries,
            beats=self._news_for(message, beats),
            want=want,
            rewards=self._recent_rewards(),
        )

    @staticmethod
    def _news_for(message: Members, beats: list[Beat]) -> list[Beat]:
        """Of our ``beats``, those newer than what the pushing peer sent (or that it did not send).

        The rest would be no news to it: the reply carries about half of the
        members instead of all of them, halving the reply's bytes and the
        initiator's merge work.
        """
        theirs = {b[0]: (b[1], b[2]) for b in message.beats}
        for entry in message.entries:
            theirs[entry.node_id] = (entry.incarnation, entry.heartbeat)
        floor = (-1, -1)
        return [b for b in beats if theirs.get(b[0], floor) < (b[1], b[2])]

    def _not_asked(self, want: list[str]) -> list[str]:
        """The ids of ``want`` not asked for within ``rpc_timeout_s``, now marked as asked.

        A newcomer hears of the same unknown members from each partner of a
        round; asking each of them for every full entry multiplied the join
        cost (bench_scale, N = 500). One ask per member, repeated only if its
        answer did not come.
        """
        if not want:
            return want
        now = time.monotonic()
        horizon = now - self.rpc_timeout_s
        self._asked = _forget_before(self._asked, horizon, len(self.table))
        fresh = [node_id for node_id in want if self._asked.get(node_id, -1e9) <= horizon]
        for node_id in fresh:
            self._asked[node_id] = now
        return fresh

    def _recent_rewards(self) -> list[RewardRecord]:
        return self.fitness.recent() if self.fitness is not None else []

    def on_hello(self, hello: Hello) -> None:
        """A peer connected to us: a node with a URL or a public key becomes a candidate peer.

        A coordinator (no URL, a public key) is thus known as a member before
        it sends its first reward records on this connection.
        """
        if (hello.url or hello.public_key) and hello.node_id != self.node_id:
            self._add(hello.node_id, hello.url, "inbound", hello.model, hello.capacity, hello.name, hello.public_key)

    def on_found(self, found: Announcement) -> None:
        """mDNS found a peer."""
        self._add(found.node_id, found.url, "mdns", found.model, found.capacity, "")

    def on_removed(self, node_id: str) -> None:
        """mDNS goodbye: the peer stopped cleanly."""
        self.table.mark_left(node_id)

    def _add(
        self,
        node_id: str,
        url: str | None,
        source: str,
        model: str | None,
        capacity: int,
        name: str,
        public_key: bytes | None = None,
    ) -> None:
        known = self.table.get(node_id)
        if known is None or known.state is not PeerState.ALIVE or (public_key and known.public_key is None):
            self.table.add_candidate(node_id, url, source, public_key, model=model, capacity=capacity, name=name)
            if url:
                self._wake.set()  # contact it now rather than at the next tick

    # The gossip loop.

    async def _run(self) -> None:
        while True:
            try:
                await self._round()
            except Exception:  # one bad round must not stop membership
                log.exception("gossip round failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()

    async def _round(self) -> None:
        self.heartbeat += 1
        self._scale_timeouts()
        for node_id, state in self.table.sweep():
            if state is PeerState.DEAD:
                peer = self.table.get(node_id)
                if peer is not None:
                    await self.pool.drop(peer.url, f"peer {node_id} is dead (silent past the failure timeout)")
        self._pinged = _forget_before(self._pinged, time.monotonic() - 10 * self.ping_every_s, len(self.table))
        async with asyncio.TaskGroup() as tasks:
            for url in self._targets():
                tasks.create_task(self._exchange(url))

    def round_interval(self, size: int) -> float:
        """Length of a gossip round [s] in a network of ``size`` nodes.

        ``gossip_interval_s`` up to 32 nodes, then multiplied by
        ceil(log2 N − log2 32) + 1 (hashicorp/memberlist's ``pushPullScale``
        rule for its full-state exchanges): every exchange carries one beat
        per member, so a fixed rate would make each node's gossip traffic
        and CPU grow linearly with N (at N = 500 and 0.5 s: ~200 KB/s per
        node, and more CPU than bench_scale's 500 simulated nodes have).
        """
        if size <= SMALL_NETWORK:
            return self.gossip_interval_s
        return self.gossip_interval_s * (math.ceil(math.log2(size) - 5) + 1)

    def partners(self, size: int) -> int:
        """Exchanges a node starts per round among ``size`` nodes: ``fanout``, or ``large_fanout`` beyond 32."""
        return self.fanout if size <= SMALL_NETWORK else min(self.fanout, self.large_fanout)

    def _scale_timeouts(self) -> None:
        """Stretch the round length and the failure-detection timeouts with the network size.

        A heartbeat needs about log_fanout(N) gossip rounds to reach every
        node, so fixed timeouts produce false suspicions in large networks
        (SWIM and Lifeguard scale theirs the same way). The configured values
        are the minimum: suspect after max(configured, round × (2 + 2 ×
        log_fanout N)), the round as :meth:`round_interval`; dead after the
        same multiple of the configured ratio; the log's base is the
        partners per round (:meth:`partners`), at least 2 (with push-pull,
        one partner a round still doubles what a rumor reaches).
        """
        suspect, dead = self._base_timeouts
        size = max(2, len(self.table) + 1)
        self.interval_s = self.round_interval(size)
        spread = self.interval_s * (2 + 2 * math.log(size, max(2, self.partners(size))))
        self.table.suspect_after_s = max(suspect, spread)
        self.table.dead_after_s = self.table.suspect_after_s * dead / suspect

    def _targets(self) -> list[str]:
        """This round's partners: up to :meth:`partners` URLs.

        Unknown bootstrap peers first, then peers never reached (their RTT is
        unknown) — all of them in a small network, so RTTs are known within
        a round or two; beyond :data:`SMALL_NETWORK` members only through the
        exploration slot below, since contacting hundreds at once is a
        connection storm (bench_scale, N = 500). Then peers we already hold a
        connection to: a new websocket costs a TCP and hello handshake on
        both sides, and with hundreds of peers random picks mostly missed the
        pool (bench_scale, N = 500: 220 connects/s). One slot per round still
        explores an unconnected peer, never-reached ones first (while the
        pool has room in a small network; otherwise one round in three), so
        partners keep mixing.
        """
        now = time.monotonic()
        retry_after = max(5 * self.interval_s, 2.0)
        peers = self.table.alive()
        large = len(peers) > SMALL_NETWORK
        count = self.partners(len(peers))
        fresh = [] if large else [p.url for p in peers if p.rtt_ms is None]
        known_urls = {p.url for p in self.table.records()}
        boot = [u for u in self.bootstrap if u not in known_urls]
        candidates = [u for u in dict.fromkeys(boot + fresh) if now - self._unreachable.get(u, -1e9) > retry_after]
        chosen = candidates[:count]
        wanted = count - len(chosen)
        if wanted <= 0:
            return chosen
        # Sampled, not shuffled: this runs every round over every known peer.
        open_urls = self.pool.open_urls()
        rest = [p for p in peers if p.url not in candidates]
        connected = [p.url for p in rest if p.url in open_urls]
        others = [p for p in rest if p.url not in open_urls and now - self._unreachable.get(p.url, -1e9) > retry_after]
        # A large network gossips with one partner a round: exploring whenever
        # the pool had room made every round a new connection (bench_scale,
        # N = 500: 168 connects/s, a quarter of the CPU).
        room = not large and len(open_urls) < self.pool.max_connections
        explore = min(len(others), 1 if room or random.random() < EXPLORE_PROBABILITY else 0)
        picks = random.sample(connected, min(len(connected), wanted - explore))
        need = wanted - len(picks)  # the exploration slot, plus what the pool could not fill
        never = [p for p in others if p.rtt_ms is None]
        seen = [p for p in others if p.rtt_ms is not None]
        explored = random.sample(never, min(len(never), need))
        explored += random.sample(seen, min(len(seen), need - len(explored)))
        picks += [p.url for p in explored]
        return chosen + picks

    async def _exchange(self, url: str) -> None:
        try:
            async with asyncio.timeout(self.rpc_timeout_s):
                client = await self.pool.get(url)
                rtt = None
                if time.monotonic() - self._pinged.get(url, -1e9) >= self.ping_every_s:
                    rtt = await client.ping(self.rpc_timeout_s)
                    self._pinged[url] = time.monotonic()
                entries, beats = self.digest()
                reply = await client.members(entries, self.rpc_timeout_s, rewards=self._recent_rewards(), beats=beats)
                self.table.observe_all(reply.entries)
                _, want = self.table.observe_beats(reply.beats, self.incarnation)
                want = self._not_asked(want)
                if want or reply.want:  # one more push: the entries it asked for, and ours to ask for
                    extra = entries + self.table.entries_for(reply.want)
                    more = await client.members(extra, self.rpc_timeout_s, want=want)
                    self.table.observe_all(more.entries)
        except (PeerError, TimeoutError) as exc:
            if self._keep_busy(url, exc):
                return
            why = str(exc) or f"no reply within {self.rpc_timeout_s:g} s"
            await self.pool.drop(url, f"gossip exchange failed: {why}")
            # Log once per cause: a refusal (logged by _refused) or the first failure to reach it.
            if not self._refused(url, exc) and url not in self._unreachable:
                log.warning("cannot reach peer at %s: %s", url, why)
            self._unreachable[url] = time.monotonic()
            return
        self._unreachable.pop(url, None)
        self.refusals.pop(url, None)
        remote = client.remote
        if remote.node_id == self.node_id:
            return
        self._add(remote.node_id, url, "bootstrap", remote.model, remote.capacity, remote.name, remote.public_key)
        if rtt is not None:
            self.table.record_rtt(remote.node_id, rtt)
        else:
            self.table.touch(remote.node_id)
        if self.fitness is not None:
            self.fitness.receive(reply.rewards)

    def _keep_busy(self, url: str, exc: BaseException) -> bool:
        """True when a failed exchange must not drop the connection: it timed out on a busy one.

        The pooled connection is shared with generate streams; under load a
        ping or members reply can queue behind their tokens. Dropping it then
        would kill those streams. The exchange simply gives no liveness
        evidence (no RTT sample, ``last_seen`` not refreshed), so a peer that
        is really gone still turns suspect, then dead (and is dropped then);
        a half-open connection is closed by the websocket keepalive. Idle or
        closed connections, and errors other than timeouts, are dropped.
        """
        client = self.pool.connection(url)
        timed_out = isinstance(exc, TimeoutError) or getattr(exc, "code", None) == ErrorCode.TIMEOUT
        if client is None or not timed_out or not client.busy:
            return False
        log.info("gossip with %s timed out on a busy connection; keeping it (no liveness evidence)", url)
        return True
