"""The peer table: what a node knows about every other node, and failure detection.

Pure bookkeeping, no I/O (the gossip service in :mod:`dellm_p2p.membership`
feeds it). Liveness follows gossip-style failure detection (van Renesse,
Minsky and Hayden, 1998): every node increases its own heartbeat counter each
round and gossips it; a peer whose heartbeat has not advanced for
``suspect_after_s`` becomes *suspect*, after ``dead_after_s`` *dead* (out of
routing), and is forgotten after ``forget_after_s``. A node that stops
cleanly gossips state *left* (and says goodbye over mDNS): peers drop it at
once. A restarted node has a higher incarnation (its start time), so it
rejoins with the same id.

Identity: a node id is derived from the node's public key
(:mod:`dellm_p2p.identity`). An entry or candidate whose id does not derive
from the public key it carries is dropped, logged once per id and counted
in :attr:`PeerTable.identity_rejected`. Peers learned without a key (mDNS,
or a hello without one) are kept but not gossiped until their key is known.
A member without a URL is a coordinator-only member (a
:class:`~dellm_p2p.swarm.Swarm`): it is known, so its reward records can
be checked, but never contacted nor routed to (:meth:`PeerTable.alive` leaves it out).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from .identity import node_id_matches
from .protocol import Beat, MemberEntry, PeerRow

log = logging.getLogger(__name__)


class Observed(IntEnum):
    """What a gossip entry told us (ordered: ``max`` of several is the most significant)."""

    NOTHING = 0
    UPDATED = 1  # a newer heartbeat of a known peer
    JOINED = 2  # a new peer, or one back from dead or left


class PeerState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


@dataclass
class PeerRecord:
    """One known peer.

    Attributes:
        node_id, url, name, model, capacity: as the peer announces them
            (``url`` is ``None`` for a coordinator-only member).
        public_key: its raw 32-byte Ed25519 public key (``node_id`` derives
            from it), ``None`` until learned.
        incarnation: the peer's start time [ms since the epoch].
        heartbeat: the highest heartbeat counter seen for it.
        in_flight: requests the peer reported serving.
        rtt_ms: EWMA of our ping round trips to it [ms], ``None`` until measured.
        fitness: routing fitness in [0, 1] (the coordinator's reward rule).
        rewards: how many reward records this fitness rests on (routing
            explores peers with few, see :mod:`dellm_p2p.coordinator.route`).
        agreed: how many of those rewarded agreement with the vote (reward > 0).
        last_seen: ``clock()`` when its heartbeat last advanced or it answered us [s].
        state: alive, suspect, dead or left.
        state_since: ``clock()`` when SWIM last changed its state [s] (0: never);
            a dead or left peer is forgotten ``forget_after_s`` after the later
            of this and ``last_seen``.
        source: how we learned of it (mdns, bootstrap, gossip, inbound).
    """

    node_id: str
    url: str | None
    name: str = ""
    model: str | None = None
    capacity: int = 0
    public_key: bytes | None = None
    incarnation: int = 0
    heartbeat: int = 0
    in_flight: int = 0
    rtt_ms: float | None = None
    fitness: float = 0.5
    rewards: int = 0
    agreed: int = 0
    last_seen: float = 0.0
    state: PeerState = PeerState.ALIVE
    source: str = "gossip"
    state_since: float = 0.0

    @property
    def version(self) -> tuple[int, int]:
        return (self.incarnation, self.heartbeat)

    def entry(self) -> MemberEntry:
        """This record as a gossip entry (built unvalidated: the fields were validated on the way in)."""
        return MemberEntry.model_construct(
            node_id=self.node_id,
            url=self.url,
            public_key=self.public_key,
            name=self.name,
            model=self.model,
            capacity=self.capacity,
            incarnation=self.incarnation,
            heartbeat=self.heartbeat,
            state="left" if self.state is PeerState.LEFT else "alive",
            in_flight=self.in_flight,
        )

    def row(self, now: float) -> PeerRow:
        """This record as a row of a ``peers`` frame."""
        return PeerRow(
            node_id=self.node_id,
            url=self.url,
            name=self.name,
            model=self.model,
            capacity=self.capacity,
            in_flight=self.in_flight,
            rtt_ms=round(self.rtt_ms, 3) if self.rtt_ms is not None else None,
            fitness=round(self.fitness, 4),
            last_seen_s=round(max(0.0, now - self.last_seen), 3),
            state=self.state.value,
            source=self.source,
            rewards=self.rewards,
            agreed=self.agreed,
        )


class PeerTable:
    """Known peers keyed by node id, with timeouts-driven state.

    Args:
        self_id: our node id (entries for it are never stored; a foreign
            entry carrying it is a duplicate id and is reported once).
        self_url: our URL, to tell our own entry from a duplicate's.
        suspect_after_s: silence before a peer is suspect [s].
        dead_after_s: silence before a peer is dead and out of routing [s].
        forget_after_s: silence before a dead or left peer is dropped [s].
        max_peers: table size bound; entries beyond it are ignored.
        rtt_alpha: EWMA weight of a new RTT sample.
        clock: monotonic clock [s] (injectable for tests).
    """

    def __init__(
        self,
        self_id: str,
        self_url: str = "",
        *,
        suspect_after_s: float = 3.0,
        dead_after_s: float = 8.0,
        forget_after_s: float = 60.0,
        max_peers: int = 4096,
        rtt_alpha: float = 0.3,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.self_id = self_id
        self.self_url = self_url
        self.suspect_after_s = suspect_after_s
        self.dead_after_s = dead_after_s
        self.forget_after_s = forget_after_s
        self.max_peers = max_peers
        self.rtt_alpha = rtt_alpha
        self.clock = clock
        self.duplicates: set[str] = set()
        self.identity_rejected = 0  # entries and candidates whose node id does not derive from their key
        self._identity_warned: set[str] = set()
        # Fitness a newly known peer starts with (the fitness book restores saved values).
        self.initial_fitness: Callable[[str], float] = lambda node_id: 0.5
        # (agreed, rewards) counts a newly known peer starts with (the fitness book restores saved ones).
        self.initial_counts: Callable[[str, str | None], tuple[int, int]] = lambda node_id, model=None: (0, 0)
        self._peers: dict[str, PeerRecord] = {}
        # False under SWIM membership: states come from the failure detector
        # (:meth:`apply_member`), not from heartbeat silence; :meth:`sweep` only forgets.
        self.detect = True

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._peers

    def get(self, node_id: str) -> PeerRecord | None:
        return self._peers.get(node_id)

    def records(self) -> list[PeerRecord]:
        return list(self._peers.values())

    def alive(self) -> list[PeerRecord]:
        """Peers that may receive work: alive or suspect (not dead, not left), with a URL (not coordinators)."""
        return [p for p in self._peers.values() if p.url and p.state in (PeerState.ALIVE, PeerState.SUSPECT)]

    def check_identity(self, node_id: str, public_key: bytes | None, where: str) -> bool:
        """True when ``node_id`` derives from ``public_key``; else counts, logs once per id, returns False.

        ``where`` names the source for the log line (e.g. ``gossip``, ``hello from ws://…``).
        """
        if node_id_matches(node_id, public_key):
            return True
        self.identity_rejected += 1
        if node_id not in self._identity_warned and len(self._identity_warned) < 1024:
            self._identity_warned.add(node_id)
            log.warning("dropping node %s (%s): its id does not derive from its public key", node_id[:64], where)
        return False

    def by_url(self, url: str) -> PeerRecord | None:
        return next((p for p in self._peers.values() if p.url == url), None)

    def observe(self, entry: MemberEntry, source: str = "gossip") -> Observed:
        """Merge one gossip entry; says whether it told us nothing, a newer heartbeat, or of a (re)joined peer.

        An entry wins only with a higher (incarnation, heartbeat) than ours,
        so stale gossip never revives a dead peer.
        """
        if entry.node_id == self.self_id:
            if (entry.url or "") != (self.self_url or "") and entry.node_id not in self.duplicates:
                self.duplicates.add(entry.node_id)
                log.error("duplicate node id %s: another node at %s uses our id", entry.node_id, entry.url)
            return Observed.NOTHING
        known = self._peers.get(entry.node_id)
        if known is None or known.public_key != entry.public_key:
            if not self.check_identity(entry.node_id, entry.public_key, source):
                return Observed.NOTHING
            if known is not None:
                if known.public_key is not None:  # a second key deriving the same id: a hash collision
                    return Observed.NOTHING
                known.public_key = entry.public_key
        now = self.clock()
        if known is None:
            if entry.state == "left" or len(self._peers) >= self.max_peers:
                return Observed.NOTHING
            record = self._record(entry, source, now)
            record.fitness = self.initial_fitness(entry.node_id)
            record.agreed, record.rewards = self.initial_counts(entry.node_id, entry.model)
            self._peers[entry.node_id] = record
            log.info("peer %s joined at %s (%s)", entry.node_id, entry.url, source)
            return Observed.JOINED
        if (entry.incarnation, entry.heartbeat) <= known.version:
            return Observed.NOTHING
        if entry.url != known.url:
            if entry.incarnation == known.incarnation:
                log.warning("node id %s announced from %s and %s: duplicate id?", entry.node_id, known.url, entry.url)
            known.url, known.rtt_ms = entry.url, None
        # Updated in place: this runs for every entry of every exchange.
        known.name, known.model, known.capacity = entry.name, entry.model, entry.capacity
        known.incarnation = entry.incarnation
        return self._advance(known, entry.heartbeat, entry.in_flight, entry.state == "left", now)

    @staticmethod
    def _advance(known: PeerRecord, heartbeat: int, in_flight: int, left: bool, now: float) -> Observed:
        """Apply a newer heartbeat (from an entry or a beat): liveness, load, alive or left; a revival is JOINED."""
        revived = known.state in (PeerState.DEAD, PeerState.LEFT) and not left
        known.heartbeat, known.in_flight, known.last_seen = heartbeat, in_flight, now
        known.state = PeerState.LEFT if left else PeerState.ALIVE
        if revived:
            log.info("peer %s rejoined at %s", known.node_id, known.url)
            return Observed.JOINED
        return Observed.UPDATED

    def add_candidate(
        self, node_id: str, url: str | None, source: str, public_key: bytes | None = None, **fields
    ) -> None:
        """Add a peer heard of outside gossip (mDNS, inbound hello) if unknown or revived.

        ``public_key`` (from a hello), when given, must derive ``node_id``
        (else the candidate is dropped and counted); it fills in a known
        peer's missing key.
        """
        known = self._peers.get(node_id)
        if node_id == self.self_id:
            return
        if public_key is not None:
            if not self.check_identity(node_id, public_key, source):
                return
            if known is not None and known.public_key is None:
                known.public_key = public_key
        if known is not None and known.state is PeerState.ALIVE:
            return
        if known is None and len(self._peers) >= self.max_peers:
            return
        record = PeerRecord(node_id=node_id, url=url, source=source, last_seen=self.clock(), **fields)
        record.fitness = self.initial_fitness(node_id)
        record.agreed, record.rewards = self.initial_counts(node_id, record.model)
        record.public_key = public_key
        if known is not None:  # dead or left before: keep its version so only newer gossip wins
            record.incarnation, record.heartbeat, record.fitness = known.incarnation, known.heartbeat, known.fitness
            record.agreed, record.rewards = known.agreed, known.rewards
            record.public_key = known.public_key or public_key
        self._peers[node_id] = record

    def touch(self, node_id: str) -> None:
        """The peer answered us directly: it is alive now."""
        peer = self._peers.get(node_id)
        if peer is not None and peer.state is not PeerState.LEFT:
            peer.last_seen = self.clock()
            peer.state = PeerState.ALIVE

    def record_rtt(self, node_id: str, rtt_ms: float) -> None:
        """Fold a ping round trip [ms] into the peer's EWMA."""
        peer = self._peers.get(node_id)
        if peer is not None:
            a = self.rtt_alpha
            peer.rtt_ms = rtt_ms if peer.rtt_ms is None else (1 - a) * peer.rtt_ms + a * rtt_ms
            self.touch(node_id)

    def mark_left(self, node_id: str) -> None:
        """The peer said goodbye (mDNS removal or a *left* entry)."""
        peer = self._peers.get(node_id)
        if peer is not None and peer.state is not PeerState.LEFT:
            peer.state = PeerState.LEFT
            log.info("peer %s left", node_id)

    def apply_member(
        self,
        node_id: str,
        state: PeerState,
        *,
        url: str | None,
        public_key: bytes,
        name: str,
        model: str | None,
        capacity: int,
        incarnation: int,
        source: str = "gossip",
    ) -> PeerState | None:
        """Set a member as the SWIM failure detector sees it (its signed entry, checked by the caller).

        Returns the state it had before (``None``: new). A dead member keeps
        the ``last_seen`` of its last contact (``dellm peers``: silent for so
        long), a left one gets now; :meth:`sweep` forgets either
        ``forget_after_s`` after it became so (``state_since``).
        """
        if node_id == self.self_id:
            return None
        now = self.clock()
        known = self._peers.get(node_id)
        if known is None:
            if len(self._peers) >= self.max_peers or state in (PeerState.DEAD, PeerState.LEFT):
                return None
            known = self._peers[node_id] = PeerRecord(node_id=node_id, url=url, source=source, last_seen=now)
            known.fitness = self.initial_fitness(node_id)
            known.agreed, known.rewards = self.initial_counts(node_id, model)
            log.info("peer %s joined at %s (%s)", node_id, url, source)
            before = None
        else:
            before = known.state
        if known.url != url:
            known.url, known.rtt_ms = url, None
        known.public_key, known.name, known.model, known.capacity = public_key, name, model, capacity
        known.incarnation = incarnation
        if state is not before:
            known.state = state
            # Forgetting counts from the change, not from the last contact: under SWIM a node hears
            # from a member directly once per probe pass (N × period), so counting from last_seen forgot
            # a dead member within a second of its death, before `dellm peers` could show it dead.
            known.state_since = now
            if state is PeerState.ALIVE:
                known.last_seen = now
            elif state in (PeerState.DEAD, PeerState.LEFT):
                known.last_seen = min(known.last_seen, now) if state is PeerState.DEAD else now
            if before is not None:
                level = logging.WARNING if state is PeerState.DEAD else logging.INFO
                log.log(level, "peer %s at %s is %s (was %s)", node_id, url, state.value, before.value)
        return before

    def sweep(self) -> list[tuple[str, PeerState]]:
        """Apply timeouts; returns the (node_id, new state) transitions."""
        now = self.clock()
        changes: list[tuple[str, PeerState]] = []
        for node_id, peer in list(self._peers.items()):
            silent = now - peer.last_seen
            if peer.state in (PeerState.DEAD, PeerState.LEFT):
                if now - max(peer.last_seen, peer.state_since) > self.forget_after_s:
                    del self._peers[node_id]
                continue
            if not self.detect:
                continue
            new = (
                PeerState.DEAD
                if silent > self.dead_after_s
                else PeerState.SUSPECT
                if silent > self.suspect_after_s
                else PeerState.ALIVE
            )
            if new is not peer.state:
                peer.state = new
                changes.append((node_id, new))
                if new is PeerState.DEAD:
                    log.warning("peer %s at %s is dead (silent for %.1f s)", node_id, peer.url, silent)
        return changes

    def digest(self) -> list[MemberEntry]:
        """Entries worth gossiping: alive and suspect peers, and recent goodbyes.

        Dead peers are not passed on, so stale news dies out; suspect ones
        are, since under load a slow path may be the only one carrying their
        heartbeats (an equal or older version never revives anyone). Peers
        whose public key we do not know yet are not either (an entry must
        carry one).
        """
        return [p.entry() for p in self._peers.values() if p.state is not PeerState.DEAD and p.public_key is not None]

    def beats(self) -> list[Beat]:
        """The liveness part of :meth:`digest` (same members), one compact tuple each.

        Gossip sends these instead of full entries: a member's static fields
        (URL, key, model) reach a node once, on request (``want``), and its
        heartbeat then travels as ~33 bytes instead of ~180 (bench_scale).
        """
        return [
            (p.node_id, p.incarnation, p.heartbeat, p.in_flight, p.state is PeerState.LEFT)
            for p in self._peers.values()
            if p.state is not PeerState.DEAD and p.public_key is not None
        ]

    def entries_for(self, node_ids: Iterable[str]) -> list[MemberEntry]:
        """Full gossip entries of the given members, skipping those :meth:`digest` would not send."""
        records = (self._peers.get(node_id) for node_id in node_ids)
        return [p.entry() for p in records if p is not None and p.state is not PeerState.DEAD and p.public_key]

    def observe_beats(self, beats: Iterable[Beat], self_incarnation: int | None = None) -> tuple[Observed, list[str]]:
        """Merge liveness beats; returns the most significant :class:`Observed` and the ids to ask for.

        A beat is applied like :meth:`observe` applies an entry, but only to
        a member known in full with the same incarnation: a beat for an
        unknown member, one whose key we lack or a newer incarnation (a
        restart, maybe at a new URL) is not applied; its node id is returned
        so the caller asks for the full entry (``want``). A beat carrying our
        own id with another incarnation than ``self_incarnation`` is asked
        for too: the full entry tells a duplicate id from our own past.
        """
        now = self.clock()
        result = Observed.NOTHING
        updated = False
        want: list[str] = []
        peers = self._peers
        alive = PeerState.ALIVE
        # Runs on every exchange over every member (bench_scale, N = 500: the
        # largest share of gossip CPU), hence the inlined common case.
        for node_id, incarnation, heartbeat, in_flight, left in beats:
            known = peers.get(node_id)
            if known is None or known.public_key is None or incarnation > known.incarnation:
                if node_id == self.self_id:
                    if self_incarnation is not None and incarnation != self_incarnation:
                        want.append(node_id)
                elif not left and (known is not None or len(peers) < self.max_peers):
                    want.append(node_id)
                continue
            if heartbeat <= known.heartbeat or incarnation < known.incarnation:
                continue
            if known.state is alive and not left:  # the common case: a live peer's newer heartbeat
                known.heartbeat, known.in_flight, known.last_seen = heartbeat, in_flight, now
                updated = True
            elif self._advance(known, heartbeat, in_flight, left, now) is Observed.JOINED:
                result = Observed.JOINED
            else:
                updated = True
        if updated and result is Observed.NOTHING:
            result = Observed.UPDATED
        return result, want

    def rows(self) -> list[PeerRow]:
        now = self.clock()
        return [p.row(now) for p in sorted(self._peers.values(), key=lambda p: (p.name, p.node_id))]

    @staticmethod
    def _record(entry: MemberEntry, source: str, now: float) -> PeerRecord:
        return PeerRecord(
            node_id=entry.node_id,
            url=entry.url,
            public_key=entry.public_key,
            name=entry.name,
            model=entry.model,
            capacity=entry.capacity,
            incarnation=entry.incarnation,
            heartbeat=entry.heartbeat,
            in_flight=entry.in_flight,
            last_seen=now,
            state=PeerState.LEFT if entry.state == "left" else PeerState.ALIVE,
            source=source,
        )

    def observe_all(self, entries: Iterable[MemberEntry], source: str = "gossip") -> Observed:
        """Merge many entries; returns the most significant :class:`Observed` among them."""
        return max((self.observe(e, source) for e in entries), default=Observed.NOTHING)
