"""One node in its own process with a SIMULATED engine, for multi-process tests (never used by the product).

Usage::

    python -m tests.sim_node --name a --reply "Six times seven is 42. Answer: 42" [--token-ms 2] [--bootstrap URL]

Starts a ``NodeServer`` + membership + ``FitnessBook`` on 127.0.0.1 (any
free port, mDNS off) around :class:`tests.simulated_engine.SimulatedEngine`,
prints its URL on stdout once serving, and stops cleanly when stdin closes.
The membership is the one a node's configuration selects (SWIM by default,
``DELLM_MEMBERSHIP=gossip`` for heartbeat gossip), see :func:`membership_of`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from dellm_p2p.config import NodeConfig
from dellm_p2p.identity import Identity
from dellm_p2p.membership import Membership, SwimMembership, membership_for
from dellm_p2p.membership.fitness import FitnessBook
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.server import NodeServer

from .simulated_engine import SimulatedEngine


def membership_of(
    identity: Identity,
    name: str,
    url: str,
    table: PeerTable,
    pool: PeerPool,
    bootstrap: list[str],
    *,
    model: str | None = "simulated",
    capacity: int = 8,
    in_flight: Callable[[], int] = lambda: 0,
    cluster_key: bytes | None = None,
) -> Membership | SwimMembership:
    """The membership a node with this configuration runs, chosen as ``dellm-node`` does (``membership_for``).

    ``DELLM_*`` variables apply (``DELLM_MEMBERSHIP``, ``DELLM_PROBE_INTERVAL_S`` ...); heartbeat gossip
    runs 0.1 s rounds so that a test cluster converges within a second.
    """
    config = NodeConfig(name=name, engine="none", mdns=False, peers=bootstrap, gossip_interval_s=0.1)
    return membership_for(
        config, node_id=identity.node_id, name=name, url=url, model=model, capacity=capacity, table=table,
        pool=pool, in_flight=in_flight, identity=identity, cluster_key=cluster_key,
    )  # fmt: skip


async def serve(args: argparse.Namespace) -> None:
    identity = Identity.generate()
    engine = SimulatedEngine(args.reply, token_interval_s=args.token_ms / 1000)
    server = NodeServer(engine, node_id=identity.node_id, name=args.name, max_concurrency=8, identity=identity)
    url = await server.start("127.0.0.1", 0)
    table = PeerTable(identity.node_id, url)
    pool = PeerPool(node_id=identity.node_id, name=args.name, url=url, identity=identity)
    pool.model, pool.capacity = "simulated", 8
    fitness = FitnessBook(identity.node_id, table, pool=pool, identity=identity)
    membership = membership_of(
        identity, args.name, url, table, pool, args.bootstrap, in_flight=lambda: server.in_flight
    )
    membership.fitness = fitness
    server.membership, server.fitness = membership, fitness
    await membership.start()
    print(url, flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin
    await membership.close(goodbye_timeout_s=0.2)
    await fitness.close()
    await server.shutdown(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--reply", required=True, help="what the simulated engine answers, word by word")
    p.add_argument("--token-ms", type=float, default=2.0, help="time per word [ms]")
    p.add_argument("--bootstrap", action="append", default=[], help="URL of a node to join through")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
