"""SWIM membership with real ``dellm-node --no-model`` processes on 127.0.0.1 (issue 14).

A SIGKILLed node is marked dead by every other node within a few seconds; restarted
on the same state directory (same node id, a higher incarnation) it is alive again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from dellm_p2p.client import PeerClient, PeerError
from dellm_p2p.local import NodeProcess, stop_all

pytestmark = pytest.mark.slow

ENV = {"DELLM_MEMBERSHIP": "swim", "DELLM_PROBE_INTERVAL_S": "0.5"}


def start(tmp: Path, i: int, peer: str | None) -> NodeProcess:
    args = ["--no-model", "--no-mdns", "--name", f"swim-{i}", "--state-dir", str(tmp / f"node{i}")]
    if peer:
        args += ["--peer", peer]
    return NodeProcess(args, env=ENV)


async def states_of(url: str) -> dict[str, str]:
    """node id -> state in the peer table of the node at ``url`` (empty when it does not answer)."""
    try:
        async with asyncio.timeout(5):
            async with await PeerClient.connect(url, name="test", timeout_s=5) as client:
                view = await client.peers(timeout_s=5)
    except (PeerError, TimeoutError, OSError):
        return {}
    return {row.node_id: row.state for row in view.peers}


async def wait_for(check, timeout_s: float) -> float:
    """Poll the async ``check`` until it is true; returns the seconds it took (fails after ``timeout_s``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    pytest.fail(f"not within {timeout_s:g} s")


async def test_sigkilled_node_is_dead_everywhere_and_alive_again_after_restart(tmp_path):
    nodes = [start(tmp_path, 0, None)]
    try:
        boot = nodes[0].wait_ready(120)
        nodes += [start(tmp_path, i, boot) for i in range(1, 4)]
        for node in nodes:
            node.wait_ready(120)
        ids = [n.node_id for n in nodes]

        async def converged() -> bool:
            views = await asyncio.gather(*(states_of(n.url) for n in nodes))
            return all(
                all(view.get(i) == "alive" for i in ids if i != own) for view, own in zip(views, ids, strict=True)
            )

        await wait_for(converged, 30)

        victim = nodes[3]
        victim.kill()
        others = nodes[:3]

        async def dead_everywhere() -> bool:
            views = await asyncio.gather(*(states_of(n.url) for n in others))
            return all(view.get(victim.node_id) == "dead" for view in views)

        took = await wait_for(dead_everywhere, 20)
        assert took < 10, f"dead everywhere after {took:.1f} s"

        restarted = start(tmp_path, 3, boot)  # same state directory: same key, same node id
        nodes[3] = restarted
        restarted.wait_ready(120)
        assert restarted.node_id == victim.node_id

        async def alive_again() -> bool:
            views = await asyncio.gather(*(states_of(n.url) for n in others))
            return all(view.get(victim.node_id) == "alive" for view in views)

        await wait_for(alive_again, 20)
        async with await PeerClient.connect(others[0].url, name="test", timeout_s=5) as client:
            stats = await client.stats()
        assert stats.member_forged == 0 and stats.swim_probes > 0
    finally:
        stop_all(nodes, timeout_s=10)
