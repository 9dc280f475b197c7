"""Property-based fuzzing (hypothesis) of frames against a live NodeServer on 127.0.0.1 (simulated engine).

The node runs on its own event loop in a thread; the tests talk to it with
the synchronous websockets client, one connection reused across cases and
reopened whenever the node closes it (only an oversized frame may do that
after the handshake). After each case a ``ping`` with a fresh nonce is the
barrier: every frame the node sends before its ``pong`` must decode, every
``error`` must carry a known code. Every ``CHECK_EVERY`` cases, and at the
end, a fresh connection must still get a correct answer to a valid
``generate``, and no request may be left in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from dellm_p2p.protocol import (
    AUTH_SCHEME,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Auth,
    Done,
    Error,
    ErrorCode,
    Hello,
    Pong,
    Token,
    decode,
    encode,
)
from dellm_p2p.security import auth_proof, new_nonce
from dellm_p2p.server import NodeServer

from .simulated_engine import SimulatedEngine

REPLY = "The capital of France is Paris."
KEY = b"fuzzing-cluster-key-0123456789ab"
MAX_FRAME = 64 * 1024
WAIT_S = 5.0  # deadline of every wait for the node
CHECK_EVERY = 250
CODES = {c.value for c in ErrorCode}
FUZZ_CASES = 2000
HANDSHAKE_CASES = 300


class ThreadedNode:
    """A NodeServer with a simulated engine on its own event loop in a daemon thread."""

    def __init__(self, **kwargs):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-node", daemon=True)
        self.thread.start()
        self.engine = SimulatedEngine(REPLY, token_interval_s=0.0)
        self.server: NodeServer = self.call(self._start(kwargs))
        self.cases = 0
        self.checks = 0  # valid generates sent by assert_still_serves

    async def _start(self, kwargs) -> NodeServer:
        server = NodeServer(self.engine, node_id="fuzzed", max_concurrency=8, max_frame_bytes=MAX_FRAME, **kwargs)
        self.url = await server.start("127.0.0.1", 0)
        return server

    def call(self, coro, timeout_s: float = WAIT_S):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.call(self.server.shutdown(0), timeout_s=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def dial(url: str) -> ClientConnection:
    """A raw synchronous connection (entered as a context manager, as websockets >= 17 wants; close() ends it)."""
    return connect(url, max_size=None, compression=None, open_timeout=WAIT_S, close_timeout=1).__enter__()


def open_connection(node: ThreadedNode, key: bytes | None = None) -> ClientConnection:
    """A connection that has completed the handshake (with the cluster key when given)."""
    ws = dial(node.url)
    nonce = new_nonce() if key else None
    hello = Hello(protocol=PROTOCOL_VERSION, node_id="fuzzer", auth=AUTH_SCHEME if key else None, auth_nonce=nonce)
    ws.send(encode(hello))
    reply = decode(ws.recv(timeout=WAIT_S))
    assert isinstance(reply, Hello), reply
    if key:
        assert nonce is not None and reply.auth_nonce is not None
        ids = (nonce, reply.auth_nonce, "fuzzer", reply.node_id)
        ws.send(encode(Auth(proof=auth_proof(key, "client", *ids))))
        assert decode(ws.recv(timeout=WAIT_S)) == Auth(proof=auth_proof(key, "server", *ids))
    return ws


def check_reply(frame: bytes | str) -> object:
    """Whatever the node sends must be a valid message; errors carry a known code."""
    assert isinstance(frame, bytes), "the node sent a text frame"
    message = decode(frame)
    if isinstance(message, Error):
        assert message.code in CODES, message
        assert "\n" not in message.message
    return message


def assert_still_serves(node: ThreadedNode, key: bytes | None = None) -> None:
    """A fresh connection gets the full answer to a valid generate within the deadline."""
    ws = open_connection(node, key)
    node.checks += 1
    try:
        rid = f"check-{node.cases}"
        prompt = {"type": "generate", "id": rid, "messages": [{"role": "user", "content": "Capital of France?"}]}
        ws.send(msgpack.packb(prompt))
        text = []
        deadline = time.monotonic() + WAIT_S
        while True:
            message = check_reply(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if isinstance(message, Token) and message.id == rid:
                text.append(message.text)
            elif isinstance(message, Done) and message.id == rid:
                break
            assert not (isinstance(message, Error) and message.id == rid), message
        assert "".join(text) == REPLY
    finally:
        ws.close()


def wait_idle(node: ThreadedNode) -> None:
    """No request left in flight on the node, and none running in its engine."""
    deadline = time.monotonic() + WAIT_S
    while node.server.in_flight or node.engine.running:
        assert time.monotonic() < deadline, f"requests leaked: {node.server.in_flight} in flight"
        time.sleep(0.01)


# --------------------------------------------------------------------------- strategies

INT64 = st.integers(-(2**63), 2**64 - 1)  # everything msgpack can carry
EDGE_INTS = st.sampled_from([-(2**63), -(2**31), -1, 0, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1])
EDGE_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324])
HUGE_TEXT = st.integers(1_000, 80_000).map(lambda n: "w " * (n // 2))  # some exceed the frame limit
SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | EDGE_INTS
    | st.floats(allow_nan=True, allow_infinity=True)
    | EDGE_FLOATS
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
ANY = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12) | INT64, inner, max_size=6),
    max_leaves=24,
)
WEIRD = ANY | HUGE_TEXT | EDGE_INTS | EDGE_FLOATS


def either(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A field that is usually well typed and sometimes anything at all."""
    return st.one_of(valid, valid, WEIRD)


REQUEST_ID = either(st.text(min_size=1, max_size=64) | st.sampled_from(["r1", "r2", "check-0"]))
CHAT = either(
    st.lists(
        st.fixed_dictionaries(
            {"role": either(st.sampled_from(["system", "user", "assistant"])), "content": either(st.text(max_size=60))}
        ),
        max_size=4,
    )
)
PARAMS = either(
    st.fixed_dictionaries(
        {},
        optional={
            "max_tokens": either(st.integers(-5, 600)),
            "temperature": either(st.floats(-1, 3)),
            "top_p": either(st.floats(-0.5, 1.5)),
            "n": either(st.integers(-1, 20)),
            "stop": either(st.lists(st.text(max_size=300), max_size=10)),
            "logprobs": either(st.booleans()),
            "bogus": ANY,
        },
    )
)
NONCE = either(INT64)
MEMBER = either(
    st.fixed_dictionaries(
        {"node_id": either(st.text(min_size=1, max_size=20)), "url": either(st.just("ws://127.0.0.1:9"))},
        optional={
            "incarnation": either(INT64),
            "heartbeat": either(INT64),
            "state": either(st.sampled_from(["alive", "left", "dead"])),
            "capacity": either(INT64),
            "in_flight": either(INT64),
        },
    )
)
REWARD = either(
    st.fixed_dictionaries(
        {
            "id": REQUEST_ID,
            "issuer": either(st.text(min_size=1, max_size=20)),
            "node_id": either(st.just("fuzzed")),
            "reward": either(st.floats(-2, 2)),
        },
        optional={"ts": either(st.floats()), "hops": either(st.integers(-3, 100)), "chunk": either(st.text())},
    )
)
HEX64 = st.binary(min_size=32, max_size=32).map(bytes.hex)


def shaped(kind: str, fields: dict, optional: dict | None = None) -> st.SearchStrategy:
    return st.fixed_dictionaries({"type": st.just(kind)}, optional={**fields, **(optional or {})})


SHAPED = st.one_of(
    shaped("generate", {"id": REQUEST_ID, "messages": CHAT, "prompt": either(st.text(max_size=80)), "params": PARAMS}),
    shaped("cancel", {"id": REQUEST_ID}),
    shaped("ping", {"nonce": NONCE}),
    shaped("pong", {"nonce": NONCE}),
    shaped("get_stats", {"nonce": NONCE}),
    shaped("get_peers", {"nonce": NONCE}),
    shaped(
        "members", {"nonce": NONCE, "reply": either(st.booleans()), "entries": either(st.lists(MEMBER, max_size=5))}
    ),
    shaped("members", {"rewards": either(st.lists(REWARD, max_size=5))}),
    shaped("rewards", {"records": either(st.lists(REWARD, max_size=5))}),
    shaped(
        "hello",
        {
            "protocol": either(st.integers(0, 3)),
            "node_id": either(st.sampled_from(["fuzzed", "x"])),
            "auth": either(st.just(AUTH_SCHEME)),
            "auth_nonce": either(HEX64),
        },
    ),
    shaped("auth", {"proof": either(HEX64)}),
    shaped("token", {"id": REQUEST_ID, "text": either(st.text()), "index": either(INT64)}),
    shaped("done", {"id": REQUEST_ID, "finish_reasons": either(st.lists(st.text(), max_size=3))}),
    shaped("error", {"id": REQUEST_ID, "code": either(st.text()), "message": either(st.text())}),
    shaped("stats", {"nonce": NONCE, "node_id": either(st.text())}),
    shaped("peers", {"nonce": NONCE, "node_id": either(st.text()), "peers": either(st.lists(ANY, max_size=3))}),
)
UNKNOWN = st.fixed_dictionaries(
    {"type": st.text(max_size=20).map(lambda t: t + "?" if t in MESSAGE_TYPES else t) | ANY},
    optional={"id": REQUEST_ID, "nonce": NONCE},
)


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


OVERSIZED = st.builds(lambda n, b: b * n, st.integers(MAX_FRAME // 2, 2 * MAX_FRAME), st.binary(min_size=1, max_size=2))
FRAMES = st.one_of(
    st.binary(max_size=256) | OVERSIZED,  # random bytes, some over the frame limit (1009, reconnect)
    ANY.map(pack),  # random msgpack values
    SHAPED.map(pack),  # valid-shaped messages, fields of any type
    SHAPED.map(pack),
    SHAPED.map(pack),
    UNKNOWN.map(pack),  # unknown types
    st.text(max_size=120),  # text frames
)


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def fuzzed_node():
    """An open node with rate limits out of the way (the fuzzer sends far faster than any peer should)."""
    node = ThreadedNode(max_requests_per_s_per_peer=1e9, request_burst_per_peer=10**9)
    node.ws = open_connection(node)
    yield node
    node.ws.close()
    node.close()


class Barrier:
    nonces = itertools.count(10**15)


def sync(node: ThreadedNode) -> None:
    """Ping and read until our pong: every frame before it is checked. Reconnect if the node closed."""
    nonce = next(Barrier.nonces)
    try:
        node.ws.send(msgpack.packb({"type": "ping", "nonce": nonce}))
        deadline = time.monotonic() + WAIT_S
        while True:
            message = check_reply(node.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if isinstance(message, Pong) and message.nonce == nonce:
                return
    except ConnectionClosed as exc:
        close = exc.rcvd
        assert close is not None and close.code == 1009, f"node closed the connection with {close}"
        node.ws = open_connection(node)


@settings(
    max_examples=FUZZ_CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(frame=FRAMES)
def test_fuzzed_frames_never_break_the_node(fuzzed_node, frame):
    node = fuzzed_node
    try:
        node.ws.send(frame)
    except ConnectionClosed:
        pass  # closed by the previous frame's 1009; sync() reconnects
    sync(node)
    node.cases += 1
    if node.cases % CHECK_EVERY == 0:
        assert_still_serves(node)


def test_fuzzed_node_still_serves_and_leaked_nothing(fuzzed_node):
    """Runs after the fuzzing (file order): the node answers, nothing is stuck in flight."""
    assert fuzzed_node.cases >= FUZZ_CASES
    fuzzed_node.ws.close()
    assert_still_serves(fuzzed_node)
    wait_idle(fuzzed_node)
    fuzzed_node.ws = open_connection(fuzzed_node)


@pytest.fixture(scope="module")
def keyed_node():
    node = ThreadedNode(cluster_key=KEY, handshake_timeout_s=2.0)
    yield node
    node.close()


@settings(
    max_examples=HANDSHAKE_CASES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(first=FRAMES, second=FRAMES)
def test_fuzzed_handshake_against_a_keyed_node(keyed_node, first, second):
    """Two fuzzed frames as the first of a connection: the node closes with 4001/4003/1009 and serves no one."""
    node = keyed_node
    ws = dial(node.url)
    try:
        for frame in (first, second):
            ws.send(frame)
        deadline = time.monotonic() + WAIT_S
        while True:
            message = check_reply(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            assert isinstance(message, Hello | Error), message  # nothing else before authentication
    except ConnectionClosed as exc:
        close = exc.rcvd
        assert close is not None and close.code in (1009, 4001, 4002, 4003), close
    except TimeoutError:  # a hello with a good nonce waits for a proof that never came: the deadline closes it
        pytest.fail("the keyed node kept an unauthenticated connection open past the wait")
    finally:
        ws.close()
    assert node.engine.counters.requests_total == node.checks  # no fuzzed request got through
    node.cases += 1
    if node.cases % CHECK_EVERY == 0:
        assert_still_serves(node, KEY)


def test_keyed_node_still_serves_after_handshake_fuzzing(keyed_node):
    assert keyed_node.cases >= HANDSHAKE_CASES
    assert_still_serves(keyed_node, KEY)
    wait_idle(keyed_node)
    assert keyed_node.server.counters.auth_failures > 0
