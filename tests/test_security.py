"""Cluster key, handshake deadline, TLS and per-peer limits, over real websockets on 127.0.0.1 (simulated engine)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import re
import socket
import stat
import sys
import time

import msgpack
import pytest
import websockets
from click.testing import CliRunner

from dellm_p2p.cli.main import main as cli_main
from dellm_p2p.client import AuthenticationError, PeerClient, PeerError
from dellm_p2p.config import ConfigError, load_config
from dellm_p2p.identity import Identity
from dellm_p2p.local import NodeProcess
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.pool import PeerPool
from dellm_p2p.protocol import (
    AUTH_SCHEME,
    CLOSE_AUTH_FAILED,
    CLOSE_HANDSHAKE_TIMEOUT,
    PROTOCOL_VERSION,
    Auth,
    Error,
    ErrorCode,
    Hello,
    Pong,
    SamplingParams,
    decode,
    encode,
)
from dellm_p2p.security import (
    SecurityConfigError,
    auth_proof,
    client_ssl_context,
    load_cluster_key,
    new_nonce,
    parse_key,
    server_ssl_context,
    write_key_file,
)
from dellm_p2p.server import NodeServer
from dellm_p2p.swarm import NoPeersError, Swarm

from .sim_node import membership_of
from .simulated_engine import SimulatedEngine

REPLY = "The capital of France is Paris."
ASK = [{"role": "user", "content": "What is the capital of France?"}]
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
HEX64 = re.compile(r"[0-9a-f]{64}")


def assert_no_secret(text: str) -> None:
    """Neither key (in any spelling we use) nor anything shaped like a proof or nonce appears in ``text``."""
    for key in (KEY, OTHER_KEY):
        assert key.hex() not in text.lower()
    assert not HEX64.search(text.lower()), text


@pytest.fixture
async def keyed():
    """A NodeServer with a cluster key and a short handshake deadline; yields (server, url)."""
    server = NodeServer(SimulatedEngine(REPLY), node_id="keyed", max_concurrency=8, cluster_key=KEY)
    server.handshake_timeout_s = 0.5
    url = await server.start("127.0.0.1", 0)
    yield server, url
    await server.shutdown(0)


@pytest.fixture
async def keyed_member():
    """A keyed node that is a network member too (membership as configured, the key on every link); yields its url."""
    me = Identity.generate()
    server = NodeServer(SimulatedEngine(REPLY), node_id=me.node_id, max_concurrency=8, cluster_key=KEY, identity=me)
    url = await server.start("127.0.0.1", 0)
    table = PeerTable(me.node_id, url)
    pool = PeerPool(node_id=me.node_id, name="keyed", url=url, identity=me, cluster_key=KEY)
    server.membership = membership_of(me, "keyed", url, table, pool, [], cluster_key=KEY)
    await server.membership.start()
    yield url
    await server.membership.close(goodbye_timeout_s=0.2)
    await server.shutdown(0)


@pytest.fixture
async def open_node():
    server = NodeServer(SimulatedEngine(REPLY), node_id="open", max_concurrency=8)
    url = await server.start("127.0.0.1", 0)
    yield server, url
    await server.shutdown(0)


async def recv(ws, timeout_s: float = 5.0):
    async with asyncio.timeout(timeout_s):
        return decode(await ws.recv())


async def closed_with(ws, timeout_s: float = 5.0) -> websockets.frames.Close:
    """Read until the server closes; returns its close frame."""
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        async with asyncio.timeout(timeout_s):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd


# --------------------------------------------------------------------------- cluster key


async def test_right_key_works_and_both_sides_prove_it(keyed):
    server, url = keyed
    async with await PeerClient.connect(url, cluster_key=KEY) as client:
        assert client.remote.node_id == "keyed" and client.remote.auth == AUTH_SCHEME
        assert (await client.complete(messages=ASK, timeout_s=5)).text == REPLY
        await asyncio.sleep(0.7)  # past the handshake deadline: an authenticated connection stays open
        assert (await client.ping()) > 0
    assert server.counters.auth_failures == 0


async def test_client_without_key_is_refused(keyed, caplog):
    server, url = keyed
    caplog.set_level(logging.WARNING, logger="dellm_p2p.server")
    with pytest.raises(AuthenticationError) as info:
        await PeerClient.connect(url)
    assert info.value.code == ErrorCode.AUTHENTICATION_FAILED
    assert "requires a cluster key" in str(info.value) and "\n" not in str(info.value)
    assert server.counters.auth_failures == 1
    lines = [r.getMessage() for r in caplog.records if "failed authentication" in r.getMessage()]
    assert len(lines) == 1, lines


async def test_wrong_key_is_refused_and_nothing_reveals_the_key(keyed, caplog):
    server, url = keyed
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthenticationError) as info:
        await PeerClient.connect(url, cluster_key=OTHER_KEY)
    message = str(info.value)
    assert "wrong cluster key" in message and "\n" not in message
    assert_no_secret(message)
    # The same over a raw socket: the error frame and the close reason.
    ws = await websockets.connect(url)
    nonce = new_nonce()
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id="intruder", auth=AUTH_SCHEME, auth_nonce=nonce)))
    hello = await recv(ws)
    assert isinstance(hello, Hello) and hello.auth == AUTH_SCHEME and hello.auth_nonce != nonce
    proof = auth_proof(OTHER_KEY, "client", nonce, hello.auth_nonce, "intruder", hello.node_id)
    await ws.send(encode(Auth(proof=proof)))
    error = await recv(ws)
    assert isinstance(error, Error) and error.code == ErrorCode.AUTHENTICATION_FAILED
    close = await closed_with(ws)
    assert close.code == CLOSE_AUTH_FAILED and close.reason == "authentication failed: wrong cluster key"
    for text in (error.message, close.reason, *(r.getMessage() for r in caplog.records)):
        assert_no_secret(text)
        assert proof not in text
    assert server.counters.auth_failures == 2
    assert sum("failed authentication" in r.getMessage() for r in caplog.records) == 2  # one line per refusal


async def test_keyed_client_refuses_an_open_node_and_the_open_node_refuses_it(open_node):
    server, url = open_node
    with pytest.raises(AuthenticationError) as info:
        await PeerClient.connect(url, cluster_key=KEY)
    assert "has no cluster key" in str(info.value)
    assert server.counters.auth_failures == 1
    async with await PeerClient.connect(url) as client:  # keyless clients keep working
        assert (await client.complete(messages=ASK, timeout_s=5)).text == REPLY


async def test_client_checks_the_server_proof():
    """A server that skips the check of our proof and answers with a made-up one is not trusted."""

    async def impostor(ws):
        hello = decode(await ws.recv())
        reply = Hello(protocol=PROTOCOL_VERSION, node_id="impostor", auth=AUTH_SCHEME, auth_nonce=new_nonce())
        await ws.send(encode(reply))
        decode(await ws.recv())  # the client's proof, unchecked
        await ws.send(encode(Auth(proof=auth_proof(OTHER_KEY, "server", hello.auth_nonce, reply.auth_nonce, "x", "y"))))
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await ws.recv()
        closes.append(ws.close_code)

    closes: list[int | None] = []
    async with websockets.serve(impostor, "127.0.0.1", 0) as fake:
        port = next(iter(fake.sockets)).getsockname()[1]
        with pytest.raises(AuthenticationError) as info:
            await PeerClient.connect(f"ws://127.0.0.1:{port}", cluster_key=KEY)
        assert "failed to prove the cluster key" in str(info.value)
        async with asyncio.timeout(5):
            while not closes:
                await asyncio.sleep(0.01)
    assert closes == [CLOSE_AUTH_FAILED]


@pytest.mark.parametrize(
    "first",
    [
        msgpack.packb({"type": "generate", "id": "r", "prompt": "x"}),
        msgpack.packb({"type": "ping", "nonce": 1}),
        b"\xc1 not msgpack",
        "a text frame",
    ],
    ids=["generate", "ping", "garbage", "text"],
)
async def test_keyed_node_closes_on_any_frame_before_hello(keyed, first):
    server, url = keyed
    ws = await websockets.connect(url)
    await ws.send(first)
    error = await recv(ws)
    assert isinstance(error, Error) and error.code == ErrorCode.AUTHENTICATION_FAILED
    assert (await closed_with(ws)).code == CLOSE_AUTH_FAILED
    assert server.engine.counters.requests_total == 0


async def test_keyed_node_closes_on_a_request_between_hello_and_auth(keyed):
    server, url = keyed
    ws = await websockets.connect(url)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id="c", auth=AUTH_SCHEME, auth_nonce=new_nonce())))
    assert isinstance(await recv(ws), Hello)
    await ws.send(msgpack.packb({"type": "generate", "id": "r", "messages": ASK}))
    error = await recv(ws)
    assert error.code == ErrorCode.AUTHENTICATION_FAILED and "expected 'auth'" in error.message
    close = await closed_with(ws)
    assert close.code == CLOSE_AUTH_FAILED
    assert server.engine.counters.requests_total == 0 and server.in_flight == 0


@pytest.mark.parametrize("send_hello", [False, True], ids=["silent", "hello-only"])
async def test_never_authenticating_socket_is_closed_by_the_deadline(keyed, send_hello):
    server, url = keyed
    ws = await websockets.connect(url)
    started = time.monotonic()
    if send_hello:
        await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id="c", auth=AUTH_SCHEME, auth_nonce=new_nonce())))
    close = await closed_with(ws, timeout_s=5)
    assert close.code == CLOSE_HANDSHAKE_TIMEOUT
    assert 0.4 < time.monotonic() - started < 3
    assert server.counters.handshake_timeouts == 1


async def test_open_node_closes_a_silent_socket_too(open_node):
    server, url = open_node
    server.handshake_timeout_s = 0.3
    ws = await websockets.connect(url)
    assert (await closed_with(ws)).code == CLOSE_HANDSHAKE_TIMEOUT


async def test_swarm_with_the_key_answers_and_without_it_names_the_refusal(keyed_member):
    url = keyed_member
    async with Swarm(peers=[url], mdns=False, discover_timeout_s=5, cluster_key=KEY) as swarm:
        answer = await swarm.ask("What is the capital of France?", synthesize=False, redundancy=1)
        assert "Paris" in answer.text
    with pytest.raises(NoPeersError) as info:
        async with Swarm(peers=[url], mdns=False, discover_timeout_s=1, cluster_key=OTHER_KEY):
            pass
    assert "refused us" in str(info.value) and "authentication_failed" in str(info.value)
    assert_no_secret(str(info.value))


# --------------------------------------------------------------------------- key files and keygen


def test_key_file_round_trip_and_permissions(tmp_path):
    path = write_key_file(tmp_path / "sub" / "cluster.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_cluster_key(path)) == 32
    with pytest.raises(SecurityConfigError) as info:
        write_key_file(path)
    assert "exists" in str(info.value)
    old = path.read_text()
    write_key_file(path, force=True)
    assert path.read_text() != old and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    for bad in ("", "zz", "abcd", "x" * 10):
        with pytest.raises(SecurityConfigError):
            parse_key(bad)
    with pytest.raises(SecurityConfigError) as info:
        load_cluster_key(tmp_path / "missing.key")
    assert "missing.key" in str(info.value)


def test_keygen_cli_writes_a_0600_file_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "cluster.key"

    def keygen(*args: str):
        return CliRunner().invoke(cli_main, ["keygen", *args])

    first = keygen(str(path))
    assert first.exit_code == 0, first.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key) and key not in first.output and str(path) in first.stdout
    again = keygen(str(path))
    assert again.exit_code == 1 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    assert again.exception is None or isinstance(again.exception, SystemExit)
    assert path.read_text().strip() == key
    forced = keygen(str(path), "--force")
    assert forced.exit_code == 0 and path.read_text().strip() != key


def test_config_reads_key_and_tls_settings(tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith("DELLM_"):
            monkeypatch.delenv(name)
    toml = tmp_path / "node.toml"
    toml.write_text('cluster_key_file = "/etc/dellm/cluster.key"\nmax_prompt_chars = 500\n')
    config = load_config(toml)
    assert str(config.cluster_key_file) == "/etc/dellm/cluster.key" and config.max_prompt_chars == 500
    monkeypatch.setenv("DELLM_CLUSTER_KEY_FILE", "/run/key")
    assert str(load_config(toml).cluster_key_file) == "/run/key"
    assert str(load_config(toml, cluster_key_file="/flag/key").cluster_key_file) == "/flag/key"
    with pytest.raises(ConfigError) as info:
        load_config(tls_cert="/c.pem")
    assert "tls_key" in str(info.value)
    monkeypatch.delenv("DELLM_CLUSTER_KEY_FILE")
    defaults = load_config()
    assert defaults.cluster_key_file is None and defaults.max_requests_per_s_per_peer >= 200


async def test_two_keyed_nodes_gossip_and_a_keyless_one_stays_out(tmp_path):
    """Real processes: the key by flag and by environment; CLI commands with no, wrong and right key."""
    key_file = write_key_file(tmp_path / "cluster.key")
    wrong_file = write_key_file(tmp_path / "wrong.key")
    fast = {"DELLM_GOSSIP_INTERVAL_S": "0.2"}
    base = ["--no-model", "--no-mdns"]
    with socket.socket() as sock:  # a's port up front, so all three nodes start at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    a_url = f"ws://127.0.0.1:{port}"
    nodes = []
    try:
        key_flag = ["--cluster-key-file", str(key_file), "--port", str(port)]
        a = NodeProcess([*base, "--name", "ka", "--state-dir", str(tmp_path / "a"), *key_flag], env=fast)
        nodes.append(a)
        env = {**fast, "DELLM_CLUSTER_KEY_FILE": str(key_file)}
        b = NodeProcess([*base, "--name", "kb", "--state-dir", str(tmp_path / "b"), "--peer", a_url], env=env)
        nodes.append(b)
        c = NodeProcess([*base, "--name", "open", "--state-dir", str(tmp_path / "c"), "--peer", a_url], env=fast)
        nodes.append(c)
        await asyncio.gather(*(asyncio.to_thread(n.wait_ready, 60) for n in nodes))
        assert a.url == a_url

        async def rows(url: str) -> dict[str, str]:
            async with await PeerClient.connect(url, cluster_key=load_cluster_key(key_file)) as client:
                return {row.node_id: row.state for row in (await client.peers()).peers}

        async with asyncio.timeout(10):
            while not ((await rows(a.url)).get(b.node_id) == "alive" and (await rows(b.url)).get(a.node_id) == "alive"):
                await asyncio.sleep(0.1)
        async with asyncio.timeout(10):  # the open node has tried (and was refused)
            while "refused us" not in c.stderr_tail(50):
                await asyncio.sleep(0.1)
        assert "authentication_failed" in c.stderr_tail(50)
        assert c.node_id not in await rows(a.url) and c.node_id not in await rows(b.url)
        assert_no_secret(a.stderr_tail(200) + c.stderr_tail(200))

        async def cli(*args: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dellm_p2p.cli.main", "stats", "--peer", a.url, "--json", *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={k: v for k, v in os.environ.items() if k != "DELLM_CLUSTER_KEY_FILE"},
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode or 0, (out + err).decode()

        (code, text), (wrong_code, wrong_text), (right_code, right_text) = await asyncio.gather(
            cli(), cli("--cluster-key-file", str(wrong_file)), cli("--cluster-key-file", str(key_file))
        )
        assert code == 1 and text.startswith("dellm: error: authentication_failed") and text.count("\n") == 1
        assert wrong_code == 1 and "wrong cluster key" in wrong_text and wrong_text.count("\n") == 1
        assert_no_secret(text + wrong_text)
        assert right_code == 0 and '"node_id"' in right_text
    finally:
        for node in nodes:
            node.kill()


# --------------------------------------------------------------------------- TLS


def self_signed(tmp_path):
    """A self-signed certificate for IP 127.0.0.1; returns (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_tls_round_trip_with_cluster_key(tmp_path):
    cert, key = self_signed(tmp_path)
    server = NodeServer(
        SimulatedEngine(REPLY), node_id="tls", cluster_key=KEY, ssl_context=server_ssl_context(cert, key)
    )
    url = await server.start("127.0.0.1", 0)
    try:
        assert url.startswith("wss://127.0.0.1:")
        context = client_ssl_context(cert)
        async with await PeerClient.connect(url, cluster_key=KEY, ssl_context=context) as client:
            assert (await client.complete(messages=ASK, timeout_s=5)).text == REPLY
        with pytest.raises(PeerError) as info:  # the system CAs do not know this certificate
            await PeerClient.connect(url, cluster_key=KEY, timeout_s=5)
        assert info.value.code == ErrorCode.CONNECTION_LOST and "CERTIFICATE_VERIFY_FAILED" in str(info.value)
        with pytest.raises(PeerError):  # plain ws:// to a TLS port
            await PeerClient.connect(url.replace("wss://", "ws://"), cluster_key=KEY, timeout_s=5)
    finally:
        await server.shutdown(0)
    with pytest.raises(SecurityConfigError):
        server_ssl_context(tmp_path / "nope.pem", key)


# --------------------------------------------------------------------------- limits


async def test_rate_limit_answers_rate_limited_and_the_connection_stays_usable():
    server = NodeServer(SimulatedEngine(REPLY), node_id="rl", max_requests_per_s_per_peer=10, request_burst_per_peer=4)
    url = await server.start("127.0.0.1", 0)
    try:
        ws = await websockets.connect(url)
        await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, node_id="c")))  # takes 1 of the 4 tokens
        assert isinstance(await recv(ws), Hello)
        for nonce in range(3):
            await ws.send(msgpack.packb({"type": "ping", "nonce": nonce}))
        await ws.send(msgpack.packb({"type": "generate", "id": "over", "messages": ASK}))
        replies = [await recv(ws) for _ in range(4)]
        assert [type(r) for r in replies[:3]] == [Pong, Pong, Pong]
        assert isinstance(replies[3], Error) and replies[3].code == ErrorCode.RATE_LIMITED and replies[3].id == "over"
        await ws.send(msgpack.packb({"type": "cancel", "id": "nothing"}))  # cancels are never limited
        await asyncio.sleep(0.25)  # refills 2.5 tokens
        await ws.send(msgpack.packb({"type": "ping", "nonce": 99}))
        assert await recv(ws) == Pong(nonce=99)
        await ws.close()
        assert server.counters.rate_limited == 1
    finally:
        await server.shutdown(0)


async def test_in_flight_per_peer_limit():
    engine = SimulatedEngine(REPLY, token_interval_s=0.05)
    server = NodeServer(engine, node_id="ifl", max_concurrency=8, max_in_flight_per_peer=2)
    url = await server.start("127.0.0.1", 0)
    try:
        async with await PeerClient.connect(url) as client, await PeerClient.connect(url) as other:
            first = [asyncio.create_task(client.complete(messages=ASK, timeout_s=10)) for _ in range(2)]
            await asyncio.sleep(0.05)
            with pytest.raises(PeerError) as info:
                await client.complete(messages=ASK, timeout_s=5)
            assert info.value.code == ErrorCode.TOO_MANY_IN_FLIGHT and "\n" not in str(info.value)
            assert (await other.complete(messages=ASK, timeout_s=5)).text == REPLY  # another peer is not affected
            assert [r.text for r in await asyncio.gather(*first)] == [REPLY, REPLY]
            assert (await client.complete(messages=ASK, timeout_s=5)).text == REPLY  # usable again
    finally:
        await server.shutdown(0)


async def test_prompt_length_limit():
    server = NodeServer(SimulatedEngine(REPLY), node_id="pl", max_prompt_chars=40)
    url = await server.start("127.0.0.1", 0)
    try:
        async with await PeerClient.connect(url) as client:
            for kwargs in (
                {"prompt": "x" * 41},
                {"messages": [{"role": "system", "content": "s" * 20}, {"role": "user", "content": "u" * 21}]},
            ):
                with pytest.raises(PeerError) as info:
                    await client.complete(**kwargs, params=SamplingParams(max_tokens=4), timeout_s=5)
                assert info.value.code == ErrorCode.PROMPT_TOO_LONG and "40" in str(info.value)
            assert (await client.complete(prompt="x" * 40, timeout_s=5)).text == REPLY
    finally:
        await server.shutdown(0)
