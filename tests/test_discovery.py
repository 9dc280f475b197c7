"""Discovery and membership with real `dellm-node --no-model` processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from dellm_p2p.client import PeerClient
from dellm_p2p.discovery import SERVICE_TYPE
from dellm_p2p.identity import Identity
from dellm_p2p.local import NodeProcess
from dellm_p2p.membership import Membership
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.protocol import PROTOCOL_VERSION
from dellm_p2p.server import NodeServer

# Heartbeat gossip's timings, for runs with DELLM_MEMBERSHIP=gossip; SWIM (the default) runs its own defaults.
FAST = {"DELLM_SUSPECT_AFTER_S": "1.5", "DELLM_DEAD_AFTER_S": "3", "DELLM_GOSSIP_INTERVAL_S": "0.3"}


@pytest.fixture
def nodes(tmp_path):
    """Start --no-model nodes: ``start(name, *args)``; all are killed at the end."""
    started: list[NodeProcess] = []

    def start(name: str, *args: str, state: Path | None = None) -> NodeProcess:
        state_dir = state or tmp_path / name
        node = NodeProcess(["--no-model", "--name", name, "--state-dir", str(state_dir), *args], env=FAST)
        started.append(node)
        node.wait_ready(timeout_s=60)
        return node

    yield start
    for node in started:
        node.kill()


async def peer_rows(url: str) -> dict[str, dict]:
    async with await PeerClient.connect(url, timeout_s=5) as client:
        return {row.node_id: row.model_dump() for row in (await client.peers()).peers}


async def wait_for(check: Callable[[], object], timeout_s: float, what: str):
    """Poll the async ``check`` until it returns something truthy, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout_s} s; last: {result!r}")
        await asyncio.sleep(0.1)


def alive_ids(rows: dict[str, dict]) -> set[str]:
    return {node_id for node_id, row in rows.items() if row["state"] == "alive"}


async def test_three_nodes_find_each_other_by_mdns(nodes):
    trio = [nodes(name) for name in ("m1", "m2", "m3")]
    ids = {n.node_id for n in trio}

    async def all_know_each_other():
        tables = [alive_ids(await peer_rows(n.url)) for n in trio]
        return all(ids - {n.node_id} <= t for n, t in zip(trio, tables, strict=True))

    # The code guarantees that they find each other (mDNS announcements, then membership), not how fast: on
    # a loaded 2-core machine zeroconf's probing and the joins' handshakes took over 5 s (issue 24). The
    # deadline only stops a hang.
    await wait_for(all_know_each_other, 60.0, "three nodes knowing each other by mDNS")


async def test_peer_exchange_without_mdns(nodes):
    c = nodes("pc", "--no-mdns")
    b = nodes("pb", "--no-mdns", "--peer", c.url)
    a = nodes("pa", "--no-mdns", "--peer", b.url)
    rows = await wait_for(lambda: _has(a.url, c.node_id), 5.0, "A learning C through B's peer list")
    assert rows[c.node_id]["url"] == c.url
    assert (await peer_rows(a.url))[b.node_id]["rtt_ms"] > 0


async def _has(url: str, node_id: str):
    rows = await peer_rows(url)
    return rows if rows.get(node_id, {}).get("state") == "alive" else None


async def test_sigkill_is_dead_clean_stop_is_gone_restart_rejoins(nodes, tmp_path):
    watcher = nodes("w", "--no-mdns")
    victim = nodes("v", "--no-mdns", "--peer", watcher.url)
    leaver = nodes("l", "--no-mdns", "--peer", watcher.url)
    await wait_for(lambda: _has(watcher.url, victim.node_id), 5, "victim joining")
    await wait_for(lambda: _has(watcher.url, leaver.node_id), 5, "leaver joining")

    killed_at = time.monotonic()
    victim.kill()  # SIGKILL: no goodbye

    async def victim_dead():
        return (await peer_rows(watcher.url)).get(victim.node_id, {}).get("state") == "dead"

    await wait_for(victim_dead, 3 + 2, "SIGKILLed node marked dead")
    assert time.monotonic() - killed_at >= 1.5, "declared dead before the suspect timeout"

    stopped_at = time.monotonic()
    assert leaver.stop(timeout_s=10) == 0

    async def leaver_gone():
        row = (await peer_rows(watcher.url)).get(leaver.node_id)
        return row is None or row["state"] == "left"

    await wait_for(leaver_gone, 2.0, "cleanly stopped node leaving")
    assert time.monotonic() - stopped_at < 2 + 10

    again = nodes("v", "--no-mdns", "--peer", watcher.url, state=tmp_path / "v")
    assert again.node_id == victim.node_id, "node id must survive a restart"
    await wait_for(lambda: _has(watcher.url, victim.node_id), 5, "restarted node rejoining")


async def test_duplicate_node_id_is_detected_and_reported(nodes, tmp_path):
    first = nodes("dup1", "--no-mdns", state=tmp_path / "shared")
    second = nodes("dup2", "--no-mdns", "--peer", first.url, state=tmp_path / "shared")
    assert first.node_id == second.node_id
    await asyncio.sleep(1.5)
    assert "duplicate node id" in second.stderr_tail(50) + first.stderr_tail(50)
    assert first.proc.poll() is None and second.proc.poll() is None


async def _register(zc: AsyncZeroconf, name: str, properties: dict, port: int = 9) -> AsyncServiceInfo:
    info = AsyncServiceInfo(
        SERVICE_TYPE, f"{name}.{SERVICE_TYPE}", addresses=[socket.inet_aton("127.0.0.1")], port=port,
        properties=properties, server=f"{name}.local.",
    )  # fmt: skip
    await zc.async_register_service(info)
    return info


async def test_bad_mdns_records_and_unreachable_peers_are_ignored(nodes):
    silent = socket.socket()  # accepts TCP connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    silent_port = silent.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens here any more

    zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    dead, mute = Identity.generate(), Identity.generate()  # valid announcements of unreachable nodes
    bad = {
        "bad-noid": {"proto": str(PROTOCOL_VERSION), "port": "9"},
        "bad-port": {"id": "x1", "proto": str(PROTOCOL_VERSION), "port": "http"},
        "bad-proto": {"id": "x2", "proto": "99", "port": "9"},
        "bad-utf8": {b"id": b"\xff\xfe", "proto": str(PROTOCOL_VERSION), "port": "9"},
        "bad-fp": {"id": "x5", "proto": str(PROTOCOL_VERSION), "port": "9", "fp": dead.fingerprint},
        "dead-addr": {"id": dead.node_id, "fp": dead.fingerprint, "proto": str(PROTOCOL_VERSION),
                      "port": str(closed_port), "cap": "1"},
        "mute-peer": {"id": mute.node_id, "fp": mute.fingerprint, "proto": str(PROTOCOL_VERSION),
                      "port": str(silent_port), "cap": "1"},
    }  # fmt: skip
    try:
        for name, props in bad.items():
            await _register(zc, name, props)
        node = nodes("probe")
        await asyncio.sleep(4.5)
        rows = await peer_rows(node.url)
        assert "x1" not in rows and "x2" not in rows and "x5" not in rows
        assert rows.get(dead.node_id, {}).get("state") in (None, "suspect", "dead")
        assert rows.get(mute.node_id, {}).get("state") in (None, "suspect", "dead")
        log = node.stderr_tail(200)
        for fragment in ("bad-noid", "bad-port", "bad-proto", "bad-utf8", "bad-fp"):
            assert log.count(fragment) == 1, f"expected one log line about {fragment}:\n{log}"
        assert f"127.0.0.1:{closed_port}" in log and f"127.0.0.1:{silent_port}" in log
        assert node.proc.poll() is None
    finally:
        await zc.async_unregister_all_services()
        await zc.async_close()
        silent.close()


async def test_members_gossip_merges_and_answers(caplog):
    """In-process: a membership service answers pushes and learns from them."""
    hub, far = Identity.generate(), Identity.generate()
    server = NodeServer(None, node_id=hub.node_id, identity=hub)
    url = await server.start("127.0.0.1", 0)
    table = PeerTable(hub.node_id, url)
    server.membership = Membership(
        node_id=hub.node_id, name="hub", url=url, model=None, capacity=0, table=table,
        pool=PeerPool(node_id=hub.node_id, name="hub", url=url, identity=hub), identity=hub,
    )  # fmt: skip
    try:
        async with await PeerClient.connect(url, node_id="spoke", listen_url="ws://127.0.0.1:7") as client:
            assert table.get("spoke") is not None and table.get("spoke").source == "inbound"
            from dellm_p2p.protocol import MemberEntry

            entry = MemberEntry(node_id=far.node_id, url="ws://127.0.0.1:8", public_key=far.public_key, heartbeat=3)
            reply = await client.members([entry])
            assert reply.reply and [e.node_id for e in reply.entries] == [hub.node_id], "its own entry, in full"
            assert table.get(far.node_id).heartbeat == 3
            assert reply.beats == [], "the push already had far's version: no news to send back"
            wanted = await client.members([], want=[far.node_id, "unknown"])
            assert [b[0] for b in wanted.beats] == [far.node_id], "others as beats (not keyless ones)"
            assert tuple(wanted.beats[0]) == (far.node_id, 0, 3, 0, False)
            older = await client.members([], beats=[(far.node_id, 0, 2, 0, False)])
            assert [tuple(b) for b in older.beats] == [(far.node_id, 0, 3, 0, False)], "newer than the push's beat"
            assert {e.node_id for e in wanted.entries} == {hub.node_id, far.node_id}
            assert wanted.entries[-1].url == "ws://127.0.0.1:8"
        with caplog.at_level(logging.ERROR):
            with pytest.raises(Exception, match="duplicate_node_id"):
                await PeerClient.connect(url, node_id=hub.node_id)
    finally:
        await server.shutdown(0)


def dellm(*args: str) -> subprocess.CompletedProcess:
    """Run the ``dellm`` CLI (60 s deadline)."""
    return subprocess.run(
        [sys.executable, "-m", "dellm_p2p.cli.main", *args], capture_output=True, text=True, timeout=60
    )


def test_dellm_peers_cli_json_and_errors(nodes):
    node = nodes("cli")
    done = dellm("peers", "--peer", node.url, "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows[0]["node_id"] == node.node_id and rows[0]["state"] == "self"
    stats = dellm("stats", "--peer", node.url, "--json")
    assert stats.returncode == 0, stats.stderr
    counters = json.loads(stats.stdout)
    for reason in ("signature", "replay", "stale", "non_member"):
        assert counters[f"rewards_rejected_{reason}"] == 0
    assert counters["identity_rejected"] == 0 and counters["rewards_applied"] == 0
    found = dellm("peers", "--mdns-interface", "127.0.0.1", "--json")
    assert found.returncode == 0, found.stderr
    bad = dellm("peers", "--peer", "ws://127.0.0.1:9")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "error" in bad.stderr


async def test_mute_websocket_peer_does_not_stall_handshake():
    async def never_answer(ws):
        await ws.wait_closed()  # accepts the websocket, never sends a hello

    async with websockets.serve(never_answer, "127.0.0.1", 0) as mute:
        port = next(iter(mute.sockets)).getsockname()[1]
        started = time.monotonic()
        with pytest.raises(Exception, match="handshake"):
            await PeerClient.connect(f"ws://127.0.0.1:{port}", timeout_s=1)
        assert time.monotonic() - started < 3


def test_round_interval_grows_with_log_of_network_size():
    me = Identity.generate()
    membership = Membership(
        node_id=me.node_id, name="me", url=None, model=None, capacity=0, table=PeerTable(me.node_id),
        pool=PeerPool(node_id=me.node_id, name="me", url=None), gossip_interval_s=0.5,
    )  # fmt: skip
    sizes = {n: membership.round_interval(n) for n in (2, 32, 33, 64, 100, 500, 1000)}
    assert sizes == {2: 0.5, 32: 0.5, 33: 1.0, 64: 1.0, 100: 1.5, 500: 2.5, 1000: 3.0}


def _membership_knowing(count: int, open_count: int) -> tuple[Membership, list[str]]:
    """A membership whose table holds ``count`` alive peers (RTT known), ``open_count`` of them pooled."""
    me = Identity.generate()
    table = PeerTable(me.node_id)
    urls = [f"ws://127.0.0.1:{20000 + i}" for i in range(count)]
    for i, url in enumerate(urls):
        peer = Identity.generate()
        table.add_candidate(peer.node_id, url, "test", peer.public_key)
        table.record_rtt(peer.node_id, 1.0 + i)
    pool = PeerPool(node_id=me.node_id, name="me", url=None)
    pool.open_urls = lambda: set(urls[:open_count])  # type: ignore[method-assign]
    membership = Membership(
        node_id=me.node_id, name="me", url=None, model=None, capacity=0, table=table, pool=pool, fanout=3,
    )  # fmt: skip
    return membership, urls


def test_large_network_gossips_with_one_partner_a_round_and_rarely_explores():
    small, _ = _membership_knowing(20, open_count=20)
    assert small.partners(20) == 3 and len(small._targets()) == 3
    large, urls = _membership_knowing(100, open_count=10)
    assert large.partners(100) == 1
    picks = [large._targets() for _ in range(300)]
    assert all(len(p) == 1 for p in picks)
    explored = sum(p[0] not in urls[:10] for p in picks)
    assert 60 <= explored <= 140, f"an unconnected partner about one round in three, got {explored}/300"
    large._scale_timeouts()  # log base 2 for one partner: slower suspicion than with three
    assert large.table.suspect_after_s == pytest.approx(1.5 * (2 + 2 * math.log2(101)))
