"""Wire protocol: encode/decode round trips and the error code of every kind of bad frame."""

from __future__ import annotations

import math
import struct
from typing import Any

import msgpack
import pytest

from dellm_p2p.protocol import (
    MAX_CHOICES,
    MAX_STOP_STRINGS,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    AdapterPart,
    Auth,
    Cancel,
    ChatMessage,
    Done,
    Error,
    ErrorCode,
    Generate,
    GetAdapter,
    GetPeers,
    GetStats,
    Hello,
    MemberEntry,
    Members,
    PeerRow,
    Peers,
    Ping,
    Pong,
    ProtocolError,
    RewardRecord,
    Rewards,
    SamplingParams,
    Stats,
    Sync,
    Timings,
    Token,
    Usage,
    decode,
    encode,
    reward_signing_bytes,
)

PV = PROTOCOL_VERSION


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def gen(**fields: Any) -> dict[str, Any]:
    """A valid ``generate`` frame (as a dict) with ``fields`` merged in; a ``None`` value removes the key."""
    frame: dict[str, Any] = {"type": "generate", "id": "req-1", "prompt": "Hello"}
    frame.update(fields)
    return {k: v for k, v in frame.items() if v is not None}


def gen_params(**params: Any) -> dict[str, Any]:
    return gen(params=params)


def decode_error(frame: bytes | str) -> ProtocolError:
    """Decode a bad frame and check the error's message is one readable line."""
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    err = info.value
    message = str(err)
    assert message, "error message is empty"
    assert message == message.strip()
    assert "\n" not in message and "\r" not in message
    assert message.isprintable()
    assert len(message) <= 200
    assert isinstance(err.code, ErrorCode)
    return err


# --------------------------------------------------------------------------- round trips

KEY = bytes(range(32))  # any 32 bytes: the protocol layer does not check that ids derive from keys
SIG = bytes(range(64))

ROUND_TRIP = [
    pytest.param(
        Sync(
            nonce=4,
            reply=True,
            digest=[["nabc", 12, 0]],
            changes=[["s", "nabc", 12, "nxyz"], ["a", "n", 1, None, b"k" * 32, "x", None, 0, False, b"s" * 64]],
        ),
        id="sync",
    ),
    pytest.param(
        Hello(
            protocol=PROTOCOL_VERSION,
            node_id="n-1234",
            name="laptop",
            model="SmolLM2-135M-Instruct",
            capacity=16,
            max_model_len=2048,
            software="dellm-p2p/0.1.0",
        ),
        id="hello",
    ),
    pytest.param(Hello(protocol=PROTOCOL_VERSION, node_id="coordinator"), id="hello-no-model"),
    pytest.param(Hello(protocol=PROTOCOL_VERSION, node_id="n", public_key=KEY), id="hello-public-key"),
    pytest.param(
        Hello(protocol=PROTOCOL_VERSION, node_id="n", auth="hmac-sha256", auth_nonce="0f" * 32), id="hello-auth"
    ),
    pytest.param(Auth(proof="a1" * 32), id="auth"),
    pytest.param(
        Generate(
            id="req-1",
            messages=[
                ChatMessage(role="system", content="Be brief."),
                ChatMessage(role="user", content="What is 2+2?"),
                ChatMessage(role="assistant", content="4"),
                ChatMessage(role="user", content="And 3+3? ünïcødé ✓"),
            ],
            params=SamplingParams(
                max_tokens=64, temperature=0.7, top_p=0.9, n=3, stop=["\n\n", "User:"], logprobs=True
            ),
        ),
        id="generate-messages",
    ),
    pytest.param(Generate(id="req-2", prompt="Once upon a time"), id="generate-prompt"),
    pytest.param(Generate(id="r", prompt=""), id="generate-empty-prompt"),
    pytest.param(Token(id="req-1", index=2, text=" world", tokens=1), id="token"),
    pytest.param(
        Token(id="req-1", index=0, text=" hello world", tokens=2, logprobs=[-0.25, -1.5]), id="token-logprobs"
    ),
    pytest.param(
        Done(
            id="req-1",
            finish_reasons=["stop", "length", "cancelled"],
            usage=Usage(prompt_tokens=12, completion_tokens=34),
            timings=Timings(queued_ms=1.5, first_token_ms=20.25, total_ms=512.0),
        ),
        id="done",
    ),
    pytest.param(Done(id="req-1", finish_reasons=["error"]), id="done-unknown-timings"),
    pytest.param(Error(id="req-1", code=ErrorCode.OVERLOADED, message="node at capacity"), id="error"),
    pytest.param(Error(code=ErrorCode.BAD_FRAME, message="not msgpack"), id="error-no-id"),
    pytest.param(Cancel(id="req-1"), id="cancel"),
    pytest.param(Ping(nonce=42), id="ping"),
    pytest.param(Pong(nonce=42), id="pong"),
    pytest.param(GetStats(nonce=7), id="get_stats"),
    pytest.param(
        Stats(
            nonce=7,
            node_id="n-1234",
            model="SmolLM2-135M-Instruct",
            in_flight=2,
            capacity=16,
            requests_total=100,
            requests_failed=3,
            requests_cancelled=4,
            tokens_generated=12345,
            engine_running=1,
            uptime_s=3600.5,
        ),
        id="stats",
    ),
    pytest.param(
        Members(
            nonce=3,
            reply=True,
            entries=[
                MemberEntry(
                    node_id="n1",
                    url="ws://127.0.0.1:1",
                    public_key=KEY,
                    model="m",
                    capacity=4,
                    incarnation=9,
                    heartbeat=2,
                ),
                MemberEntry(node_id="n2", url="ws://127.0.0.1:2", public_key=KEY, state="left"),
                MemberEntry(node_id="c3", url=None, public_key=KEY),  # a coordinator-only member
            ],
            beats=[("n4", 9, 3, 1, False), ("n5", 1, 1, 0, True)],
            want=["n6"],
        ),
        id="members",
    ),
    pytest.param(GetPeers(nonce=4), id="get_peers"),
    pytest.param(
        Rewards(
            records=[
                RewardRecord(
                    id="r1",
                    issuer="c",
                    seq=(1 << 64) - 1,
                    node_id="n1",
                    reward=0.06,
                    chunk="c1",
                    ts=1.5,
                    hops=2,
                    signature=SIG,
                )
            ]
        ),
        id="rewards",
    ),
    pytest.param(
        Peers(
            nonce=4, node_id="n0", peers=[PeerRow(node_id="n1", url="ws://127.0.0.1:1", rtt_ms=0.4, state="suspect")]
        ),
        id="peers",
    ),
    pytest.param(GetAdapter(nonce=5, adapter_id="lora-0123456789ab", offset=524288), id="get_adapter"),
    pytest.param(
        AdapterPart(
            nonce=5, adapter_id="lora-0123456789ab", manifest=b"{}", signature=SIG, total=3, data=b"\x00\x01\xff"
        ),
        id="adapter_part",
    ),
]


@pytest.mark.parametrize("message", ROUND_TRIP)
def test_round_trip(message):
    frame = encode(message)
    assert isinstance(frame, bytes)
    decoded = decode(frame)
    assert type(decoded) is type(message)
    assert decoded == message


def test_round_trip_covers_every_message_type():
    covered = {p.values[0].type for p in ROUND_TRIP}
    assert covered == MESSAGE_TYPES


def test_encode_is_a_plain_msgpack_map_with_nil_for_unset_optionals():
    raw = msgpack.unpackb(encode(Token(id="r", text="x")), raw=False)
    assert raw == {"type": "token", "id": "r", "index": 0, "text": "x", "tokens": 0, "logprobs": None}


def test_protocol_error_becomes_a_valid_error_message():
    err = decode_error(pack(gen_params(n=0)))
    reply = Error(id=err.request_id, code=err.code, message=str(err))
    assert decode(encode(reply)) == Error(id="req-1", code="invalid_params", message=str(err))


# --------------------------------------------------------------------------- defaults and forward compatibility


def test_generate_defaults():
    msg = decode(pack({"type": "generate", "id": "r", "prompt": "hi"}))
    assert isinstance(msg, Generate)
    assert msg.messages is None
    assert msg.params.max_tokens == 256
    assert msg.params.temperature == 0.0
    assert msg.params.top_p == 1.0
    assert msg.params.n == 1
    assert msg.params.stop == []
    assert msg.params.logprobs is False
    # A partial params map keeps the defaults of the fields it leaves out.
    partial = decode(pack(gen_params(temperature=0.5)))
    assert partial.params.temperature == 0.5
    assert partial.params.max_tokens == 256
    assert partial.params.n == 1


def test_other_defaults():
    token = decode(pack({"type": "token", "id": "r", "text": "x"}))
    assert (token.index, token.tokens, token.logprobs) == (0, 0, None)
    done = decode(pack({"type": "done", "id": "r", "finish_reasons": ["stop"]}))
    assert done.usage == Usage(prompt_tokens=0, completion_tokens=0)
    assert done.timings == Timings(queued_ms=None, first_token_ms=None, total_ms=0.0)
    hello = decode(pack({"type": "hello", "protocol": PV, "node_id": "n"}))
    assert (hello.model, hello.capacity, hello.max_model_len) == (None, 0, None)
    error = decode(pack({"type": "error", "code": "timeout", "message": "late"}))
    assert error.id is None


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            gen(priority=5, trace={"span": "abc"}, params={"max_tokens": 3, "seed": 42, "min_p": 0.1}),
            id="generate-top-level-and-params",
        ),
        pytest.param(
            gen(prompt=None, messages=[{"role": "user", "content": "hi", "name": "bob"}]), id="generate-chat-message"
        ),
        pytest.param(
            {"type": "hello", "protocol": PV, "node_id": "n", "features": ["embeddings"], "region": "eu"}, id="hello"
        ),
        pytest.param({"type": "ping", "nonce": 1, "sent_at": 1.5}, id="ping"),
        pytest.param(
            {"type": "done", "id": "r", "finish_reasons": ["stop"], "usage": {"cached_tokens": 3}}, id="done-usage"
        ),
    ],
)
def test_unknown_fields_are_ignored(frame):
    msg = decode(pack(frame))
    assert msg.type == frame["type"]
    # Ignored, not kept: re-encoding yields only the known fields.
    raw = msgpack.unpackb(encode(msg), raw=False)
    assert set(raw) == set(type(msg).model_fields)
    assert decode(encode(msg)) == msg


def test_extra_fields_do_not_change_known_values():
    msg = decode(pack(gen(params={"max_tokens": 3, "seed": 42})))
    assert msg.params.max_tokens == 3
    assert not hasattr(msg.params, "seed")


# --------------------------------------------------------------------------- bad frames


@pytest.mark.parametrize("frame", ["", "hello", '{"type": "ping", "nonce": 1}'], ids=["empty", "word", "json"])
def test_text_frame_is_bad_frame(frame):
    err = decode_error(frame)
    assert err.code is ErrorCode.BAD_FRAME
    assert err.request_id is None


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never-used-byte"),
        pytest.param(pack({"type": "ping", "nonce": 1})[:-1], id="truncated-map"),
        pytest.param(pack(gen())[:10], id="truncated-generate"),
        pytest.param(b"\x01\x02", id="trailing-data"),
        pytest.param(b"\x81\x92\x01\x02\x01", id="unhashable-map-key"),
        pytest.param(b'{"type": "ping"}', id="json-bytes"),
    ],
)
def test_non_msgpack_bytes_are_bad_frame(frame):
    err = decode_error(frame)
    assert err.code is ErrorCode.BAD_FRAME
    assert err.request_id is None


@pytest.mark.parametrize(
    "obj",
    [[1, 2, 3], [{"type": "ping", "nonce": 1}], 5, -1, 1.5, "ping", b"\x00", None, True],
    ids=["list", "list-of-map", "int", "neg-int", "float", "str", "bin", "nil", "bool"],
)
def test_msgpack_non_map_is_bad_frame(obj):
    err = decode_error(pack(obj))
    assert err.code is ErrorCode.BAD_FRAME
    assert err.request_id is None


@pytest.mark.parametrize(
    ("frame", "request_id"),
    [
        pytest.param({"type": "bogus", "id": "req-9"}, "req-9", id="unknown-with-id"),
        pytest.param({"type": "bogus"}, None, id="unknown-without-id"),
        pytest.param({"type": "GENERATE", "id": "req-9", "prompt": "x"}, "req-9", id="wrong-case"),
        pytest.param({"type": "", "id": "req-9"}, "req-9", id="empty-type"),
        pytest.param({"id": "req-9", "prompt": "x"}, "req-9", id="missing-with-id"),
        pytest.param({"nonce": 1}, None, id="missing-without-id"),
        pytest.param({}, None, id="empty-map"),
        pytest.param({"type": None, "id": "req-9"}, "req-9", id="nil-type"),
        pytest.param({"type": 3, "id": "req-9"}, "req-9", id="int-type"),
        pytest.param({"type": ["generate"], "id": "req-9"}, "req-9", id="list-type"),
        pytest.param({"type": {"name": "ping"}}, None, id="map-type"),
        pytest.param({"type": "bogus", "id": 7}, None, id="int-id-not-extracted"),
        pytest.param({"type": "bogus", "id": ""}, None, id="empty-id-not-extracted"),
        pytest.param({"type": "bogus", "id": "x" * 65}, None, id="long-id-not-extracted"),
        pytest.param({"type": "bogus", "id": "x" * 64}, "x" * 64, id="max-length-id-extracted"),
    ],
)
def test_unknown_or_missing_type(frame, request_id):
    err = decode_error(pack(frame))
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert err.request_id == request_id


@pytest.mark.parametrize(
    ("frame", "request_id"),
    [
        # generate
        pytest.param(gen(id=None), None, id="generate-missing-id"),
        pytest.param(gen(id=123), None, id="generate-int-id"),
        pytest.param(gen(id=""), None, id="generate-empty-id"),
        pytest.param(gen(id="x" * 65), None, id="generate-id-too-long"),
        pytest.param(gen(prompt=None, messages="hello"), "req-1", id="messages-string"),
        pytest.param(gen(prompt=None, messages=[]), "req-1", id="messages-empty"),
        pytest.param(gen(prompt=None, messages=["hello"]), "req-1", id="messages-item-string"),
        pytest.param(gen(prompt=None, messages=[{"role": "robot", "content": "beep"}]), "req-1", id="role-robot"),
        pytest.param(gen(prompt=None, messages=[{"role": "user"}]), "req-1", id="message-missing-content"),
        pytest.param(gen(prompt=None, messages=[{"content": "hi"}]), "req-1", id="message-missing-role"),
        pytest.param(gen(prompt=None, messages=[{"role": "user", "content": 5}]), "req-1", id="content-int"),
        pytest.param(gen(prompt=42), "req-1", id="prompt-int"),
        pytest.param(gen(prompt=["a", "b"]), "req-1", id="prompt-list"),
        pytest.param(gen(params="greedy"), "req-1", id="params-string"),
        pytest.param(gen(params=[1, 2]), "req-1", id="params-list"),
        pytest.param(gen(messages=[{"role": "user", "content": "hi"}]), "req-1", id="both-messages-and-prompt"),
        pytest.param(gen(prompt=None), "req-1", id="neither-messages-nor-prompt"),
        # other messages
        pytest.param({"type": "hello", "node_id": "n"}, None, id="hello-missing-protocol"),
        pytest.param({"type": "hello", "protocol": PV}, None, id="hello-missing-node_id"),
        pytest.param({"type": "hello", "protocol": "one", "node_id": "n"}, None, id="hello-protocol-string"),
        pytest.param({"type": "hello", "protocol": PV, "node_id": "n", "capacity": -1}, None, id="hello-neg-capacity"),
        pytest.param({"type": "token", "id": "req-1"}, "req-1", id="token-missing-text"),
        pytest.param({"type": "token", "id": "req-1", "text": "x", "index": -1}, "req-1", id="token-neg-index"),
        pytest.param({"type": "token", "id": "req-1", "text": "x", "logprobs": "high"}, "req-1", id="token-logprobs"),
        pytest.param({"type": "done", "id": "req-1"}, "req-1", id="done-missing-finish_reasons"),
        pytest.param({"type": "done", "id": "req-1", "finish_reasons": "stop"}, "req-1", id="done-reasons-str"),
        pytest.param({"type": "error", "id": "req-1", "message": "x"}, "req-1", id="error-missing-code"),
        pytest.param({"type": "cancel"}, None, id="cancel-missing-id"),
        pytest.param({"type": "cancel", "id": 1}, None, id="cancel-int-id"),
        pytest.param({"type": "ping"}, None, id="ping-missing-nonce"),
        pytest.param({"type": "ping", "nonce": "abc"}, None, id="ping-nonce-string"),
        pytest.param({"type": "pong", "nonce": 1.5}, None, id="pong-nonce-fraction"),
        pytest.param({"type": "stats", "nonce": 1}, None, id="stats-missing-node_id"),
        pytest.param({"type": "auth"}, None, id="auth-missing-proof"),
        pytest.param({"type": "auth", "proof": "AB" * 32}, None, id="auth-proof-uppercase"),
        pytest.param({"type": "auth", "proof": "ab" * 31}, None, id="auth-proof-short"),
        pytest.param({"type": "auth", "proof": b"\x00" * 32}, None, id="auth-proof-bytes"),
        pytest.param({"type": "hello", "protocol": PV, "node_id": "n", "auth_nonce": "xyz"}, None, id="hello-nonce"),
        pytest.param(
            {"type": "hello", "protocol": PV, "node_id": "n", "public_key": b"k" * 31}, None, id="hello-key-31"
        ),
        pytest.param(
            {"type": "hello", "protocol": PV, "node_id": "n", "public_key": "k" * 32}, None, id="hello-key-str"
        ),
        pytest.param(
            {"type": "members", "entries": [{"node_id": "n", "url": "ws://h:1"}]}, None, id="member-without-key"
        ),
        pytest.param({"type": "members", "beats": [["n", 1, 2, 0]]}, None, id="beat-short"),
        pytest.param({"type": "members", "beats": [["n", -1, 2, 0, False]]}, None, id="beat-neg-incarnation"),
        pytest.param({"type": "members", "beats": [[7, 1, 2, 0, False]]}, None, id="beat-int-id"),
        pytest.param({"type": "members", "want": [""]}, None, id="want-empty-id"),
        pytest.param(
            {"type": "rewards", "records": [{"id": "r", "issuer": "c", "node_id": "n", "reward": 0, "seq": -1}]},
            None,
            id="reward-negative-seq",
        ),
        pytest.param(
            {
                "type": "rewards",
                "records": [{"id": "r", "issuer": "c", "node_id": "n", "reward": 0, "signature": b"s" * 65}],
            },
            None,
            id="reward-signature-65",
        ),
    ],
)
def test_invalid_message(frame, request_id):
    err = decode_error(pack(frame))
    assert err.code is ErrorCode.INVALID_MESSAGE
    assert err.request_id == request_id


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"max_tokens": 0}, "max_tokens", id="max_tokens-0"),
        pytest.param({"max_tokens": -5}, "max_tokens", id="max_tokens-neg"),
        pytest.param({"temperature": -0.1}, "temperature", id="temperature-neg"),
        pytest.param({"temperature": 2.5}, "temperature", id="temperature-2.5"),
        pytest.param({"temperature": math.inf}, "temperature", id="temperature-inf"),
        pytest.param({"temperature": math.nan}, "temperature", id="temperature-nan"),
        pytest.param({"top_p": 0}, "top_p", id="top_p-0"),
        pytest.param({"top_p": -0.5}, "top_p", id="top_p-neg"),
        pytest.param({"top_p": 1.01}, "top_p", id="top_p-above-1"),
        pytest.param({"n": 0}, "n", id="n-0"),
        pytest.param({"n": MAX_CHOICES + 1}, "n", id="n-17"),
        pytest.param({"stop": [f"s{i}" for i in range(MAX_STOP_STRINGS + 1)]}, "stop", id="stop-9-strings"),
        pytest.param({"stop": [""]}, "stop", id="stop-empty-string"),
        pytest.param({"stop": ["x" * 257]}, "stop", id="stop-string-too-long"),
        pytest.param({"max_tokens": 16, "n": 0}, "n", id="one-bad-among-good"),
    ],
)
def test_invalid_params(params, field):
    err = decode_error(pack(gen_params(**params)))
    assert err.code is ErrorCode.INVALID_PARAMS
    assert err.request_id == "req-1"
    assert str(err).startswith(f"params.{field}")


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 1},
        {"temperature": 0.0},
        {"temperature": 2.0},
        {"top_p": 1.0},
        {"top_p": 1e-6},
        {"n": 1},
        {"n": MAX_CHOICES},
        {"stop": ["s"] * MAX_STOP_STRINGS},
        {"stop": []},
    ],
    ids=lambda p: "-".join(f"{k}={v if not isinstance(v, list) else len(v)}" for k, v in p.items()),
)
def test_params_at_the_limits_are_accepted(params):
    msg = decode(pack(gen_params(**params)))
    for key, value in params.items():
        assert getattr(msg.params, key) == value


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "bogus", "id": "abc"}, ErrorCode.UNKNOWN_TYPE),
        ({"id": "abc"}, ErrorCode.UNKNOWN_TYPE),
        (gen(id="abc", prompt=None, messages=[{"role": "robot", "content": "x"}]), ErrorCode.INVALID_MESSAGE),
        (gen(id="abc", params={"n": 17}), ErrorCode.INVALID_PARAMS),
        ({"type": "token", "id": "abc"}, ErrorCode.INVALID_MESSAGE),
        (gen(id="abc", prompt=None), ErrorCode.INVALID_MESSAGE),
    ],
    ids=["unknown-type", "missing-type", "invalid-message", "invalid-params", "token", "model-validator"],
)
def test_request_id_is_carried_on_errors(frame, code):
    err = decode_error(pack(frame))
    assert err.code is code
    assert err.request_id == "abc"


def test_error_codes_are_stable_strings():
    assert ErrorCode.BAD_FRAME == "bad_frame"
    assert ErrorCode.UNKNOWN_TYPE == "unknown_type"
    assert ErrorCode.INVALID_MESSAGE == "invalid_message"
    assert ErrorCode.INVALID_PARAMS == "invalid_params"
    assert msgpack.unpackb(pack(ErrorCode.INVALID_PARAMS), raw=False) == "invalid_params"


def test_binary_fields_are_msgpack_bin_on_the_wire_and_hex_in_json():
    record = RewardRecord(id="r", issuer="c", node_id="n", reward=0.05, signature=SIG)
    raw = msgpack.unpackb(encode(Rewards(records=[record])), raw=False)
    assert raw["records"][0]["signature"] == SIG and isinstance(raw["records"][0]["signature"], bytes)
    assert record.model_dump(mode="json")["signature"] == SIG.hex()
    hello = Hello(protocol=PROTOCOL_VERSION, node_id="n", public_key=KEY)
    assert msgpack.unpackb(encode(hello), raw=False)["public_key"] == KEY


def test_reward_signing_bytes_cover_every_field_but_hops_and_signature():
    base = RewardRecord(id="r1", issuer="c", seq=7, node_id="n", reward=0.05, chunk="c1", ts=1.5)
    signed = reward_signing_bytes(base)
    assert signed == (
        b"dellm-reward/1\n" + b"\x00\x02r1" + b"\x00\x01c" + (7).to_bytes(8, "big") + b"\x00\x01n"
        + struct.pack(">d", 0.05) + b"\x00\x02c1" + struct.pack(">d", 1.5)
    )  # fmt: skip
    assert reward_signing_bytes(base.model_copy(update={"hops": 5, "signature": SIG})) == signed
    for field, value in [("id", "r2"), ("issuer", "d"), ("seq", 8), ("node_id", "m"), ("reward", 0.06),
                         ("chunk", "c2"), ("ts", 1.6)]:  # fmt: skip
        assert reward_signing_bytes(base.model_copy(update={field: value})) != signed, field
