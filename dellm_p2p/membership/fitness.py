"""Fitness: the reward rule, epidemic gossip of reward records, persistence.

Rule (the DELLM design): per chunk, a peer whose answer agrees with the
consensus earns +0.05 plus a speed bonus, others −0.05; fitness is an EWMA,
``fitness ← 0.9 × fitness + 0.1 × target``, kept in [0, 1]. We read the
EWMA's input as the reward-adjusted fitness, ``target = fitness + reward``,
so a reward moves fitness by a tenth of itself: a good peer climbs above the
neutral 0.5 a newcomer starts at, a bad one sinks below it. (Taking the raw
reward as the target would drag every peer toward 0.05, agreeing or not.)

Evidence: with each reward the book also counts, per node, how many rewards
its fitness rests on and how many of them were for agreeing (reward > 0):
fitness alone cannot tell a newcomer from a peer that earned as much as it
lost. Routing draws from the Beta posterior of agreement these counts give
(Thompson sampling, see :mod:`dellm_p2p.coordinator.route`) so that peers
with little evidence get tried. The counts persist with the fitness.

Per model and chunk kind: a record that names the model the peer answered
with and the chunk's kind (``LOOKUP``, ``MATH``, …) also adds to the counts
of that (model, kind), which every node that applies the record keeps alike.
Their Beta posterior mean is the model's reliability for that kind: routing
takes the anchor from the model with the best one, the vote weighs each
ballot by it (:func:`dellm_p2p.coordinator.vote.model_weight`), and a peer
that joins serving a model already counted starts from that model's evidence
(pooled over kinds, scaled down to at most :data:`MODEL_PRIOR_REWARDS`
rewards) instead of the uniform prior: a hierarchical prior in the spirit
of empirical Bayes (Robbins 1956), so a fresh node of a proven model is not
explored as an unknown.

Reward records spread by epidemic gossip: each node applies a record once
(deduplicated by record id) and forwards it to ``fanout`` random peers (up
to ln N + 2 of the N it knows, see :meth:`FitnessBook.forward`) while
``hops < max_hops`` (rumor mongering: fast, but a few nodes may miss a
rumor, about N e^-fanout of them). Membership's push-pull
exchanges also carry every record applied in the last seconds
(anti-entropy), which closes those gaps: every table converges in O(log N)
gossip rounds (Demers et al., 1987, "Epidemic algorithms for replicated
database maintenance").

Trust (see ``rewards`` in :mod:`dellm_p2p.protocol`): records are signed by
their issuer (:mod:`dellm_p2p.identity`). A received record is applied only
if it is fresh (``ts`` within ``window_s`` of our clock), its issuer is a
member we know with a public key (in the peer table in any state, or
ourselves), its signature checks with that key, and its (issuer, seq) was
not accepted before. Anything else is dropped, never forwarded, and counted
in :attr:`FitnessBook.rejected` (logged once per reason and issuer). The
issuer check accepts dead and left members too: a coordinator that asked
one question and left must still have its rewards reach everyone, and the
signature, not liveness, is what proves the record. A record whose issuer
we do not know yet is dropped (counted ``non_member``): a Swarm's member
entry reaches a node in its hello and membership gossip before its first
rewards, and anti-entropy re-sends a record for a while, so one dropped
before the issuer was known arrives again. Replay memory: per issuer, the
seqs accepted within the freshness window (at most ``max_seqs_per_issuer``;
beyond it the oldest is forgotten and every seq up to it counts as seen);
older records fail the freshness check anyway. It is persisted with the
fitness, so a restarted node does not apply again what anti-entropy re-sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..coordinator.reward import reward_records
from ..identity import Identity, verify_reward
from ..protocol import RewardRecord

if TYPE_CHECKING:
    from ..peer_table import PeerTable
    from ..pool import PeerPool

log = logging.getLogger(__name__)

NEUTRAL_FITNESS = 0.5
EWMA_KEEP = 0.9  # weight of the old fitness in the DELLM rule
REJECT_REASONS = ("signature", "replay", "stale", "non_member")
DEFAULT_WINDOW_S = 120.0
#: Most rewards a new peer's counts start from when its model is known (see module docstring).
MODEL_PRIOR_REWARDS = 10
#: Most (model, kind) pairs a book counts (a peer cannot grow the table without bound).
MAX_MODEL_KINDS = 256


def apply_reward(fitness: float, reward: float) -> float:
    """``0.9 × fitness + 0.1 × (fitness + reward)``, clamped to [0, 1] (see module docstring)."""
    return min(1.0, max(0.0, EWMA_KEEP * fitness + (1 - EWMA_KEEP) * (fitness + reward)))


class _SeqWindow:
    """Replay memory for one issuer: seqs accepted recently, and a floor below which every seq counts as seen."""

    __slots__ = ("floor", "seqs")

    def __init__(self, floor: int = -1):
        self.floor = floor
        self.seqs: dict[int, float] = {}  # seq -> record ts, in order of acceptance

    def seen(self, seq: int) -> bool:
        return seq <= self.floor or seq in self.seqs

    def add(self, seq: int, ts: float, limit: int) -> None:
        self.seqs[seq] = ts
        while len(self.seqs) > limit:  # forget the oldest accepted; everything up to it now counts as seen
            old = next(iter(self.seqs))
            del self.seqs[old]
            self.floor = max(self.floor, old)

    def prune(self, horizon: float) -> None:
        """Forget seqs of records older than ``horizon`` [s since the epoch]: those fail the freshness check."""
        while self.seqs:
            seq, ts = next(iter(self.seqs.items()))
            if ts >= horizon:
                break
            del self.seqs[seq]
            self.floor = max(self.floor, seq)


class FitnessBook:
    """Fitness of every known node (this one included), fed by reward records.

    Args:
        node_id: this node's id (records about it update :attr:`self_fitness`).
        table: the peer table whose ``fitness`` fields this book maintains.
        path: JSON file to persist fitness across restarts (``None``: memory only).
        pool: connections for forwarding (``None``: apply only, never forward).
        fanout: peers each new record is forwarded to.
        max_hops: records with this many hops are not forwarded further.
            Only a safety net: each node forwards a record once (the id
            dedupe), so traffic is fanout × N per record whatever the
            limit, and a rumor needs about log_fanout N + ln N / fanout
            hops to reach everyone (≈ 8 at N = 500, fanout 3; with 6, push
            reached 275 of 500 in bench_scale and anti-entropy had to
            finish). 16 covers about 10^5 nodes.
        remember: how many record ids are kept for deduplication.
        identity: our key pair, to sign the records we issue (:meth:`issue`);
            ``None`` for a node that only receives.
        window_s: freshness window [s]: records whose ``ts`` is further
            than this from our clock are rejected as stale.
        max_seqs_per_issuer: replay memory per issuer (see module docstring).
        clock: wall clock [s since the epoch] (injectable for tests).

    Attributes:
        applied: records applied. duplicates: records dropped as already applied;
            duplicates_max: the most of them one applied record drew.
        rejected: records dropped per reason (:data:`REJECT_REASONS`).
    """

    def __init__(
        self,
        node_id: str,
        table: PeerTable,
        *,
        path: Path | None = None,
        pool: PeerPool | None = None,
        fanout: int = 3,
        max_hops: int = 16,
        remember: int = 100_000,
        identity: Identity | None = None,
        window_s: float = DEFAULT_WINDOW_S,
        max_seqs_per_issuer: int = 4096,
        clock: Callable[[], float] = time.time,
    ):
        if identity is not None and identity.node_id != node_id:
            raise ValueError(f"identity {identity.node_id} does not match node id {node_id}")
        self.node_id = node_id
        self.table = table
        self.path = path
        self.pool = pool
        self.fanout = fanout
        self.max_hops = max_hops
        self.remember = remember
        self.self_fitness = NEUTRAL_FITNESS
        self.self_counts = (0, 0)  # (agreed, rewards) about this node
        self.identity = identity
        self.window_s = window_s
        self.max_seqs_per_issuer = max_seqs_per_issuer
        self.clock = clock
        self.applied = 0
        self.duplicates = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._windows: dict[str, _SeqWindow] = {}
        self._pruned_at = 0.0
        self._warned: set[tuple[str, str]] = set()
        self._seen: OrderedDict[str, int] = OrderedDict()  # record id -> duplicates received after applying it
        self.duplicates_max = 0  # the most duplicates one applied record drew (issue 14: keep small)
        # Set by SWIM membership: fresh records are queued for piggybacked dissemination
        # (a bounded number of sends) instead of rumor-mongered over websockets.
        self.broadcast: Callable[[list[RewardRecord]], None] | None = None
        self._recent: deque[tuple[float, RewardRecord]] = deque(maxlen=256)
        self._saved: dict[str, float] = {}  # fitness of nodes not (yet) in the table
        self._saved_counts: dict[str, tuple[int, int]] = {}  # their (agreed, rewards)
        self.model_counts: dict[tuple[str, str], tuple[int, int]] = {}  # (model, kind) -> (agreed, rewards)
        self._tasks: set[asyncio.Task] = set()
        self._dirty = False
        # Called as listener(record, old_fitness, new_fitness) after each applied record (the HTTP
        # dashboard's fitness-over-time series); a listener must be quick and must not raise.
        self.listeners: list[Callable[[RewardRecord, float, float], None]] = []
        self.load()
        table.initial_fitness = self._initial_fitness
        table.initial_counts = self._initial_counts

    def _initial_fitness(self, node_id: str) -> float:
        return self._saved.pop(node_id, NEUTRAL_FITNESS)

    def _initial_counts(self, node_id: str, model: str | None = None) -> tuple[int, int]:
        saved = self._saved_counts.pop(node_id, None)
        if saved is not None:
            return saved
        return self.model_prior(model) if model else (0, 0)

    def model_prior(self, model: str) -> tuple[int, int]:
        """``(agreed, rewards)`` a new peer serving ``model`` starts from: the model's counts pooled over
        kinds, scaled down to at most :data:`MODEL_PRIOR_REWARDS` rewards; ``(0, 0)`` for an uncounted model."""
        agreed = rewards = 0
        for (name, _), (a, r) in self.model_counts.items():
            if name == model:
                agreed, rewards = agreed + a, rewards + r
        if rewards <= MODEL_PRIOR_REWARDS:
            return agreed, rewards
        return round(agreed * MODEL_PRIOR_REWARDS / rewards), MODEL_PRIOR_REWARDS

    def model_posterior(self, model: str | None, kind: str, prior: tuple[float, float] = (1.0, 1.0)) -> float:
        """Posterior mean of ``model`` agreeing with the vote on chunks of ``kind``, in (0, 1).

        Beta(α₀ + agreed, β₀ + disagreed) with ``prior`` = (α₀, β₀); the prior's
        mean (0.5) for a model never counted (or ``None``).
        """
        agreed, rewards = self.model_counts.get((model, kind), (0, 0)) if model else (0, 0)
        a0, b0 = prior
        return (a0 + agreed) / (a0 + b0 + rewards)

    def model_rows(self) -> list[tuple[str, str, int, int]]:
        """``(model, kind, agreed, rewards)`` per counted pair, most rewards first."""
        rows = [(m, k, a, r) for (m, k), (a, r) in self.model_counts.items()]
        return sorted(rows, key=lambda row: (-row[3], row[0], row[1]))

    def adopt_model_counts(self, rows: Iterable[tuple[str, str, int, int]]) -> None:
        """Take another node's per-(model, kind) counts where they rest on more rewards than ours
        (a joining coordinator copies the network's view, as it does fitness)."""
        for model, kind, agreed, rewards in rows:
            key = (model, kind)
            if rewards > self.model_counts.get(key, (0, 0))[1] and (
                key in self.model_counts or len(self.model_counts) < MAX_MODEL_KINDS
            ):
                self.model_counts[key] = (min(agreed, rewards), rewards)

    def counts(self, node_id: str) -> tuple[int, int]:
        """``(agreed, rewards)`` of ``node_id``: rewards its fitness rests on, and how many were for agreeing."""
        if node_id == self.node_id:
            return self.self_counts
        peer = self.table.get(node_id)
        if peer is not None:
            return peer.agreed, peer.rewards
        return self._saved_counts.get(node_id, (0, 0))

    def fitness(self, node_id: str) -> float:
        """Current fitness of ``node_id`` (neutral 0.5 when unknown)."""
        if node_id == self.node_id:
            return self.self_fitness
        peer = self.table.get(node_id)
        if peer is not None:
            return peer.fitness
        return self._saved.get(node_id, NEUTRAL_FITNESS)

    def issue(
        self,
        chunk_id: str,
        rewards: dict[str, float],
        *,
        models: Mapping[str, str | None] | None = None,
        kind: str | None = None,
    ) -> list[RewardRecord]:
        """Signed records for one chunk's rewards (node id -> reward in [-1, 1], the DELLM reward rule).

        ``models`` (node id -> the model it answered with) and ``kind`` (the
        chunk's operation) go into the records for the per-(model, kind) counts.
        Not applied yet: the caller applies them (:meth:`apply`) and gossips them.

        Raises:
            RuntimeError: this book has no identity to sign with.
        """
        if self.identity is None:
            raise RuntimeError("this fitness book has no identity to sign reward records with")
        return reward_records(self.identity, chunk_id, rewards, models=models, kind=kind)

    def check(self, record: RewardRecord) -> str | None:
        """Why a received record must be dropped (a :data:`REJECT_REASONS` value), or ``None`` if it may be applied.

        Checks, in order: freshness of ``ts``, issuer known with a public key,
        signature, (issuer, seq) not accepted before (see module docstring).
        Does not look at the record id (:meth:`receive` dedupes first).
        """
        now = self.clock()
        if not now - self.window_s <= record.ts <= now + self.window_s:  # NaN fails too
            return "stale"
        key = self._issuer_key(record.issuer)
        if key is None:
            return "non_member"
        if not verify_reward(key, record):
            return "signature"
        window = self._windows.get(record.issuer)
        if window is not None and window.seen(record.seq):
            return "replay"
        return None

    def _issuer_key(self, issuer: str) -> bytes | None:
        if issuer == self.node_id:
            return self.identity.public_key if self.identity is not None else None
        peer = self.table.get(issuer)
        return peer.public_key if peer is not None else None

    def _reject(self, record: RewardRecord, reason: str) -> None:
        self.rejected[reason] += 1
        key = (reason, record.issuer)
        if key not in self._warned and len(self._warned) < 1024:
            self._warned.add(key)
            # An unknown issuer is routine (a coordinator that left and was forgotten, or one whose
            # member entry has not arrived yet); a bad signature, a replay or a skewed clock is not.
            log.log(
                logging.INFO if reason == "non_member" else logging.WARNING,
                "dropping reward record %s from issuer %s: %s (further ones are only counted in stats)",
                record.id[:64],
                record.issuer[:64],
                _REASON_TEXT[reason],
            )

    def _remember_seq(self, record: RewardRecord) -> None:
        window = self._windows.get(record.issuer)
        if window is None:
            window = self._windows[record.issuer] = _SeqWindow()
        window.add(record.seq, record.ts, self.max_seqs_per_issuer)
        now = self.clock()
        if now - self._pruned_at > 1.0:  # forget what the freshness check now rejects anyway
            self._pruned_at = now
            horizon = now - self.window_s
            for issuer, w in list(self._windows.items()):
                w.prune(horizon)
                if not w.seqs:
                    del self._windows[issuer]

    def apply(self, record: RewardRecord) -> bool:
        """Apply a record once, unchecked (our own, or one :meth:`check` passed); returns False for a duplicate."""
        if record.id in self._seen:
            self._duplicate(record.id)
            return False
        self._seen[record.id] = 0
        self._remember_seq(record)
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        self._recent.append((time.monotonic(), record))
        old = self.fitness(record.node_id)
        new = apply_reward(old, record.reward)
        agreed, rewards = self.counts(record.node_id)
        counts = (agreed + (record.reward > 0), rewards + 1)
        if record.node_id == self.node_id:
            self.self_fitness, self.self_counts = new, counts
        elif (peer := self.table.get(record.node_id)) is not None:
            peer.fitness = new
            peer.agreed, peer.rewards = counts
        else:
            self._saved[record.node_id] = new
            self._saved_counts[record.node_id] = counts
        if record.model and record.kind:
            key = (record.model, record.kind)
            if key in self.model_counts or len(self.model_counts) < MAX_MODEL_KINDS:
                agreed, rewards = self.model_counts.get(key, (0, 0))
                self.model_counts[key] = (agreed + (record.reward > 0), rewards + 1)
        self.applied += 1
        self._dirty = True
        for listener in self.listeners:
            listener(record, old, new)
        return True

    def receive(self, records: Iterable[RewardRecord]) -> list[RewardRecord]:
        """Apply gossiped records that pass :meth:`check`; forward the new ones in the background.

        Duplicates (record id already applied) and rejected records are
        dropped and counted, never forwarded. Returns the records applied.
        """
        fresh = []
        for record in records:
            if record.id in self._seen:
                self._duplicate(record.id)
                continue
            reason = self.check(record)
            if reason is not None:
                self._reject(record, reason)
            elif self.apply(record):
                fresh.append(record)
        onward = [r.model_copy(update={"hops": r.hops + 1}) for r in fresh if r.hops + 1 < self.max_hops]
        if onward:
            if self.broadcast is not None:
                self.broadcast(onward)
            else:
                self.spawn_forward(onward, self.fanout)
        return fresh

    def _duplicate(self, record_id: str) -> None:
        self.duplicates += 1
        count = self._seen[record_id] = self._seen[record_id] + 1
        self.duplicates_max = max(self.duplicates_max, count)

    def receive_raw(self, maps: Iterable[dict]) -> list[RewardRecord]:
        """:meth:`receive` for records as raw wire maps (piggybacked on SWIM datagrams).

        Duplicates are counted before validation (most copies are
        duplicates; validating them cost more than the check); malformed
        maps are dropped and counted as *signature* rejections.
        """
        records = []
        for raw in maps:
            record_id = raw.get("id")
            if isinstance(record_id, str) and record_id in self._seen:
                self._duplicate(record_id)
                continue
            try:
                records.append(RewardRecord.model_validate(raw))
            except ValueError:
                self.rejected["signature"] += 1
        return self.receive(records) if records else []

    def track(self, task: asyncio.Task) -> None:
        """Keep a background task that issues or gossips rewards (e.g. a coordinator's stragglers) until it ends.

        :meth:`flush` waits for it like for a forward, :meth:`close` cancels it.
        """
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def spawn_forward(self, records: list[RewardRecord], fanout: int) -> None:
        """:meth:`forward` in the background (gossip must not hold up the caller)."""
        if self.pool is not None:
            self.track(asyncio.get_running_loop().create_task(self.forward(records, fanout)))

    async def forward(self, records: list[RewardRecord], fanout: int, timeout_s: float = 3.0) -> int:
        """Send ``records`` to random alive peers (with a URL); returns how many took them.

        Up to ln N + 2 peers (N alive peers) among those we hold a pooled
        connection to, and at least ``fanout`` (connecting to others if the
        pool has fewer): with fanout ln N + c, rumor mongering reaches every
        node with probability about exp(-e^-c) (Kermarrec, Massoulié and
        Ganesh, 2003, "Probabilistic reliable dissemination in large-scale
        systems"), 0.87 for c = 2, so anti-entropy rarely has to finish a
        rumor's spread (at N = 500 a round, 2.5 s, per missed node). Only
        pooled peers get the extra copies: new websockets for them cost
        more CPU than the copies saved (bench_scale, N = 500: 281
        connects/s). Each node forwards a record once, so this costs at
        most (ln N + 2) × N frames per record (4,500 at N = 500). The pooled
        connections are themselves a random, mixing set (see
        :mod:`dellm_p2p.membership`), so the rumor still spreads epidemically.
        """
        if self.pool is None:
            return 0
        open_urls = self.pool.open_urls()
        alive = self.table.alive()
        wide = max(fanout, math.ceil(math.log(len(alive) + 1) + 2))
        connected = [p for p in alive if p.url in open_urls]
        targets = random.sample(connected, min(wide, len(connected)))
        if len(targets) < fanout:
            others = [p for p in alive if p.url not in open_urls]
            targets += random.sample(others, min(fanout - len(targets), len(others)))
        sent = 0

        async def push(url: str) -> None:
            nonlocal sent
            with contextlib.suppress(Exception):  # gossip is best effort; peers may be gone
                client = await self.pool.get(url)
                await client.rewards(records)
                sent += 1

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(push(p.url) for p in targets))
        return sent

    def recent(self, window_s: float = 10.0) -> list[RewardRecord]:
        """Records applied in the last ``window_s`` [s] (at most 256), for anti-entropy in membership gossip."""
        horizon = time.monotonic() - window_s
        return [record for at, record in self._recent if at >= horizon]

    async def flush(self, timeout_s: float = 2.0) -> None:
        """Wait up to ``timeout_s`` [s] for background forwards to finish (before closing the connections)."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def counters(self) -> dict[str, int]:
        """Reward-record counters as ``stats`` fields (rewards_applied, rewards_duplicate, rewards_rejected_*)."""
        return {
            "rewards_applied": self.applied,
            "rewards_duplicate": self.duplicates,
            "rewards_duplicate_max": self.duplicates_max,
            **{f"rewards_rejected_{reason}": count for reason, count in self.rejected.items()},
        }

    def snapshot(self) -> dict[str, float]:
        """Fitness of every node this book knows, this one included."""
        values = dict(self._saved)
        values.update({p.node_id: p.fitness for p in self.table.records()})
        values[self.node_id] = self.self_fitness
        return values

    def snapshot_counts(self) -> dict[str, tuple[int, int]]:
        """``(agreed, rewards)`` of every node this book counted rewards for, this one included."""
        values = dict(self._saved_counts)
        values.update({p.node_id: (p.agreed, p.rewards) for p in self.table.records() if p.rewards})
        if self.self_counts[1]:
            values[self.node_id] = self.self_counts
        return values

    def load(self) -> None:
        """Read persisted fitness and replay memory (a missing or corrupt file leaves everyone neutral).

        File: ``{"fitness": {node_id: value}, "counts": {node_id: [agreed, rewards]},
        "replay": {issuer: {"floor": int, "seqs": [[seq, ts], ...]}},
        "models": [[model, kind, agreed, rewards], ...]}`` (``counts`` and ``models`` may be missing:
        files written before they existed).
        """
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            values = {str(k): min(1.0, max(0.0, float(v))) for k, v in data.get("fitness", {}).items()}
            counts = {}
            for k, (agreed, rewards) in data.get("counts", {}).items():
                rewards = max(0, int(rewards))
                counts[str(k)] = (min(rewards, max(0, int(agreed))), rewards)
            models = {}
            for model, kind, agreed, rewards in data.get("models", [])[:MAX_MODEL_KINDS]:
                rewards = max(0, int(rewards))
                models[(str(model), str(kind))] = (min(rewards, max(0, int(agreed))), rewards)
            windows = {}
            for issuer, raw in data.get("replay", {}).items():
                window = windows[str(issuer)] = _SeqWindow(int(raw.get("floor", -1)))
                window.seqs = {int(seq): float(ts) for seq, ts in raw.get("seqs", [])}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable fitness file %s: %s", self.path, exc)
            return
        self.self_fitness = values.pop(self.node_id, NEUTRAL_FITNESS)
        self.self_counts = counts.pop(self.node_id, (0, 0))
        self._saved.update(values)
        self._saved_counts.update(counts)
        self.model_counts.update(models)
        self._windows.update(windows)

    def save(self) -> None:
        """Write fitness atomically if it changed (blocking: call from a thread)."""
        if self.path is None or not self._dirty:
            return
        self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        horizon = self.clock() - self.window_s
        replay = {
            issuer: {"floor": w.floor, "seqs": [[seq, ts] for seq, ts in list(w.seqs.items()) if ts >= horizon]}
            for issuer, w in list(self._windows.items())
        }
        counts = {node_id: list(pair) for node_id, pair in self.snapshot_counts().items()}
        models = [list(row) for row in self.model_rows()]
        tmp.write_text(
            json.dumps(
                {"fitness": self.snapshot(), "counts": counts, "replay": replay, "models": models},
                indent=1,
                sort_keys=True,
            )
        )
        os.replace(tmp, self.path)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.to_thread(self.save)


_REASON_TEXT = {
    "signature": "bad signature",
    "replay": "replayed (issuer sequence number already seen)",
    "stale": "timestamp outside the freshness window",
    "non_member": "issuer is not a known member",
}
