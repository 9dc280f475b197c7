"""Command-line input and output a newcomer meets (issue 24): URLs checked at parse time, full piped tables, keygen."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import click
import pytest

from dellm_p2p.cli.options import peer_url

from .simulated_engine import SimulatedEngine
from .test_swarm import REPLIES, SimNode


def dellm(*args: str, module: str = "dellm_p2p.cli.main") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:7070", "wss://node.example:443", ("ws://a:1", "ws://b:2"), None])
def test_node_urls_pass(url):
    assert peer_url(None, None, url) == url


@pytest.mark.parametrize(
    "url", ["notaurl", "http://127.0.0.1:7070", "ws://:80", "ws://127.0.0.1:99999", ("ws://a:1", "x")]
)
def test_other_urls_are_refused(url):
    with pytest.raises(click.BadParameter):
        peer_url(None, None, url)


@pytest.mark.parametrize(
    "args",
    [
        ("ask", "hi", "--no-mdns", "--peer", "notaurl"),
        ("ask", "hi", "--no-mdns", "--peer", "http://127.0.0.1:7070"),
        ("chat", "--no-mdns", "--peer", "notaurl"),
        ("peers", "--peer", "http://127.0.0.1:7070"),
        ("generate", "--peer", "notaurl", "hi"),
        ("generate", "--peer", "ws://127.0.0.1:9", "-n", "3", "hi"),  # several samples need a temperature
    ],
)
def test_bad_input_is_refused_at_parse_time_with_exit_2(args):
    result = dellm(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "no alive node" not in result.stderr


def test_the_node_refuses_a_bad_peer_url_at_parse_time():
    result = dellm("--peer", "http://127.0.0.1:7070", "--no-model", module="dellm_p2p.cli.node")
    assert result.returncode == 2 and "not a node URL" in result.stderr


def test_keygen_names_both_uses(tmp_path):
    result = dellm("keygen", str(tmp_path / "key"))
    assert result.returncode == 0, result.stderr
    assert "--cluster-key-file" in result.stdout and "--api-key-file" in result.stdout


def test_up_refuses_an_api_key_without_an_http_port(tmp_path):
    key = tmp_path / "key"
    key.write_text("secret\n")
    result = dellm("up", "--api-key-file", str(key), "--dir", str(tmp_path / "swarm"), "--no-model")
    assert result.returncode == 2 and "--http-port" in result.stderr
    assert "--api-key-file" in dellm("up", "--help").stdout


async def test_piped_peers_table_keeps_full_values():
    engine = SimulatedEngine(token_interval_s=0.001)
    engine.replies = dict(REPLIES)
    node = SimNode("a-node-name-long-enough-to-be-cut-at-eighty-columns", engine)
    url = await node.start([])
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dellm_p2p.cli.main", "peers", "--peer", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        assert url in text and node.node_id in text and "a-node-name-long-enough-to-be-cut-at-eighty-columns" in text
    finally:
        await node.close()
