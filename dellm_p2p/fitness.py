"""Fitness: the reward rule, epidemic gossip of reward records, persistence.

Rule (the DELLM design): per chunk, a peer whose answer agrees with the
consensus earns +0.05 plus a speed bonus, others −0.05; fitness is an EWMA,
``fitness ← 0.9 × fitness + 0.1 × target``, kept in [0, 1]. We read the
EWMA's input as the reward-adjusted fitness, ``target = fitness + reward``,
so a reward moves fitness by a tenth of itself: a good peer climbs above the
neutral 0.5 a newcomer starts at, a bad one sinks below it. (Taking the raw
reward as the target would drag every peer toward 0.05, agreeing or not.)

Reward records spread by epidemic gossip: each node applies a record once
(deduplicated by record id) and forwards it to ``fanout`` random peers while
``hops < max_hops`` (rumor mongering: fast, but with a small fanout a few
nodes miss each rumor, about e^-fanout of them). Membership's push-pull
exchanges also carry every record applied in the last seconds
(anti-entropy), which closes those gaps: every table converges in O(log N)
gossip rounds (Demers et al., 1987, "Epidemic algorithms for replicated
database maintenance").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .protocol import RewardRecord

if TYPE_CHECKING:
    from .membership import PeerPool
    from .peer_table import PeerTable

log = logging.getLogger(__name__)

NEUTRAL_FITNESS = 0.5
EWMA_KEEP = 0.9  # weight of the old fitness in the DELLM rule


def apply_reward(fitness: float, reward: float) -> float:
    """``0.9 × fitness + 0.1 × (fitness + reward)``, clamped to [0, 1] (see module docstring)."""
    return min(1.0, max(0.0, EWMA_KEEP * fitness + (1 - EWMA_KEEP) * (fitness + reward)))


class FitnessBook:
    """Fitness of every known node (this one included), fed by reward records.

    Args:
        node_id: this node's id (records about it update :attr:`self_fitness`).
        table: the peer table whose ``fitness`` fields this book maintains.
        path: JSON file to persist fitness across restarts (``None``: memory only).
        pool: connections for forwarding (``None``: apply only, never forward).
        fanout: peers each new record is forwarded to.
        max_hops: records with this many hops are not forwarded further.
        remember: how many record ids are kept for deduplication.
    """

    def __init__(
        self,
        node_id: str,
        table: PeerTable,
        *,
        path: Path | None = None,
        pool: PeerPool | None = None,
        fanout: int = 3,
        max_hops: int = 6,
        remember: int = 100_000,
    ):
        self.node_id = node_id
        self.table = table
        self.path = path
        self.pool = pool
        self.fanout = fanout
        self.max_hops = max_hops
        self.remember = remember
        self.self_fitness = NEUTRAL_FITNESS
        self.applied = 0
        self.duplicates = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._recent: deque[tuple[float, RewardRecord]] = deque(maxlen=256)
        self._saved: dict[str, float] = {}  # fitness of nodes not (yet) in the table
        self._tasks: set[asyncio.Task] = set()
        self._dirty = False
        self.load()
        table.initial_fitness = self._initial_fitness

    def _initial_fitness(self, node_id: str) -> float:
        return self._saved.pop(node_id, NEUTRAL_FITNESS)

    def fitness(self, node_id: str) -> float:
        """Current fitness of ``node_id`` (neutral 0.5 when unknown)."""
        if node_id == self.node_id:
            return self.self_fitness
        peer = self.table.get(node_id)
        if peer is not None:
            return peer.fitness
        return self._saved.get(node_id, NEUTRAL_FITNESS)

    def apply(self, record: RewardRecord) -> bool:
        """Apply a record once; returns False for a duplicate."""
        if record.id in self._seen:
            self.duplicates += 1
            return False
        self._seen[record.id] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        self._recent.append((time.monotonic(), record))
        new = apply_reward(self.fitness(record.node_id), record.reward)
        if record.node_id == self.node_id:
            self.self_fitness = new
        elif (peer := self.table.get(record.node_id)) is not None:
            peer.fitness = new
        else:
            self._saved[record.node_id] = new
        self.applied += 1
        self._dirty = True
        return True

    def receive(self, records: Iterable[RewardRecord]) -> list[RewardRecord]:
        """Apply gossiped records; forward the new ones in the background. Returns the new ones."""
        fresh = [r for r in records if self.apply(r)]
        onward = [r.model_copy(update={"hops": r.hops + 1}) for r in fresh if r.hops + 1 < self.max_hops]
        if onward:
            self.spawn_forward(onward, self.fanout)
        return fresh

    def spawn_forward(self, records: list[RewardRecord], fanout: int) -> None:
        """:meth:`forward` in the background (gossip must not hold up the caller)."""
        if self.pool is not None:
            task = asyncio.get_running_loop().create_task(self.forward(records, fanout))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def forward(self, records: list[RewardRecord], fanout: int, timeout_s: float = 3.0) -> int:
        """Send ``records`` to up to ``fanout`` random alive peers; returns how many took them."""
        if self.pool is None:
            return 0
        targets = [p for p in self.table.alive()]
        random.shuffle(targets)
        sent = 0

        async def push(url: str) -> None:
            nonlocal sent
            with contextlib.suppress(Exception):  # gossip is best effort; peers may be gone
                client = await self.pool.get(url)
                await client.rewards(records)
                sent += 1

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*(push(p.url) for p in targets[:fanout]))
        return sent

    def recent(self, window_s: float = 10.0) -> list[RewardRecord]:
        """Records applied in the last ``window_s`` [s] (at most 256), for anti-entropy in membership gossip."""
        horizon = time.monotonic() - window_s
        return [record for at, record in self._recent if at >= horizon]

    def snapshot(self) -> dict[str, float]:
        """Fitness of every node this book knows, this one included."""
        values = dict(self._saved)
        values.update({p.node_id: p.fitness for p in self.table.records()})
        values[self.node_id] = self.self_fitness
        return values

    def load(self) -> None:
        """Read persisted fitness (a missing or corrupt file leaves everyone neutral)."""
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            values = {str(k): min(1.0, max(0.0, float(v))) for k, v in data.get("fitness", {}).items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable fitness file %s: %s", self.path, exc)
            return
        self.self_fitness = values.pop(self.node_id, NEUTRAL_FITNESS)
        self._saved.update(values)

    def save(self) -> None:
        """Write fitness atomically if it changed (blocking: call from a thread)."""
        if self.path is None or not self._dirty:
            return
        self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fitness": self.snapshot()}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.to_thread(self.save)
