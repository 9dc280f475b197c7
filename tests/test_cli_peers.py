"""``dellm peers`` hides departed coordinators (``--all`` shows them); nodes forget them after a while."""

from __future__ import annotations

import asyncio
import json
import sys

from dellm_p2p import Swarm
from dellm_p2p.identity import Identity
from dellm_p2p.peer_table import PeerState, PeerTable
from dellm_p2p.protocol import MemberEntry

from .simulated_engine import SimulatedEngine
from .test_swarm import REPLIES, SimNode


async def peers_json(*args: str) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dellm_p2p.cli.main", "peers", *args, "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_departed_coordinators_are_hidden_unless_all():
    engine = SimulatedEngine(token_interval_s=0.001)
    engine.replies = dict(REPLIES)
    node = SimNode("peers-a", engine)
    url = await node.start([])
    try:
        async with Swarm(peers=[url], mdns=False) as swarm:
            await swarm.ask("What is 10% of 1000?")
            coordinator = swarm.node_id
        async with asyncio.timeout(5):  # the goodbye reaches the node
            while (peer := node.membership.table.get(coordinator)) is None or peer.state is not PeerState.LEFT:
                await asyncio.sleep(0.05)
        shown = await peers_json("--peer", url)
        assert [r["node_id"] for r in shown] == [node.node_id]
        everything = await peers_json("--peer", url, "--all")
        departed = [r for r in everything if r["node_id"] == coordinator]
        assert departed and departed[0]["url"] is None and departed[0]["state"] == "left"
    finally:
        await node.close()


def test_a_left_coordinator_is_forgotten_and_not_relearned():
    now = [1000.0]
    table = PeerTable("nself0000000000000", "ws://127.0.0.1:1", forget_after_s=60.0, clock=lambda: now[0])
    ident = Identity.generate()
    entry = MemberEntry(node_id=ident.node_id, public_key=ident.public_key, incarnation=1, heartbeat=5)
    table.observe(entry)
    table.observe(entry.model_copy(update={"heartbeat": 6, "state": "left"}))
    assert table.get(ident.node_id).state is PeerState.LEFT
    now[0] += 59
    table.sweep()
    assert ident.node_id in table
    now[0] += 2
    table.sweep()
    assert ident.node_id not in table
    # Another peer gossiping the old goodbye does not bring it back.
    table.observe(entry.model_copy(update={"heartbeat": 6, "state": "left"}))
    assert ident.node_id not in table
