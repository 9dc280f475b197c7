"""Bootstrap through DNS (issue 26): a ``--peer`` name resolving to several addresses stands for each of them.

The names resolve through :mod:`tests.fake_dns` (a SIMULATED resolver) to
loopback addresses 127.0.0.2, 127.0.0.3 ...: nodes listen there on one shared
port, as the pods behind a Kubernetes headless Service do.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from dellm_p2p.config import NodeConfig
from dellm_p2p.membership.bootstrap import BootstrapResolver, is_ip, resolve_addresses
from dellm_p2p.node import Node

from .fake_dns import install


def common_free_port(hosts: list[str]) -> int:
    """A TCP and UDP port free on every one of ``hosts`` (loopback addresses)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts:
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


@pytest.fixture
def dns():
    """Names the test controls (the dict may change while nodes run)."""
    mapping: dict[str, list[str]] = {}
    restore = install(mapping)
    yield mapping
    restore()


async def fixed(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if not table.get(host):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


async def test_a_name_expands_to_one_url_per_address_without_our_own():
    resolve = await fixed({"peers": ["127.0.0.2", "127.0.0.3", "127.0.0.4"], "me": ["127.0.0.3"]})
    urls = ["ws://peers:7070", "ws://127.0.0.9:7070", "wss://peers:7070", "ws://peers:7070"]
    resolver = BootstrapResolver(urls, own_url="ws://127.0.0.4:7070", resolve=resolve)
    assert resolver.has_names
    assert await resolver.resolve() == [
        "ws://127.0.0.2:7070",
        "ws://127.0.0.3:7070",
        "ws://127.0.0.9:7070",  # an address is kept as given
        "wss://peers:7070",  # TLS checks the name: dialled as given
    ]
    # Our own URL given by name (Compose advertises service names): its addresses are ours too.
    by_name = BootstrapResolver(["ws://peers:7070"], own_url="ws://me:7070", resolve=resolve)
    assert await by_name.resolve() == ["ws://127.0.0.2:7070", "ws://127.0.0.4:7070"]
    assert not BootstrapResolver(["ws://127.0.0.2:7070"], own_url="ws://127.0.0.3:7070").has_names


async def test_a_name_that_does_not_resolve_or_hangs_contributes_nothing_within_the_deadline():
    async def hangs(host: str, port: int) -> list[str]:
        await asyncio.sleep(3600)
        return []

    resolver = BootstrapResolver(["ws://slow:7070", "ws://127.0.0.2:7070"], timeout_s=0.2, resolve=hangs)
    started = time.monotonic()
    assert await resolver.resolve() == ["ws://127.0.0.2:7070"]
    assert time.monotonic() - started < 5
    missing = BootstrapResolver(["ws://nobody:7070"], resolve=await fixed({}))
    assert await missing.resolve() == []


async def test_resolution_goes_through_the_loops_resolver(dns):
    dns["dellm-peers"] = ["127.0.0.2", "127.0.0.3"]
    assert await resolve_addresses("dellm-peers", 7070) == ["127.0.0.2", "127.0.0.3"]
    dns["dellm-peers"] = []
    with pytest.raises(OSError):
        await resolve_addresses("dellm-peers", 7070)
    assert is_ip("127.0.0.2") and is_ip("[::1]") and not is_ip("dellm-peers")


def node_config(tmp_path, host: str, port: int, peers: list[str], refresh_s: float = 30.0) -> NodeConfig:
    return NodeConfig(
        name=f"dns-{host.rsplit('.', 1)[1]}",
        engine="none",
        host=host,
        port=port,
        mdns=False,
        peers=peers,
        state_dir=tmp_path / host,
        dns_refresh_s=refresh_s,
        probe_interval_s=0.2,
    )


async def wait_until(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s:g} s")
        await asyncio.sleep(0.05)


def sees(node: Node, others: list[Node]) -> bool:
    assert node.table is not None
    alive = {p.node_id for p in node.table.alive()}
    return all(o.node_id in alive for o in others)


async def test_nodes_behind_one_name_join_through_each_address(tmp_path, dns):
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = common_free_port(hosts)
    dns["dellm-peers"] = hosts
    nodes = [Node(node_config(tmp_path, h, port, [f"ws://dellm-peers:{port}"])) for h in hosts]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        for node, host in zip(nodes, hosts, strict=True):
            # Every address but its own, so each node joins through both others.
            assert node.membership is not None
            assert node.membership.bootstrap == [f"ws://{h}:{port}" for h in hosts if h != host]
        await wait_until(lambda: all(sees(n, [o for o in nodes if o is not n]) for n in nodes))
    finally:
        await asyncio.gather(*(n.close(0) for n in nodes))


async def test_a_name_is_resolved_again_on_schedule(tmp_path, dns):
    hosts = ["127.0.0.5", "127.0.0.6"]
    port = common_free_port(hosts)
    dns["dellm-later"] = []  # nothing behind the name yet: the first node starts alone
    first = Node(node_config(tmp_path, hosts[0], port, [f"ws://dellm-later:{port}"], refresh_s=0.3))
    second = Node(node_config(tmp_path, hosts[1], port, []))  # knows nobody: found only through the name
    try:
        await first.start()
        await second.start()
        await asyncio.sleep(0.5)
        assert not sees(first, [second])
        dns["dellm-later"] = hosts  # the second pod is ready: the Service's name now lists it
        await wait_until(lambda: sees(first, [second]) and sees(second, [first]))
    finally:
        await asyncio.gather(first.close(0), second.close(0))
