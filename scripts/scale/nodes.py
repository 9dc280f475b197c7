"""bench_scale's nodes: the product's stack with a SIMULATED engine, and its measurement hooks.

A :class:`SimNode` is assembled as :class:`dellm_p2p.node.Node` assembles a
node; the hooks are subclasses that record what the benchmark reports and
leave the library's behaviour unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import Counter
from typing import Any

from harness.simulated import SimulatedEngine

from dellm_p2p.identity import Identity
from dellm_p2p.membership import Membership, SwimMembership
from dellm_p2p.membership.fitness import FitnessBook
from dellm_p2p.membership.swim import SwimConfig
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.protocol import RewardRecord
from dellm_p2p.server import NodeServer

HOST = "127.0.0.1"  # every simulated node listens here

# ---------------------------------------------------------------------------
# Measurement hooks (subclasses; the library's behaviour is unchanged)

# Per worker process: the watched reward record id and, per node index, when
# (time.time()), how (push / anti-entropy / inject) and at which hop count it was applied.
WATCH: dict[str, Any] = {"id": None, "hits": {}}
_HOW = {"_on_frame": "push", "on_members": "anti-entropy", "_exchange": "anti-entropy", "cmd_inject": "inject"}


class _TimedFitnessBook(FitnessBook):
    """FitnessBook that stamps the first application of the watched record."""

    def __init__(self, *args, index: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.index = index

    def apply(self, record: RewardRecord) -> bool:
        fresh = super().apply(record)
        if fresh and record.id == WATCH["id"]:
            # Who called receive(): the server's frame handler (a `rewards` push) or membership (anti-entropy).
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_name in ("apply", "receive", "<listcomp>"):
                frame = frame.f_back
            caller = frame.f_code.co_name if frame is not None else "?"
            WATCH["hits"][self.index] = (time.time(), _HOW.get(caller, caller), record.hops)
        return fresh


class CountingPool(PeerPool):
    """PeerPool that counts the connections it opens (churn when a node gossips with more peers than it keeps)."""

    opened = 0  # per process, all nodes

    async def _connect(self, url: str):
        client = await super()._connect(url)
        CountingPool.opened += 1
        return client


class LogCounter(logging.Handler):
    """Counts WARNING+ records by message template; prints the first few ERRORs."""

    def __init__(self, tag: str):
        super().__init__(logging.WARNING)
        self.tag = tag
        self.counts: Counter[str] = Counter()
        self.printed = 0

    def emit(self, record: logging.LogRecord) -> None:
        template = str(record.msg).split("\n", 1)[0]  # asyncio puts the task's repr after a newline
        self.counts[f"{record.levelname} {record.name}: {template}"] += 1
        if record.levelno >= logging.ERROR and self.printed < 5:
            self.printed += 1
            cause = f" ({record.exc_info[1]!r})" if record.exc_info and record.exc_info[1] is not None else ""
            print(f"[{self.tag}] {record.levelname} {record.name}: {record.getMessage()}{cause}", file=sys.stderr)


def install_log_counter(tag: str) -> LogCounter:
    handler = LogCounter(tag)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return handler


# ---------------------------------------------------------------------------
# A node, assembled like dellm_p2p.node.Node does it (engine: SIMULATED)


class SimNode:
    def __init__(self, index: int, settings: dict[str, Any]):
        self.index = index
        self.identity = Identity.generate()
        self.node_id, self.name = self.identity.node_id, f"sim-{index:04d}"
        engine = SimulatedEngine(settings["tokens"], settings["token_ms"] / 1000, settings["first_token_ms"] / 1000)
        self.engine = engine
        self.server = NodeServer(
            engine, node_id=self.node_id, name=self.name, max_concurrency=settings["capacity"], identity=self.identity
        )
        self.settings = settings

    async def start(self, bootstrap: list[str]) -> str:
        s, server = self.settings, self.server
        url = await server.start(HOST, 0)
        self.table = PeerTable(self.node_id, url, suspect_after_s=s["suspect_after_s"], dead_after_s=s["dead_after_s"])
        pool = CountingPool(
            node_id=self.node_id, name=self.name, url=url, max_connections=s["max_connections"], identity=self.identity
        )
        hello = server.hello
        pool.model, pool.capacity = hello.model, hello.capacity
        if s["membership"] == "swim":
            swim = SwimConfig(probe_interval_s=s["probe_interval_s"], probe_timeout_s=s["probe_interval_s"] / 2)
            self.membership = SwimMembership(
                node_id=self.node_id, name=self.name, url=url, model=hello.model, capacity=hello.capacity,
                table=self.table, pool=pool, bootstrap=bootstrap, in_flight=lambda: server.in_flight,
                identity=self.identity, config=swim, drop_rate=0.0,
            )  # fmt: skip
        else:
            self.membership = Membership(
                node_id=self.node_id, name=self.name, url=url, model=hello.model, capacity=hello.capacity,
                table=self.table, pool=pool, bootstrap=bootstrap, in_flight=lambda: server.in_flight,
                gossip_interval_s=s["gossip_interval_s"], fanout=s["fanout"], identity=self.identity,
            )  # fmt: skip
        self.fitness = _TimedFitnessBook(
            self.node_id, self.table, pool=pool, fanout=s["fanout"], max_hops=s["reward_max_hops"], index=self.index,
            identity=self.identity,
        )  # fmt: skip
        server.membership, server.fitness = self.membership, self.fitness
        self.membership.fitness = self.fitness
        await self.membership.start()
        return url

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.membership.close(goodbye_timeout_s=0.5)
            await self.fitness.close()
        await self.server.shutdown(0)

    async def crash(self) -> None:
        """Stop as a SIGKILL would: no goodbye, sockets closed, every task gone."""
        membership = self.membership
        if isinstance(membership, SwimMembership):
            if membership._transport is not None:
                membership._transport.abort()
            for task in list(membership._tasks):
                task.cancel()
        else:
            if membership._task is not None:
                membership._task.cancel()
        self.server.cancel_in_flight()
        if self.server._server is not None:
            self.server._server.close()  # also drops open websockets: peers see the connection reset
        with contextlib.suppress(Exception):
            await membership.pool.close()

    def bytes_total(self) -> int:
        """Payload bytes this node sent and received: its server, its pool, SWIM datagrams [bytes]."""
        m = self.membership
        return self.server.counters.bytes_sent + self.server.counters.bytes_received + m.bytes_sent + m.bytes_received
