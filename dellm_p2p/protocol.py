"""The dellm wire protocol, version 1: messages and their encoding.

This module is the whole specification; another implementation needs nothing
else. It does no I/O.

Transport
---------
One websocket connection per peer pair. Every message is one **binary** frame
holding one msgpack map (``str`` keys) with a ``type`` field naming the
message. Text frames are rejected. Frames above the receiver's size limit
(default 1 MiB, :data:`DEFAULT_MAX_FRAME_BYTES`) close the connection with
websocket close code 1009 ("message too big"). Many requests multiplex on one
connection: every request-scoped message carries the request ``id`` chosen by
the requester (1-64 characters, unique among its in-flight requests on that
connection).

Handshake
---------
The connecting side sends ``hello`` first; the accepting side answers with its
own ``hello``. Until then the accepting side answers any other message with an
``error`` of code ``handshake_required``. A ``protocol`` it does not speak gets
``unsupported_version`` and the connection is closed with code 4001; a hello
carrying the receiver's own node id gets ``duplicate_node_id`` and close code
4002 (two nodes share an id, e.g. a copied state directory).

Messages (fields; units in brackets)
------------------------------------
``hello``     protocol (int), node_id (str), name (str), model (str | nil, nil for
              a peer that serves no model), capacity (int, max concurrent
              requests), max_model_len (int | nil) [tokens], software (str),
              url (str | nil: the sender's own listening ``ws://`` URL, so
              the receiver can add it to its peer table; nil for clients).
``generate``  id, exactly one of messages (list of {role: system|user|assistant,
              content}) or prompt (str), params: max_tokens [tokens, 1..context]
              default 256, temperature (>= 0, 0 = greedy, <= 2) default 0,
              top_p (0 < p <= 1) default 1, n (1..16 choices) default 1, stop
              (list of up to 8 strings) default [], logprobs (bool) default false.
``token``     id, index (choice 0..n-1), text (str delta), tokens (int, tokens in
              this delta), logprobs (list of float, natural-log probability of
              each sampled token in this delta; nil unless requested).
``done``      id, finish_reasons (list of str per choice: stop | length |
              cancelled | error), usage {prompt_tokens, completion_tokens}
              [tokens], timings {queued_ms, first_token_ms, total_ms} [ms,
              measured on the serving node from receipt of ``generate``;
              queued_ms is the wait before the engine scheduled the request
              and, like first_token_ms, nil when unknown].
              ``done`` is the last message of a request.
``error``     id (str | nil when not tied to a request), code (see
              :class:`ErrorCode`), message (one human-readable line). An
              ``error`` with an ``id`` also ends that request.
``cancel``    id. The node aborts the request inside the engine and answers
              with ``done`` (finish reason ``cancelled``); a cancel for an
              unknown or finished id is ignored (it may cross a ``done``).
``ping``      nonce (int). Answered at once by ``pong`` with the same nonce.
``pong``      nonce (int).
``members``   nonce (int), reply (bool), entries (list of at most 4096 member
              entries: node_id, url, name, model, capacity, incarnation (int,
              the node's start time in ms since the epoch: a restart has a
              higher one), heartbeat (int, increased by the node every gossip
              round), state (alive | left), in_flight (int)). Membership
              gossip, push-pull: a ``members`` with reply=false is answered
              by the receiver's own ``members`` with reply=true and the same
              nonce. An entry replaces what the receiver knows only when its
              (incarnation, heartbeat) is higher. rewards (list of reward
              records, see ``rewards``) carries the sender's recent records:
              anti-entropy, so a record that push gossip missed still
              reaches every node.
``get_peers`` nonce (int). Answered by ``peers``.
``peers``     nonce, node_id, fitness (the node's own), peers (rows of the node's peer table: node_id,
              url, name, model, capacity, in_flight, rtt_ms [ms, EWMA of ping
              round trips], fitness (0..1), last_seen_s [s ago], state
              (alive | suspect | dead | left), source (how it was learned)).
``rewards``   records (list of at most 1024: id (unique, for deduplication),
              issuer (coordinator node id), node_id (the rewarded peer),
              reward (-1..1), chunk, ts [s since the epoch], hops). Fitness
              gossip, no reply: a node applies each record it has not seen
              (fitness <- 0.9 * fitness + 0.1 * (fitness + reward), clamped
              to [0, 1]) and forwards it with hops + 1 to a few peers while
              hops < 6.
``get_stats`` nonce (int). Answered by ``stats``.
``stats``     nonce (int), node_id, model, in_flight, capacity, requests_total,
              requests_failed, requests_cancelled, tokens_generated [tokens],
              bytes_sent, bytes_received [bytes of websocket payload, all
              connections of the node, both directions of dialing],
              engine_running (requests the engine is still computing),
              uptime_s [s].

Closing the connection aborts every request it carried.

Errors
------
Bad input never closes the connection except an oversized frame (1009) or a
failed handshake (4001): the node answers with ``error`` and keeps serving.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 1 << 20
MAX_CHOICES = 16
MAX_STOP_STRINGS = 8
CLOSE_UNSUPPORTED_VERSION = 4001
CLOSE_DUPLICATE_ID = 4002
MAX_MEMBER_ENTRIES = 4096
MAX_REWARD_RECORDS = 1024


class ErrorCode(StrEnum):
    """Stable error codes carried by ``error`` frames."""

    BAD_FRAME = "bad_frame"  # not a msgpack map, or a text frame
    UNKNOWN_TYPE = "unknown_type"  # ``type`` missing or not a known message
    INVALID_MESSAGE = "invalid_message"  # missing or wrongly typed fields
    INVALID_PARAMS = "invalid_params"  # sampling params out of range
    PROMPT_TOO_LONG = "prompt_too_long"  # prompt does not fit the context window
    HANDSHAKE_REQUIRED = "handshake_required"
    UNSUPPORTED_VERSION = "unsupported_version"
    DUPLICATE_ID = "duplicate_id"  # request id already in flight on this connection
    DUPLICATE_NODE_ID = "duplicate_node_id"  # a peer's hello carries our own node id
    OVERLOADED = "overloaded"  # node at capacity; try another peer
    NO_MODEL = "no_model"  # this node serves no model
    SHUTTING_DOWN = "shutting_down"
    TIMEOUT = "timeout"  # the node's per-request deadline passed
    ENGINE_ERROR = "engine_error"
    CONNECTION_LOST = "connection_lost"  # client side only: the peer went away


_STRICT = ConfigDict(extra="ignore", frozen=True)
RequestId = Annotated[str, Field(min_length=1, max_length=64)]


class _Message(BaseModel):
    model_config = _STRICT


class Hello(_Message):
    type: Literal["hello"] = "hello"
    protocol: int
    node_id: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(max_length=128)] = ""
    model: Annotated[str, Field(max_length=256)] | None = None
    capacity: Annotated[int, Field(ge=0)] = 0
    max_model_len: Annotated[int, Field(ge=1)] | None = None
    software: Annotated[str, Field(max_length=128)] = ""
    url: Annotated[str, Field(max_length=256)] | None = None


class ChatMessage(_Message):
    role: Literal["system", "user", "assistant"]
    content: str


class SamplingParams(_Message):
    """Sampling parameters of a ``generate`` request (see module docstring for ranges)."""

    max_tokens: Annotated[int, Field(ge=1)] = 256
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stop: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=MAX_STOP_STRINGS)] = []
    logprobs: bool = False


class Generate(_Message):
    type: Literal["generate"] = "generate"
    id: RequestId
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    prompt: str | None = None
    params: SamplingParams = SamplingParams()

    @model_validator(mode="after")
    def _one_input(self) -> Generate:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("exactly one of 'messages' or 'prompt' is required")
        return self


class Token(_Message):
    type: Literal["token"] = "token"
    id: RequestId
    index: Annotated[int, Field(ge=0)] = 0
    text: str
    tokens: Annotated[int, Field(ge=0)] = 0
    logprobs: list[float] | None = None


class Usage(_Message):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Timings(_Message):
    queued_ms: float | None = None
    first_token_ms: float | None = None
    total_ms: float = 0.0


class Done(_Message):
    type: Literal["done"] = "done"
    id: RequestId
    finish_reasons: list[str]
    usage: Usage = Usage()
    timings: Timings = Timings()


class Error(_Message):
    type: Literal["error"] = "error"
    id: str | None = None
    code: str
    message: str


class Cancel(_Message):
    type: Literal["cancel"] = "cancel"
    id: RequestId


class Ping(_Message):
    type: Literal["ping"] = "ping"
    nonce: int


class Pong(_Message):
    type: Literal["pong"] = "pong"
    nonce: int


class GetStats(_Message):
    type: Literal["get_stats"] = "get_stats"
    nonce: int = 0


class Stats(_Message):
    type: Literal["stats"] = "stats"
    nonce: int = 0
    node_id: str
    model: str | None = None
    in_flight: int = 0
    capacity: int = 0
    requests_total: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    tokens_generated: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    engine_running: int = 0
    uptime_s: float = 0.0


NodeId = Annotated[str, Field(min_length=1, max_length=128)]


class MemberEntry(_Message):
    """One node as gossiped in ``members`` frames (see module docstring)."""

    node_id: NodeId
    url: Annotated[str, Field(min_length=1, max_length=256)]
    name: Annotated[str, Field(max_length=128)] = ""
    model: Annotated[str, Field(max_length=256)] | None = None
    capacity: Annotated[int, Field(ge=0)] = 0
    incarnation: Annotated[int, Field(ge=0)] = 0
    heartbeat: Annotated[int, Field(ge=0)] = 0
    state: Literal["alive", "left"] = "alive"
    in_flight: Annotated[int, Field(ge=0)] = 0


class RewardRecord(_Message):
    """One fitness reward issued by a coordinator for one peer's answer to one chunk."""

    id: Annotated[str, Field(min_length=1, max_length=64)]
    issuer: NodeId
    node_id: NodeId
    reward: Annotated[float, Field(ge=-1.0, le=1.0)]
    chunk: Annotated[str, Field(max_length=64)] = ""
    ts: float = 0.0
    hops: Annotated[int, Field(ge=0, le=64)] = 0


class Members(_Message):
    type: Literal["members"] = "members"
    nonce: int = 0
    reply: bool = False
    entries: Annotated[list[MemberEntry], Field(max_length=MAX_MEMBER_ENTRIES)] = []
    rewards: Annotated[list[RewardRecord], Field(max_length=MAX_REWARD_RECORDS)] = []


class PeerRow(_Message):
    """One row of a node's peer table as reported by ``peers``."""

    node_id: str
    url: str
    name: str = ""
    model: str | None = None
    capacity: int = 0
    in_flight: int = 0
    rtt_ms: float | None = None
    fitness: float = 0.5
    last_seen_s: float = 0.0
    state: str = "alive"
    source: str = ""


class GetPeers(_Message):
    type: Literal["get_peers"] = "get_peers"
    nonce: int = 0


class Peers(_Message):
    type: Literal["peers"] = "peers"
    nonce: int = 0
    node_id: str
    fitness: float = 0.5
    peers: list[PeerRow] = []


class Rewards(_Message):
    type: Literal["rewards"] = "rewards"
    records: Annotated[list[RewardRecord], Field(max_length=MAX_REWARD_RECORDS)]


_TYPES = (Hello, Generate, Token, Done, Error, Cancel, Ping, Pong, GetStats, Stats, Members, GetPeers, Peers, Rewards)
Message = Annotated[
    Hello
    | Generate
    | Token
    | Done
    | Error
    | Cancel
    | Ping
    | Pong
    | GetStats
    | Stats
    | Members
    | GetPeers
    | Peers
    | Rewards,
    Field(discriminator="type"),
]
MESSAGE_TYPES = frozenset(m.model_fields["type"].default for m in _TYPES)
_adapter: TypeAdapter[Message] = TypeAdapter(Message)


class ProtocolError(ValueError):
    """A frame that cannot be turned into a message.

    Attributes:
        code: the :class:`ErrorCode` to report to the sender.
        request_id: the frame's ``id`` when one could be read, so the error
            can be tied to the request; otherwise ``None``.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def encode(message: _Message) -> bytes:
    """Encode a message as one msgpack map (the payload of one binary frame)."""
    return msgpack.packb(message.model_dump(mode="json", exclude_none=False), use_bin_type=True)


def decode(frame: bytes | str) -> Message:
    """Decode and validate one frame.

    Raises:
        ProtocolError: with code ``bad_frame`` (text frame, not msgpack, not a
            map), ``unknown_type``, ``invalid_params`` (a ``params`` field out
            of range) or ``invalid_message`` (any other field missing or of the
            wrong type).
    """
    if isinstance(frame, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "text frames are not part of the protocol; send binary msgpack")
    try:
        raw: Any = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"frame must be a msgpack map, got {type(raw).__name__}")
    request_id = raw.get("id") if isinstance(raw.get("id"), str) and 0 < len(raw["id"]) <= 64 else None
    kind = raw.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        shown = repr(kind)[:40]
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {shown}", request_id)
    try:
        return _adapter.validate_python(raw)
    except ValidationError as exc:
        raise _validation_error(exc, request_id) from None


def _validation_error(exc: ValidationError, request_id: str | None) -> ProtocolError:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(p) for p in first["loc"][1:]]  # drop the discriminator tag
    where = ".".join(loc) or "message"
    code = ErrorCode.INVALID_PARAMS if loc[:1] == ["params"] and len(loc) > 1 else ErrorCode.INVALID_MESSAGE
    return ProtocolError(code, f"{where}: {first['msg']}", request_id)
