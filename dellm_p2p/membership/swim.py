"""SWIM failure detection with Lifeguard's refinements, sans-I/O.

The state machine of Das, Gupta and Motivala, "SWIM: Scalable Weakly-consistent
Infection-style Process Group Membership Protocol" (2002), with the
refinements of Dadgar, Phillips and Currey, "Lifeguard: Local Health
Awareness for More Accurate Failure Detection" (2018), shaped like HashiCorp
memberlist (state.go, suspicion.go, awareness.go, queue.go). No sockets, no
asyncio, no clock of its own: the caller feeds messages and the time in
(:meth:`Swim.handle`, :meth:`Swim.tick`) and takes messages and events out
(:meth:`Swim.take_sends`, :meth:`Swim.take_events`), the way the
``websockets`` library keeps its protocol core.

Protocol period (``probe_interval_s``, scaled by the local health
multiplier): the node probes one member, the next of a shuffled list
(round-robin; the list is reshuffled after each pass, so every member is
probed once per pass, SWIM section 4.3). No ``ack`` within the probe
timeout: ``ping_req`` to ``indirect_checks`` other members, which probe the
target for us and answer ``ack`` (relayed) or ``nack`` (Lifeguard: a missing
nack points at our own slowness). No ack by the end of the period: the
member becomes *suspect*, with us as the claimant.

Suspicion (Lifeguard section 4.2, memberlist suspicion.go): a suspect member
is declared *dead* after a timeout that starts at ``max = suspicion_max_mult
× min`` and shrinks towards ``min = suspicion_mult × max(1, log10 N) ×
probe_interval`` as independent claimants confirm it: after c of the k =
``suspicion_mult − 2`` expected confirmations the timeout is ``max − (max −
min) × log(c + 1) / log(k + 1)``. A member that learns it is suspected (or
declared dead) refutes at once: it raises its incarnation above the claim's
and gossips its signed alive entry; a claim at a lower incarnation than
known is ignored.

Local health (Lifeguard section 4.1, memberlist awareness.go): a score in
[0, ``awareness_max`` − 1]; +1 per probe that failed while relays did not
answer nacks either (per missing nack), +1 when refuting a suspicion about
ourselves, −1 per successful probe. Probe timeouts and the protocol period
are multiplied by score + 1, so a node whose own event loop is slow probes
less eagerly and suspects less.

Dissemination (SWIM section 4.1, memberlist queue.go): every change (alive,
suspect, dead, left entries, and reward records) goes into a broadcast queue
and rides on outgoing ``ping``, ``ack``, ``ping_req`` and ``gossip``
messages; each is sent ``retransmit_mult × ceil(log10(N + 1))`` times, least
sent first, then dropped. A ``gossip`` message goes to ``gossip_nodes``
random members every ``gossip_interval_s`` only while the queue is not
empty, so a quiet network costs one probe (and its ack) per period per node,
whatever N.

Signed member state: a member's own entry (URL, name, model, capacity,
incarnation, alive or left) is signed with its Ed25519 key
(:class:`SignedEntry`); only the member can produce a newer one, so only it
can refute a suspicion or change its URL. Suspect and dead claims about
others are not signed but carry the claimant's node id. Entries that do not
verify (or name a key other than the member's) are counted as *forged*,
entries older than the known incarnation as *stale*, and an alive entry at
the incarnation its member already left at (or below a forgotten member's
tombstone) as *replayed*; all are dropped (:attr:`Swim.counters`).

Wire shapes (msgpack; see ``swim`` in :mod:`dellm_p2p.protocol`). Changes:

* ``["a", node_id, incarnation, url, public_key, name, model, capacity, left, signature]``
* ``["s", node_id, incarnation, claimant]`` (suspect), ``["d", …]`` (dead)
* ``["r", reward_record_map]``
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..identity import Identity, node_id_matches, verify_signature

ALIVE, SUSPECT, DEAD, LEFT = "alive", "suspect", "dead", "left"
_RANK = {ALIVE: 0, SUSPECT: 1, DEAD: 2, LEFT: 3}
_STATE_OF_RANK = {v: k for k, v in _RANK.items()}
MEMBER_SIGNING_CONTEXT = b"dellm-member/1\n"
COUNTERS = ("member_forged", "member_stale", "member_replayed", "member_refuted", "probes", "probes_failed")


@dataclass(frozen=True, slots=True)
class SignedEntry:
    """A member's own entry, signed by the member (only it can make a newer one).

    Attributes:
        node_id: derived from ``public_key`` (see :mod:`dellm_p2p.identity`).
        url: where it listens (``None``: a coordinator, never probed).
        public_key: raw 32-byte Ed25519 key.
        name, model, capacity: what it serves (capacity in concurrent requests).
        incarnation: raised by the member to refute a suspicion or to change
            its entry; starts at its start time [ms since the epoch].
        left: the member declares it left the network.
        signature: Ed25519 signature over :meth:`signing_bytes` (64 bytes).
    """

    node_id: str
    url: str | None
    public_key: bytes
    name: str
    model: str | None
    capacity: int
    incarnation: int
    left: bool
    signature: bytes = b""

    def signing_bytes(self) -> bytes:
        """The canonical bytes the signature covers: a context, then every field as length-prefixed UTF-8 or u64."""

        def text(value: str | None) -> bytes:
            raw = b"\xff" if value is None else value.encode()  # 0xff: not valid UTF-8, so None != ""
            return struct.pack(">H", len(raw)) + raw

        return b"".join(
            (
                MEMBER_SIGNING_CONTEXT,
                text(self.node_id),
                text(self.url),
                self.public_key,
                text(self.name),
                text(self.model),
                struct.pack(">QQ?", self.capacity, self.incarnation, self.left),
            )
        )

    @classmethod
    def signed(cls, identity: Identity, **fields: Any) -> SignedEntry:
        """A new entry for ``identity`` with ``fields`` (url, name, model, capacity, incarnation, left), signed."""
        entry = cls(node_id=identity.node_id, public_key=identity.public_key, **fields)
        return _replace(entry, signature=identity.sign(entry.signing_bytes()))

    def to_wire(self) -> list:
        return [
            "a",
            self.node_id,
            self.incarnation,
            self.url,
            self.public_key,
            self.name,
            self.model,
            self.capacity,
            self.left,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, raw: Any) -> SignedEntry | None:
        """Parse ``["a", …]``; ``None`` when malformed (wrong arity or types, out-of-range numbers)."""
        if not isinstance(raw, list | tuple) or len(raw) != 10:
            return None
        _, node_id, inc, url, key, name, model, cap, left, sig = raw
        if not (
            isinstance(node_id, str)
            and 0 < len(node_id) <= 128
            and _u64(inc)
            and (url is None or (isinstance(url, str) and 0 < len(url) <= 256))
            and isinstance(key, bytes)
            and len(key) == 32
            and isinstance(name, str)
            and len(name) <= 128
            and (model is None or (isinstance(model, str) and len(model) <= 256))
            and _u64(cap)
            and isinstance(left, bool)
            and isinstance(sig, bytes)
            and len(sig) == 64
        ):
            return None
        return cls(node_id, url, key, name, model, cap, inc, left, sig)

    def verify(self) -> bool:
        """True when the node id derives from the key and the signature checks (cached per process)."""
        return node_id_matches(self.node_id, self.public_key) and _verified(
            self.public_key, self.signature, self.signing_bytes()
        )


def _replace(entry: SignedEntry, **changes: Any) -> SignedEntry:
    fields = {name: getattr(entry, name) for name in SignedEntry.__slots__}
    fields.update(changes)
    return SignedEntry(**fields)


def _u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64


@functools.lru_cache(maxsize=16384)
def _verified(public_key: bytes, signature: bytes, data: bytes) -> bool:
    # Sound to cache: a signature that checked once checks forever. Nodes sharing a process (tests,
    # bench_scale) then verify each entry once, not once per node.
    return verify_signature(public_key, signature, data)


@dataclass
class SwimConfig:
    """Timing and fan-out of the failure detector (defaults: memberlist's LAN profile, tightened for seconds).

    Attributes:
        probe_interval_s: protocol period [s] (memberlist LAN: 1 s).
        probe_timeout_s: wait for a direct ack before asking relays [s] (memberlist: 0.5 s).
        indirect_checks: relays asked by ``ping_req`` (memberlist: 3).
        suspicion_mult: ``min`` suspicion timeout = this × max(1, log10 N) ×
            probe_interval (memberlist: 4); k = this − 2 confirmations
            shrink it from ``max`` to ``min``.
        suspicion_max_mult: ``max`` = this × ``min`` (memberlist: 6).
        retransmit_mult: each change is sent this × ceil(log10(N + 1)) times (memberlist: 4).
        awareness_max: local health score bound (memberlist: 8).
        gossip_interval_s: period of ``gossip`` messages while changes wait [s] (memberlist: 0.2 s).
        gossip_nodes: members each ``gossip`` goes to (memberlist: 3).
        max_changes_bytes: piggybacked changes per message [bytes of msgpack].
        forget_after_s: a dead or left member is forgotten this long after it became so [s];
            its incarnation stays as a tombstone (replay check).
    """

    probe_interval_s: float = 0.5
    probe_timeout_s: float = 0.25
    indirect_checks: int = 3
    suspicion_mult: float = 3.0
    suspicion_max_mult: float = 4.0
    retransmit_mult: int = 4
    awareness_max: int = 8
    gossip_interval_s: float = 0.2
    gossip_nodes: int = 3
    max_changes_bytes: int = 12_000
    forget_after_s: float = 60.0


@dataclass
class Member:
    """What this node believes about one other member."""

    entry: SignedEntry
    state: str
    incarnation: int  # may exceed entry.incarnation: a claim at a newer incarnation than the entry we hold
    since: float  # clock() when the state last changed [s]
    claimant: str | None = None  # who declared it suspect or dead


@dataclass
class Send:
    """An outgoing message: ``to`` is a member's URL, or the opaque reply address a message came with."""

    to: Any
    message: dict


@dataclass(frozen=True)
class MemberChanged:
    """A member joined, changed its entry or changed state (``state``: alive, suspect, dead or left)."""

    entry: SignedEntry
    state: str
    incarnation: int
    claimant: str | None = None


@dataclass(frozen=True)
class Acked:
    """A member answered our direct probe: ``rtt_s`` [s], ``load`` (its requests in flight)."""

    node_id: str
    rtt_s: float
    load: int


@dataclass(frozen=True)
class RewardsReceived:
    """Reward records (raw maps, unchecked) that arrived piggybacked; the fitness book checks them."""

    records: list


@dataclass
class Suspicion:
    """A suspicion timer (memberlist suspicion.go): shrinks from ``max_s`` to ``min_s`` with confirmations."""

    started: float
    min_s: float
    max_s: float
    k: int
    claimants: set[str] = field(default_factory=set)
    _deadline: float | None = None

    def timeout(self) -> float:
        """Current timeout [s]: max − (max − min) × log(c + 1) / log(k + 1), c = confirmations beyond the first."""
        c = max(0, len(self.claimants) - 1)
        if self.k < 1:
            return self.min_s
        frac = math.log(c + 1) / math.log(self.k + 1)
        return max(self.min_s, self.max_s - (self.max_s - self.min_s) * frac)

    def confirm(self, claimant: str) -> bool:
        """Count ``claimant``'s confirmation; True when it is a new one (the timeout shrinks)."""
        if claimant in self.claimants:
            return False
        self.claimants.add(claimant)
        self._deadline = None
        return True

    def deadline(self) -> float:
        # Cached: every tick and every wait asks for every timer's deadline (a suspicion storm while 500
        # simulated nodes join on 2 cores made timeout() a top entry of the profile).
        if self._deadline is None:
            self._deadline = self.started + self.timeout()
        return self._deadline


@dataclass
class _Probe:
    target: str
    seq: int
    started: float
    direct_deadline: float
    end: float
    indirect: bool = False
    acked: bool = False
    nacks: int = 0
    expected_nacks: int = 0


@dataclass
class _Relay:
    reply_to: Any
    seq: int  # the requester's sequence number
    deadline: float
    nacked: bool = False


class BroadcastQueue:
    """Changes waiting to ride on outgoing messages, each sent a bounded number of times (memberlist queue.go).

    One item per key (a member's node id, or ``r:<record id>``): a newer
    change about a member replaces the older one. :meth:`take` returns the
    least-sent items first (newest first among equals), up to a byte budget,
    and drops those sent ``limit`` times. Items sit in buckets by
    transmission count, so a take does not sort the queue (it ran on every
    message, hundreds of items deep while 500 nodes join).
    """

    def __init__(self) -> None:
        self._items: dict[str, list] = {}  # key -> [transmits, size, change, own limit or None]
        self._buckets: list[dict[str, None]] = [{}]  # transmits -> keys (insertion-ordered)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, change: list, limit: int | None = None) -> None:
        """Queue ``change`` under ``key`` (replacing an older one); ``limit``: its own transmission bound."""
        old = self._items.get(key)
        if old is not None:
            self._buckets[old[0]].pop(key, None)
        self._items[key] = [0, len(msgpack.packb(change, use_bin_type=True)), change, limit]
        self._buckets[0][key] = None

    def take(self, budget: int, limit: int) -> list[list]:
        """Changes fitting ``budget`` [bytes], least transmitted first; each counts one more transmission."""
        if not self._items:
            return []
        out, used = [], 0
        moved: list[tuple[str, int]] = []
        for count, bucket in enumerate(self._buckets):
            taken = []
            for key in reversed(bucket):  # newest first; no copy of the bucket (hundreds deep while nodes join)
                item = self._items[key]
                if used + item[1] > budget:
                    if budget - used < 48:  # no change is smaller
                        break
                    continue
                used += item[1]
                out.append(item[2])
                taken.append(key)
            for key in taken:
                del bucket[key]
                item = self._items[key]
                item[0] = count + 1
                if item[0] >= (item[3] or limit):
                    del self._items[key]
                else:
                    moved.append((key, count + 1))
            if budget - used < 48:
                break
        for key, count in moved:
            while len(self._buckets) <= count:
                self._buckets.append({})
            self._buckets[count][key] = None
        return out


def retransmit_limit(mult: int, n: int) -> int:
    """Times a change is sent: mult × ceil(log10(n + 1)) (memberlist util.go retransmitLimit)."""
    return mult * max(1, math.ceil(math.log10(n + 1)))


def suspicion_timeout(mult: float, n: int, interval_s: float) -> float:
    """Minimum suspicion timeout [s]: mult × max(1, log10 n) × interval (memberlist util.go suspicionTimeout)."""
    return mult * max(1.0, math.log10(max(1, n))) * interval_s


class Swim:
    """One node's SWIM state machine (see module docstring). Times are ``now`` [s] on any monotonic clock.

    Args:
        identity: our key pair (signs our entry).
        url, name, model, capacity: our entry's fields (``url`` ``None``:
            we are a coordinator: we probe others but nobody probes us).
        incarnation: our starting incarnation (the start time in ms, so a
            restart beats every claim about the previous run).
        config: timing and fan-out.
        rng: randomness (injectable for tests).

    Attributes:
        members: node id -> :class:`Member` (everyone but us).
        awareness: local health score (Lifeguard).
        counters: :data:`COUNTERS` -> count.
        load: our requests in flight, reported in acks (set by the caller).
    """

    def __init__(
        self,
        identity: Identity,
        *,
        url: str | None,
        name: str = "",
        model: str | None = None,
        capacity: int = 0,
        incarnation: int = 0,
        config: SwimConfig | None = None,
        rng: random.Random | None = None,
    ):
        self.identity = identity
        self.node_id = identity.node_id
        self.config = config or SwimConfig()
        self.rng = rng or random.Random()
        self.members: dict[str, Member] = {}
        self.tombstones: dict[str, int] = {}  # forgotten members' last incarnation
        self.awareness = 0
        self.load = 0
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.queue = BroadcastQueue()
        self.suspicions: dict[str, Suspicion] = {}
        self.me = SignedEntry.signed(
            identity, url=url, name=name, model=model, capacity=capacity, incarnation=incarnation, left=False
        )
        self._sends: list[Send] = []
        self._events: list[Any] = []
        self._seq = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._order: list[str] = []
        self._index = 0
        self._next_probe = 0.0
        self._next_gossip = 0.0
        self._next_housekeeping = 0.0
        self._size = 1  # live members and us, recounted every second (see _housekeeping)
        self._gossip_targets: list[Member] = []
        self._claimed_me = False  # a change in the message being handled claimed we are suspect or dead
        self._answered: dict[Any, float] = {}  # reply address -> when we last sent it our entry
        self.queue.put(self.node_id, self.me.to_wire())

    # Outputs.

    def take_sends(self) -> list[Send]:
        """Messages to send since the last call."""
        sends, self._sends = self._sends, []
        return sends

    def take_events(self) -> list[Any]:
        """:class:`MemberChanged`, :class:`Acked` and :class:`RewardsReceived` events since the last call."""
        events, self._events = self._events, []
        return events

    # Our own entry.

    def update_self(self, **fields: Any) -> None:
        """Change our entry (url, name, model, capacity, left): a new incarnation, signed and gossiped."""
        current = {k: getattr(self.me, k) for k in ("url", "name", "model", "capacity", "left")}
        current.update(fields)
        self._resign(self.me.incarnation + 1, **current)

    def _resign(self, incarnation: int, **fields: Any) -> None:
        if not fields:
            fields = {k: getattr(self.me, k) for k in ("url", "name", "model", "capacity", "left")}
        self.me = SignedEntry.signed(self.identity, incarnation=incarnation, **fields)
        self.queue.put(self.node_id, self.me.to_wire())

    def leave(self) -> None:
        """Declare we leave: a signed *left* entry at a new incarnation, queued for gossip."""
        self.update_self(left=True)

    # Members.

    def size(self) -> int:
        """Members counted for timeouts and retransmits: the live ones and us (recounted every second)."""
        return self._size

    def live(self) -> list[Member]:
        """Alive and suspect members with a URL (those that may be probed or asked to relay)."""
        return [m for m in self.members.values() if m.state in (ALIVE, SUSPECT) and m.entry.url]

    def state_of(self, node_id: str) -> str | None:
        member = self.members.get(node_id)
        return member.state if member is not None else None

    def _limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, self.size())

    def _set(self, member: Member, state: str, incarnation: int, now: float, claimant: str | None = None) -> None:
        changed = member.state != state or member.incarnation != incarnation
        member.state, member.incarnation, member.claimant = state, incarnation, claimant
        if changed:
            member.since = now
        if state != SUSPECT:
            self.suspicions.pop(member.entry.node_id, None)
        self._events.append(MemberChanged(member.entry, state, incarnation, claimant))

    # Applying changes (piggybacked, pushed, or from a push-pull).

    def apply_changes(self, changes: Iterable[Any], now: float, sender: str | None = None, sync: bool = False) -> None:
        """Apply changes from another node (malformed ones are skipped).

        ``sync``: they come from a full push-pull (``sender`` is the peer),
        where a *dead* state counts as a suspicion (memberlist state.go
        mergeState: a peer's belief is not proof).
        """
        records = []
        for change in changes:
            if not isinstance(change, list | tuple) or not change:
                continue
            kind = change[0]
            if kind == "a":
                # Most copies are duplicates of what we hold (each change is sent ~λ log N times):
                # recognise them before parsing (bench_scale, N = 500: the bulk of membership CPU).
                if len(change) == 10 and isinstance(change[1], str):
                    known = self.members.get(change[1])
                    if (
                        known is not None
                        and change[9] == known.entry.signature
                        and change[2] == known.entry.incarnation
                    ):
                        continue
                entry = SignedEntry.from_wire(change)
                if entry is not None:
                    self.apply_entry(entry, now)
            elif kind in ("s", "d") and len(change) == 4:
                _, node_id, inc, claimant = change
                if isinstance(node_id, str) and _u64(inc) and isinstance(claimant, str):
                    if kind == "s" or sync:
                        self.on_suspect(node_id, inc, claimant, now)
                    else:
                        self.on_dead(node_id, inc, claimant, now)
            elif kind == "r" and len(change) == 2 and isinstance(change[1], dict):
                records.append(change[1])
        if records:
            self._events.append(RewardsReceived(records))

    def apply_entry(self, entry: SignedEntry, now: float) -> bool:
        """Merge a signed entry; returns True when it told us something new (and was verified)."""
        if entry.node_id == self.node_id:
            if entry.public_key == self.me.public_key and entry.incarnation > self.me.incarnation and entry.verify():
                # Our previous run's entry (e.g. it refuted more often than milliseconds passed): outbid it.
                self._resign(entry.incarnation + 1)
            elif entry.public_key != self.me.public_key:
                self.counters["member_forged"] += 1
            return False
        known = self.members.get(entry.node_id)
        if known is not None:
            if entry.public_key != known.entry.public_key:
                self.counters["member_forged"] += 1
                return False
            if entry.incarnation < known.entry.incarnation:
                self.counters["member_stale"] += 1
                return False
            if entry.incarnation == known.entry.incarnation:
                if entry.signature == known.entry.signature:
                    return False  # a gossip duplicate
                if known.entry.left and not entry.left:
                    self.counters["member_replayed"] += 1  # its alive entry again after it signed leaving
                    return False
            if not entry.left and entry.incarnation <= known.incarnation and known.state in (SUSPECT, DEAD):
                return False  # a claim at this incarnation stands until the member refutes it (higher incarnation)
        elif entry.incarnation <= self.tombstones.get(entry.node_id, -1):
            self.counters["member_replayed"] += 1
            return False
        if not entry.verify():
            self.counters["member_forged"] += 1
            return False
        state = LEFT if entry.left else ALIVE
        if known is None:
            if entry.left:
                return False  # a goodbye from someone we never knew
            known = self.members[entry.node_id] = Member(entry, state, entry.incarnation, now)
            self._size += 1
            self.tombstones.pop(entry.node_id, None)
            if entry.url:  # a newcomer goes at a random place of this pass (memberlist state.go aliveNode)
                self._order.insert(self.rng.randint(self._index, len(self._order)), entry.node_id)
        else:
            known.entry = entry
        self._set(known, state, entry.incarnation, now)
        self.queue.put(entry.node_id, entry.to_wire())
        return True

    def on_suspect(self, node_id: str, incarnation: int, claimant: str, now: float) -> None:
        """A suspect claim about ``node_id`` at ``incarnation`` by ``claimant``."""
        if node_id == self.node_id:
            self._refute(incarnation)
            return
        member = self.members.get(node_id)
        if member is None or incarnation < member.incarnation or member.state in (DEAD, LEFT):
            return
        if member.state == SUSPECT and incarnation == member.incarnation:
            timer = self.suspicions.get(node_id)
            if timer is not None and timer.confirm(claimant):  # an independent confirmation: re-gossip it (memberlist)
                self.queue.put(node_id, ["s", node_id, incarnation, claimant])
            return
        n = self.size()
        lo = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval_s)
        k = int(self.config.suspicion_mult - 2) if n - 2 >= self.config.suspicion_mult - 2 else 0
        self.suspicions[node_id] = Suspicion(now, lo, self.config.suspicion_max_mult * lo, k, {claimant})
        self._set(member, SUSPECT, incarnation, now, claimant)
        self.queue.put(node_id, ["s", node_id, incarnation, claimant])

    def on_dead(self, node_id: str, incarnation: int, claimant: str, now: float) -> None:
        """A dead claim about ``node_id`` at ``incarnation`` by ``claimant``."""
        if node_id == self.node_id:
            if not self.me.left:
                self._refute(incarnation)
            return
        member = self.members.get(node_id)
        if member is None or incarnation < member.incarnation or member.state in (DEAD, LEFT):
            return
        self._set(member, DEAD, incarnation, now, claimant)
        self.queue.put(node_id, ["d", node_id, incarnation, claimant])

    def _answer_claim(self, reply_to: Any, now: float) -> None:
        """The sender holds us suspect or dead: send it our current entry directly (once per period per sender).

        Gossip of our refutation is sent a bounded number of times, and a node that missed it (a full
        receive buffer, a stalled loop) keeps us dead until a push-pull minutes away; but it keeps
        gossiping the claim to us for a while (recently dead members get gossip), so we answer it.
        """
        if self._answered.get(reply_to, -math.inf) > now - self.config.probe_interval_s:
            return
        self._answered[reply_to] = now
        self._sends.append(Send(reply_to, {"t": "gossip", "from": self.node_id, "c": [self.me.to_wire()]}))

    def _refute(self, incarnation: int) -> None:
        self._claimed_me = True
        if incarnation < self.me.incarnation or self.me.left:
            return  # about an older incarnation of us: already refuted
        self.counters["member_refuted"] += 1
        self.awareness = min(self.config.awareness_max - 1, self.awareness + 1)  # Lifeguard: we may be the slow one
        self._resign(incarnation + 1)

    # Rewards.

    def broadcast_reward(self, record: dict) -> None:
        """Queue a reward record (its wire map) for piggybacked dissemination, as often as a membership change.

        Each node that applies it sends it ``retransmit_mult`` ×
        ceil(log10(N + 1)) times (12 at N = 100 to 999). With
        ``retransmit_mult`` times only (4), about e^-4 of the nodes (2 %)
        never got a record (infection-style spread: the share left out s
        solves s = e^(-t(1 - s)) for t transmissions per node), and push-pull
        carries only the last 10 s of records: ``bench_scale.py`` at N = 100
        reached 100, 99 and 97 of 100 nodes. Each node then receives about t
        copies of a record: duplicates stay a small constant per node per
        record (issue 14), about log N.
        """
        self.queue.put("r:" + str(record.get("id")), ["r", record])

    # Messages.

    def _piggyback(self, message: dict) -> dict:
        changes = self.queue.take(self.config.max_changes_bytes, self._limit())
        if changes:
            message["c"] = changes
        return message

    def _send(self, to: Any, message: dict) -> None:
        self._sends.append(Send(to, self._piggyback(message)))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def handle(self, message: Any, reply_to: Any, now: float) -> None:
        """Process one received message; ``reply_to`` is the opaque address replies go to."""
        if not isinstance(message, dict):
            return
        changes = message.get("c")
        if isinstance(changes, list):
            self._claimed_me = False
            self.apply_changes(changes, now)
            if self._claimed_me:
                self._answer_claim(reply_to, now)
        kind, seq = message.get("t"), message.get("seq")
        if kind == "ping" and _u64(seq):
            if message.get("to") in (None, self.node_id):  # a ping for whoever held this address before: no ack
                self._send(reply_to, {"t": "ack", "seq": seq, "from": self.node_id, "load": self.load})
        elif kind == "ping_req" and _u64(seq):
            target, url = message.get("target"), message.get("url")
            if isinstance(target, str) and isinstance(url, str) and target != self.node_id:
                mine = self._next_seq()
                # Nack before the requester's period ends (0.8: memberlist's margin for the way back).
                self._relays[mine] = _Relay(reply_to, seq, now + 0.8 * self._scaled(self.config.probe_timeout_s))
                self._send(url, {"t": "ping", "seq": mine, "to": target, "from": self.node_id})
        elif kind == "ack" and _u64(seq):
            self._on_ack(message, seq, now)
        elif kind == "nack" and _u64(seq):
            probe = self._probe
            if probe is not None and probe.seq == seq:
                probe.nacks += 1

    def _on_ack(self, message: dict, seq: int, now: float) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None:
            self._send(relay.reply_to, {"t": "ack", "seq": relay.seq, "from": self.node_id, "load": 0})
            return
        probe = self._probe
        if probe is None or probe.seq != seq or probe.acked:
            return
        probe.acked = True
        self.awareness = max(0, self.awareness - 1)
        if message.get("from") == probe.target:  # direct: an RTT sample and its load
            load = message.get("load")
            self._events.append(Acked(probe.target, now - probe.started, load if _u64(load) else 0))
        self._probe = None

    def _scaled(self, seconds: float) -> float:
        return seconds * (self.awareness + 1)

    # Timers.

    def next_deadline(self) -> float:
        """The earliest time [s] :meth:`tick` has something to do."""
        times = [self._next_probe, self._next_gossip if len(self.queue) else math.inf]
        if self._probe is not None:
            times.append(self._probe.end if self._probe.indirect else self._probe.direct_deadline)
        times.extend(r.deadline for r in self._relays.values() if not r.nacked)
        times.extend(s.deadline() for s in self.suspicions.values())
        return min(times)

    def tick(self, now: float) -> None:
        """Advance timers to ``now``: probes, indirect probes, suspicion timeouts, gossip, forgetting."""
        cfg = self.config
        for node_id, timer in list(self.suspicions.items()):
            if now >= timer.deadline():
                member = self.members.get(node_id)
                if member is not None and member.state == SUSPECT:
                    self._set(member, DEAD, member.incarnation, now, self.node_id)
                    self.queue.put(node_id, ["d", node_id, member.incarnation, self.node_id])
                self.suspicions.pop(node_id, None)
        for seq, relay in list(self._relays.items()):
            if now >= relay.deadline and not relay.nacked:
                relay.nacked = True
                self._send(relay.reply_to, {"t": "nack", "seq": relay.seq, "from": self.node_id})
            if now >= relay.deadline + 4 * cfg.probe_interval_s:
                del self._relays[seq]
        probe = self._probe
        if probe is not None and not probe.acked:
            if not probe.indirect and now >= probe.direct_deadline:
                self._indirect(probe)
            elif probe.indirect and now >= probe.end:
                self._probe_failed(probe, now)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now)
        if len(self.queue) and now >= self._next_gossip:
            self._gossip(now)
            self._next_gossip = now + cfg.gossip_interval_s
        if now >= self._next_gossip and not len(self.queue):
            self._next_gossip = now  # gossip at once when a change comes
        if now >= self._next_housekeeping:
            self._housekeeping(now)
            self._next_housekeeping = now + 1.0

    def _start_probe(self, now: float) -> None:
        target = self._next_target()
        interval = self._scaled(self.config.probe_interval_s)
        self._next_probe = now + interval
        if target is None:
            return
        seq = self._next_seq()
        self.counters["probes"] += 1
        self._probe = _Probe(
            target.entry.node_id, seq, now, now + self._scaled(self.config.probe_timeout_s), now + interval
        )
        self._send(target.entry.url, {"t": "ping", "seq": seq, "to": target.entry.node_id, "from": self.node_id})

    def _next_target(self) -> Member | None:
        for _ in range(2):
            while self._index < len(self._order):
                member = self.members.get(self._order[self._index])
                self._index += 1
                if member is not None and member.state in (ALIVE, SUSPECT) and member.entry.url:
                    return member
            self._order = [m.entry.node_id for m in self.live()]  # a pass ends: reshuffle (SWIM 4.3)
            self.rng.shuffle(self._order)
            self._index = 0
        return None

    def _indirect(self, probe: _Probe) -> None:
        probe.indirect = True
        target = self.members.get(probe.target)
        if target is None:
            return
        relays = [m for m in self.live() if m.entry.node_id != probe.target and m.state == ALIVE]
        picks = self.rng.sample(relays, min(self.config.indirect_checks, len(relays)))
        probe.expected_nacks = len(picks)
        for relay in picks:
            message = {"t": "ping_req", "seq": probe.seq, "target": probe.target, "url": target.entry.url}
            self._send(relay.entry.url, message | {"from": self.node_id})
        # SWIM: the direct ping may only be late; send it once more (memberlist does over TCP).
        self._send(target.entry.url, {"t": "ping", "seq": probe.seq, "to": probe.target, "from": self.node_id})

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        self._probe = None
        self.counters["probes_failed"] += 1
        missed = max(0, probe.expected_nacks - probe.nacks)  # Lifeguard: relays' silence means we are slow
        self.awareness = min(self.config.awareness_max - 1, self.awareness + missed)
        member = self.members.get(probe.target)
        if member is not None and member.state in (ALIVE, SUSPECT):
            self.on_suspect(probe.target, member.incarnation, self.node_id, now)

    def _gossip(self, now: float) -> None:
        members = self._gossip_targets
        for member in self.rng.sample(members, min(self.config.gossip_nodes, len(members))):
            changes = self.queue.take(self.config.max_changes_bytes, self._limit())
            if not changes:
                break
            self._sends.append(Send(member.entry.url, {"t": "gossip", "from": self.node_id, "c": changes}))

    def _housekeeping(self, now: float) -> None:
        """Once a second: forget long-dead members, recount the live ones, refresh the gossip targets.

        Not per tick: these walk every member, and at N = 500 a walk per tick per node was most of the CPU.
        """
        horizon = now - self.config.forget_after_s
        recent = now - 20 * self.config.probe_interval_s
        live = 1
        targets = []
        for node_id, member in list(self.members.items()):
            if member.state in (ALIVE, SUSPECT):
                live += 1
                if member.entry.url:
                    targets.append(member)
            elif member.state == DEAD and member.since >= recent and member.entry.url:
                # Recently dead members get gossip too, so a live one wrongly declared dead hears it and refutes.
                targets.append(member)
            elif member.since < horizon:
                del self.members[node_id]
                self.tombstones[node_id] = member.incarnation
                if len(self.tombstones) > 65536:
                    self.tombstones.pop(next(iter(self.tombstones)))
        self._size = live
        self._gossip_targets = targets
        if self._answered:
            self._answered = {k: t for k, t in self._answered.items() if t > now - self.config.probe_interval_s}

    # Push-pull (full state sync, over a stream connection).

    def bucket_hashes(self) -> list[bytes]:
        """A summary of our view for a push-pull: :data:`SYNC_BUCKETS` hashes of 8 bytes each.

        Each member (us included) falls in bucket :func:`sync_bucket` of its
        node id; a bucket's hash is the XOR of its rows' 8-byte BLAKE2b
        hashes of ``(node_id, incarnation, state rank)``. Two nodes with the
        same view have the same hashes, so a push-pull between them sends
        2 × 64 × 8 bytes whatever N (anti-entropy with summaries, as
        Dynamo's Merkle trees do it, here one level deep), and only the
        buckets that differ are compared row by row.
        """
        acc = [0] * SYNC_BUCKETS
        rank = _RANK[LEFT if self.me.left else ALIVE]
        acc[sync_bucket(self.node_id)] ^= _row_hash(self.node_id, self.me.incarnation, rank)
        for m in self.members.values():
            acc[sync_bucket(m.entry.node_id)] ^= _row_hash(m.entry.node_id, m.incarnation, _RANK[m.state])
        return [value.to_bytes(8, "big") for value in acc]

    def differing_buckets(self, theirs: Any, mine: list[bytes] | None = None) -> set[int] | None:
        """Buckets whose hash differs from ``theirs`` (a peer's :meth:`bucket_hashes`); ``None`` when malformed.

        ``mine``: our :meth:`bucket_hashes` if the caller already has them (each is a pass over every member).
        """
        if not isinstance(theirs, list | tuple) or len(theirs) != SYNC_BUCKETS:
            return None
        mine = mine if mine is not None else self.bucket_hashes()
        return {i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b}

    def digest(self, scope: set[int] | None = None) -> list[list]:
        """Our view for a push-pull: ``[node_id, incarnation, state rank]`` per member, us included.

        ``scope``: only members in these buckets (:func:`sync_bucket`); ``None``: all.
        """
        rows = [[self.node_id, self.me.incarnation, _RANK[LEFT if self.me.left else ALIVE]]]
        rows.extend([m.entry.node_id, m.incarnation, _RANK[m.state]] for m in self.members.values())
        if scope is not None:
            rows = [row for row in rows if sync_bucket(row[0]) in scope]
        return rows

    def newer_than(self, digest: Iterable[Any], scope: set[int] | None = None) -> list[list]:
        """The changes a peer whose :meth:`digest` is ``digest`` lacks: entries (and claims) newer than its view.

        ``scope``: the peer's digest covers only these buckets, so only members in them are compared.
        """
        theirs = {}
        for row in digest:
            if isinstance(row, list | tuple) and len(row) == 3 and isinstance(row[0], str):
                theirs[row[0]] = (row[1], row[2]) if _u64(row[1]) and row[2] in _STATE_OF_RANK else (-1, -1)
        out = []
        mine = (self.me.incarnation, _RANK[LEFT if self.me.left else ALIVE])
        if (scope is None or sync_bucket(self.node_id) in scope) and theirs.get(self.node_id, (-1, -1)) < mine:
            out.append(self.me.to_wire())
        for m in self.members.values():
            if scope is not None and sync_bucket(m.entry.node_id) not in scope:
                continue
            have = theirs.get(m.entry.node_id, (-1, -1))
            if have >= (m.incarnation, _RANK[m.state]):
                continue
            if have[0] < m.entry.incarnation or m.entry.node_id not in theirs:
                out.append(m.entry.to_wire())
            if m.state in (SUSPECT, DEAD):
                out.append(["s" if m.state == SUSPECT else "d", m.entry.node_id, m.incarnation, m.claimant or ""])
        return out


SYNC_BUCKETS = 64


@functools.lru_cache(maxsize=65536)
def sync_bucket(node_id: str) -> int:
    """The push-pull bucket of a member: the first byte of BLAKE2b(node id) mod :data:`SYNC_BUCKETS`."""
    return hashlib.blake2b(node_id.encode(), digest_size=1).digest()[0] % SYNC_BUCKETS


def _row_hash(node_id: str, incarnation: int, rank: int) -> int:
    data = node_id.encode() + struct.pack(">QB", incarnation, rank)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
