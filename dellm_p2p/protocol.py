"""The dellm wire protocol, version 3: messages and their encoding.

This module is the whole specification; another implementation needs nothing
else. It does no I/O.

Transport
---------
One websocket connection per peer pair. Every message is one **binary** frame
holding one msgpack map (``str`` keys) with a ``type`` field naming the
message; fields marked *bin* (public keys, signatures) are msgpack bin, never
str. Text frames are rejected. Frames above the receiver's size limit
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
4002 (two nodes share an id, e.g. a copied state directory). The accepting side
closes a connection that has not completed the handshake within its deadline
(default 10 s) with code 4004.

Cluster key (optional). Nodes of one cluster may share a secret key K (at
least 16 random bytes). A side that has K sets ``auth = "hmac-sha256"`` and a
fresh ``auth_nonce`` (32 random bytes as 64 lowercase hex digits) in its
``hello``; a side without a key leaves both nil. Both sides must agree: a keyed
node refuses a keyless peer and a keyless node refuses a keyed one. With a key
the handshake has four messages::

    connecting side (C)                         accepting side (S)
    hello {auth, auth_nonce: Nc, node_id: C} ->
                                             <- hello {auth, auth_nonce: Ns, node_id: S}
    auth {proof: MAC("client")}             ->  S checks the proof
                                             <- auth {proof: MAC("server")}; C checks it

    MAC(role) = HMAC-SHA256(K, "dellm-p2p/1 cluster-auth" || 0x00 || role
                || 0x00 || Nc || Ns || u16be(len C) || C || u16be(len S) || S)

as lowercase hex (64 digits); nonces enter as their 32 raw bytes, node ids as
UTF-8, role is the ASCII word ``client`` or ``server``. Proofs are compared in
constant time. The handshake is complete for S when C's proof checks, and for
C when S's proof checks; before that a keyed accepting side takes no other
message: any other frame, an undecodable one included, a wrong proof, a
missing key or an unexpected one get an ``error`` of code
``authentication_failed`` (a one-line reason that never contains the key or
a proof) and close code 4003. A connecting side that finds the other side
without the key, or its proof wrong, closes with 4003 itself.

Messages (fields; units in brackets)
------------------------------------
``hello``     protocol (int), node_id (str), name (str), model (str | nil, nil for
              a peer that serves no model), capacity (int, max concurrent
              requests), max_model_len (int | nil) [tokens], software (str),
              url (str | nil: the sender's own listening ``ws://`` URL, so
              the receiver can add it to its peer table; nil for clients),
              auth ("hmac-sha256" | nil: the sender has a cluster key),
              auth_nonce (str | nil: 64 lowercase hex digits, set with auth),
              public_key (bin, 32 bytes | nil: the sender's raw Ed25519
              public key, see Identity; nil for plain clients).
``auth``      proof (str, 64 lowercase hex digits: the cluster-key proof of the
              handshake; see Handshake). Sent once in each direction.
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
              entries: node_id, url (str | nil: nil for a coordinator-only
              member that serves nothing and accepts no connections; such a
              member is never contacted nor routed to), public_key (bin, 32
              bytes, see Identity), name, model, capacity, incarnation (int,
              the node's start time in ms since the epoch: a restart has a
              higher one), heartbeat (int, increased by the node every gossip
              round), state (alive | left), in_flight (int)). An entry whose
              node_id is not derived from its public_key is dropped (the rest
              of the frame is used). beats (list of at most 4096 arrays
              [node_id, incarnation, heartbeat, in_flight, left (bool)]):
              the liveness part of an entry, for members the receiver
              already knows in full; a beat for a member the receiver does
              not know (or with a higher incarnation than it knows) is not
              applied but asked for: want (list of at most 4096 node ids)
              names members whose full entries the sender needs; the
              receiver of a want puts those entries in its next ``members``
              to the sender (the reply, or a follow-up push). Typically a
              node sends its own entry in full and everyone else as beats,
              so a frame costs about 33 bytes per member instead of ~180.
              Membership gossip, push-pull: a ``members`` with reply=false
              is answered by the receiver's own ``members`` with reply=true
              and the same nonce; the reply's beats may leave out members
              the push already had at the same or a newer version. An
              entry or beat replaces what the receiver knows only when its
              (incarnation, heartbeat) is higher. rewards (list of reward
              records, see ``rewards``) carries the sender's recent records:
              anti-entropy, so a record that push gossip missed still
              reaches every node.
``sync``      nonce (int), reply (bool), digest (list of at most 8192 arrays
              [node_id, incarnation, state rank: 0 alive, 1 suspect, 2 dead,
              3 left]: the sender's view, itself included), changes (list
              of at most 8192 SWIM changes, see ``swim`` below: the entries
              and claims the receiver's digest lacks). SWIM push-pull
              (membership version 3): a ``sync`` with reply=false is answered
              by a ``sync`` with reply=true and the same nonce carrying the
              replier's digest and the changes newer than the push's digest;
              the initiator then pushes the changes the reply's digest lacks
              (a third frame, answered by an empty reply). A dead state from
              a ``sync`` counts as a suspicion only. buckets (optional: 64
              binaries of 8 bytes, the sender's view summarised per bucket of
              node ids, see ``Swim.bucket_hashes``): a push with buckets and
              no digest is answered with the replier's buckets and its digest
              rows for the buckets that differ only; the initiator then pushes
              its rows for those buckets, its buckets and the changes the
              reply lacks, and the reply carries the changes the initiator
              lacks in those buckets. Same views: one exchange of 1 KiB
              whatever N. A replier that ignores buckets answers an empty
              push with nothing, and the initiator falls back to digests.
              The opening frame (buckets or a digest, not both) and its
              reply also carry the sender's reward records of the last
              10 s as ``["r", record]`` changes (at most 64, newest):
              anti-entropy for records a node missed or joined after.
``get_peers`` nonce (int). Answered by ``peers``.
``peers``     nonce, node_id, fitness (the node's own), agreed and rewards (optional, the evidence
              under its own fitness, see below), peers (rows of the node's peer table: node_id,
              url (nil for a coordinator-only member), name, model, capacity, in_flight, rtt_ms [ms, EWMA of ping
              round trips], fitness (0..1), last_seen_s [s ago], state
              (alive | suspect | dead | left), source (how it was learned),
              rewards and agreed (optional, default 0: how many reward records
              the fitness rests on and how many were for agreeing; a joining
              coordinator copies them with the fitness, so its routing does
              not explore proven peers as newcomers)), models (optional, at
              most 256 rows of model (str), kind (str), agreed, rewards: the
              agreement counts per (model, chunk kind) that reward records
              with model and kind add up to; a joining coordinator copies
              them too).
``get_adapter`` nonce, adapter_id (``lora-`` and 12 hex digits), offset [bytes]. Answered
              by ``adapter_part``: nonce, adapter_id, error (str | nil: why there is
              none, e.g. unknown adapter), manifest (bin, at offset 0 only: the
              adapter's signed manifest, canonical JSON: format, id, base_model,
              base_hash, sha256 and bytes of the bundle, trainer node id and its
              public key as hex), signature (bin, at offset 0 only: the trainer's
              Ed25519 signature over "dellm-adapter/1" 0x0a || manifest), offset,
              total [bytes of the bundle], data (bin, at most 512 KiB of the
              bundle from offset: an uncompressed tar of the adapter's files).
              A peer that does not know these types answers ``unknown_type``.
              See :mod:`dellm_p2p.learn.share` for the receiver's checks.
``rewards``   records (list of at most 1024: id (unique, for deduplication),
              issuer (coordinator node id), seq (int, 0..2^64-1: the
              issuer's sequence number, strictly increasing per issuer;
              microseconds since the epoch), node_id (the rewarded peer),
              reward (-1..1), chunk, ts [s since the epoch], hops,
              model (str | nil, at most 128 characters: the model the peer
              answered with, as it announces it), kind (str | nil, at most
              16: the chunk's operation, e.g. LOOKUP or MATH; model and
              kind feed the per-(model, kind) agreement counts, see
              dellm_p2p.membership.fitness), signature (bin, 64 bytes: the
              issuer's Ed25519 signature, see Identity)). Fitness gossip, no reply: a node applies each
              record it has not seen (fitness <- 0.9 * fitness + 0.1 *
              (fitness + reward), clamped to [0, 1]) and forwards it with
              hops + 1 to a few peers while hops < 16, if it passes these
              checks, in this order; otherwise it drops the record, never
              forwards it, and counts it in ``stats``: ts within the
              receiver's freshness window of its own clock (default
              +-120 s; else *stale*); the issuer is a member the receiver
              knows with a public key (any state: alive, suspect, dead or
              left until forgotten; else *non_member*); the signature checks
              with that key (else *signature*); (issuer, seq) was not
              accepted before (else *replay*; receivers remember the seqs
              of the freshness window, at most 4096 per issuer, and
              everything below the oldest one they forgot). A record whose
              id was already applied is a gossip duplicate: dropped, not a
              rejection. The same checks apply to records carried by
              ``members``.
``get_stats`` nonce (int). Answered by ``stats``.
``stats``     nonce (int), node_id, model, in_flight, capacity, requests_total,
              requests_failed, requests_cancelled, tokens_generated [tokens],
              bytes_sent, bytes_received [bytes of websocket payload, all
              connections of the node, both directions of dialing],
              engine_running (requests the engine is still computing),
              uptime_s [s], rewards_applied, rewards_duplicate,
              rewards_rejected_signature, rewards_rejected_replay,
              rewards_rejected_stale, rewards_rejected_non_member (reward
              records since start, see ``rewards``), rewards_duplicate_max
              (the most copies of one applied record received after the
              first), identity_rejected (hellos and member entries whose node
              id does not derive from their public key), member_forged,
              member_stale, member_replayed (signed member entries dropped:
              bad signature or another key, an older incarnation than known,
              an alive entry at the incarnation its member left at or below a
              forgotten member's last one), member_refuted (suspicions of this
              node it refuted), swim_probes, swim_probes_failed,
              swim_awareness (Lifeguard's local health score, 0 = healthy),
              swim_bad_datagrams (undecodable or unauthenticated).

SWIM datagrams (UDP)
--------------------
Membership version 3 probes over UDP on the port of the node's ``ws://``
URL (same host, same number): no connection per probe, so probing every
member round-robin costs one datagram each way. Each datagram is one msgpack
map, prefixed with the first 16 bytes of HMAC-SHA256(K, "dellm-swim/1" ||
0x00 || payload) when the cluster has a key K (others are dropped). Maps:
``{"t": "ping", "seq", "from", "to"}`` (answered by ``ack`` to the sender's
address), ``{"t": "ack", "seq", "from", "load"}`` (load: requests in
flight), ``{"t": "ping_req", "seq", "from", "target", "url"}`` (probe
``target`` at ``url`` for the sender: ``ack`` with the sender's seq if it
answers, else ``nack``), ``{"t": "nack", "seq", "from"}``, ``{"t":
"gossip", "from"}``; each may carry ``c``, a list of changes:
``["a", node_id, incarnation, url, public_key (bin), name, model, capacity,
left, signature (bin)]`` (a member's own entry, signed by it over
"dellm-member/1" 0x0a then node_id, url, public_key (raw), name, model as
u16be-length-prefixed UTF-8 (nil as the single byte 0xff), then u64be
capacity, u64be incarnation, one byte left), ``["s", node_id, incarnation,
claimant]`` (suspect), ``["d", node_id, incarnation, claimant]`` (dead),
``["r", reward record map]``. See :mod:`dellm_p2p.membership.swim`.

Identity
--------
Every node has an Ed25519 key pair. Its node id is ``"n"`` followed by the
lowercase base32 (RFC 4648, no padding) of the first 10 bytes of
SHA-256(public key): 17 characters. A ``hello`` with a public key whose node
id does not derive from it is refused with ``identity_mismatch`` and close
code 4005; a connecting side that gets such a ``hello`` closes the
connection. A reward record's signature covers this byte string (all fields
but hops and signature; u16be/u64be/f64be are big-endian unsigned 16- and
64-bit integers and IEEE 754 doubles; strings are UTF-8 prefixed with their
length in bytes as u16be)::

    "dellm-reward/1" || 0x0a || u16be-str(id) || u16be-str(issuer) || u64be(seq)
    || u16be-str(node_id) || f64be(reward) || u16be-str(chunk) || f64be(ts)

Closing the connection aborts every request it carried.

Errors
------
Bad input never closes the connection except an oversized frame (1009) or a
failed handshake (4001-4005): the node answers with ``error`` and keeps serving.

Limits
------
A node bounds what one peer connection may cost it, each configurable:
frame size (1009, above), requests in flight on the connection
(``too_many_in_flight``; default: the node's capacity, whose own limit
answers ``overloaded``), messages per second on the connection (a token
bucket, default 500 per s with bursts of 1000; every message but ``cancel``
counts; over it → ``rate_limited``, the message is dropped) and the prompt
length of a ``generate`` (characters of ``prompt``, or of all message
contents together; default 100,000; over it → ``prompt_too_long``). Such
errors carry the request ``id`` when the message had one and never close the
connection.

Close codes
-----------
1009 frame too big; 4001 unsupported protocol version; 4002 duplicate node id;
4003 authentication failed (cluster key missing, unexpected or wrong, or a
message other than the handshake before it completed); 4004 handshake not
completed within the accepting side's deadline; 4005 the hello's node id does
not derive from its public key.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgpack
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    TypeAdapter,
    ValidationError,
    model_validator,
)

# 2: hello carries the node's Ed25519 public key and member entries require it;
# reward records are signed and sequenced (version 1 peers cannot verify them).
# 3: SWIM membership (issue 14): signed member entries, ``sync`` push-pull over
# the websocket, probes and piggybacked changes as ``swim`` datagrams.
PROTOCOL_VERSION = 3
DEFAULT_MAX_FRAME_BYTES = 1 << 20
MAX_CHOICES = 16
MAX_STOP_STRINGS = 8
CLOSE_UNSUPPORTED_VERSION = 4001
CLOSE_DUPLICATE_ID = 4002
CLOSE_AUTH_FAILED = 4003
CLOSE_HANDSHAKE_TIMEOUT = 4004
CLOSE_IDENTITY_MISMATCH = 4005
PUBLIC_KEY_BYTES = 32  # raw Ed25519 public key
SIGNATURE_BYTES = 64  # Ed25519 signature
REWARD_SIGNING_CONTEXT = b"dellm-reward/1\n"
AUTH_SCHEME = "hmac-sha256"
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
    AUTHENTICATION_FAILED = "authentication_failed"  # cluster key missing, unexpected or wrong (close 4003)
    RATE_LIMITED = "rate_limited"  # too many messages per second on this connection
    TOO_MANY_IN_FLIGHT = "too_many_in_flight"  # this connection has its maximum of requests in flight
    IDENTITY_MISMATCH = "identity_mismatch"  # hello's node id is not derived from its public key (close 4005)


_STRICT = ConfigDict(extra="ignore", frozen=True)
RequestId = Annotated[str, Field(min_length=1, max_length=64)]
Hex256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # 32 bytes as lowercase hex


def _hex_in_json(value: bytes, info: SerializationInfo) -> bytes | str:
    """Binary fields stay bytes (msgpack bin) on the wire; JSON output (the CLI) shows them as hex."""
    return value.hex() if info.mode == "json" else value


# msgpack bin only (a str is not silently turned into bytes).
PublicKey = Annotated[
    bytes, Field(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES, strict=True), PlainSerializer(_hex_in_json)
]
Signature = Annotated[bytes, Field(max_length=SIGNATURE_BYTES, strict=True), PlainSerializer(_hex_in_json)]


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
    auth: Annotated[str, Field(max_length=32)] | None = None
    auth_nonce: Hex256 | None = None
    public_key: PublicKey | None = None


class Auth(_Message):
    type: Literal["auth"] = "auth"
    proof: Hex256


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
    rewards_applied: int = 0
    rewards_duplicate: int = 0
    rewards_rejected_signature: int = 0
    rewards_rejected_replay: int = 0
    rewards_rejected_stale: int = 0
    rewards_rejected_non_member: int = 0
    rewards_duplicate_max: int = 0
    identity_rejected: int = 0
    member_forged: int = 0
    member_stale: int = 0
    member_replayed: int = 0
    member_refuted: int = 0
    swim_probes: int = 0
    swim_probes_failed: int = 0
    swim_awareness: int = 0
    swim_bad_datagrams: int = 0


NodeId = Annotated[str, Field(min_length=1, max_length=128)]


class MemberEntry(_Message):
    """One node as gossiped in ``members`` frames (see module docstring)."""

    node_id: NodeId
    url: Annotated[str, Field(min_length=1, max_length=256)] | None = None  # None: coordinator-only member
    public_key: PublicKey
    name: Annotated[str, Field(max_length=128)] = ""
    model: Annotated[str, Field(max_length=256)] | None = None
    capacity: Annotated[int, Field(ge=0)] = 0
    incarnation: Annotated[int, Field(ge=0)] = 0
    heartbeat: Annotated[int, Field(ge=0)] = 0
    state: Literal["alive", "left"] = "alive"
    in_flight: Annotated[int, Field(ge=0)] = 0


class RewardRecord(_Message):
    """One fitness reward issued by a coordinator for one peer's answer to one chunk.

    Signed by the issuer over :func:`reward_signing_bytes` (every field but
    ``hops``, which gossip increments, and ``signature``); an unsigned record
    (empty ``signature``) is rejected by every receiver.
    """

    id: Annotated[str, Field(min_length=1, max_length=64)]
    issuer: NodeId
    seq: Annotated[int, Field(ge=0, lt=1 << 64)] = 0
    node_id: NodeId
    reward: Annotated[float, Field(ge=-1.0, le=1.0)]
    chunk: Annotated[str, Field(max_length=64)] = ""
    ts: float = 0.0
    hops: Annotated[int, Field(ge=0, le=64)] = 0
    model: Annotated[str, Field(max_length=128)] | None = None
    kind: Annotated[str, Field(max_length=16)] | None = None
    signature: Signature = b""


def reward_signing_bytes(record: RewardRecord) -> bytes:
    """The canonical byte string a reward record's signature covers (see Identity in the module docstring)."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack(">H", len(raw)) + raw

    return b"".join(
        (
            REWARD_SIGNING_CONTEXT,
            text(record.id),
            text(record.issuer),
            struct.pack(">Q", record.seq),
            text(record.node_id),
            struct.pack(">d", record.reward),
            text(record.chunk),
            struct.pack(">d", record.ts),
            # Appended only when set, so a record without them signs as it always did.
            b""
            if record.model is None and record.kind is None
            else b"\x01" + text(record.model or "") + text(record.kind or ""),
        )
    )


Count = Annotated[int, Field(ge=0, lt=1 << 64)]
# The liveness part of a member entry: (node_id, incarnation, heartbeat, in_flight, left).
Beat = tuple[NodeId, Count, Count, Count, bool]


class Members(_Message):
    type: Literal["members"] = "members"
    nonce: int = 0
    reply: bool = False
    entries: Annotated[list[MemberEntry], Field(max_length=MAX_MEMBER_ENTRIES)] = []
    beats: Annotated[list[Beat], Field(max_length=MAX_MEMBER_ENTRIES)] = []
    want: Annotated[list[NodeId], Field(max_length=MAX_MEMBER_ENTRIES)] = []
    rewards: Annotated[list[RewardRecord], Field(max_length=MAX_REWARD_RECORDS)] = []


MAX_SYNC_ROWS = 8192


class Sync(_Message):
    """SWIM push-pull (see ``sync`` in the module docstring); digest rows and changes are checked by the SWIM core."""

    type: Literal["sync"] = "sync"
    nonce: int = 0
    reply: bool = False
    digest: Annotated[list[list[Any]], Field(max_length=MAX_SYNC_ROWS)] = []
    changes: Annotated[list[list[Any]], Field(max_length=MAX_SYNC_ROWS)] = []
    buckets: Annotated[list[bytes], Field(max_length=256)] = []


class PeerRow(_Message):
    """One row of a node's peer table as reported by ``peers``."""

    node_id: str
    url: str | None = None
    name: str = ""
    model: str | None = None
    capacity: int = 0
    in_flight: int = 0
    rtt_ms: float | None = None
    fitness: float = 0.5
    last_seen_s: float = 0.0
    state: str = "alive"
    source: str = ""
    rewards: Annotated[int, Field(ge=0)] = 0
    agreed: Annotated[int, Field(ge=0)] = 0


class GetPeers(_Message):
    type: Literal["get_peers"] = "get_peers"
    nonce: int = 0


class ModelFitness(_Message):
    """Agreement counts of one (model, chunk kind): rewards counted and how many were for agreeing."""

    model: Annotated[str, Field(max_length=128)]
    kind: Annotated[str, Field(max_length=16)]
    agreed: Annotated[int, Field(ge=0)] = 0
    rewards: Annotated[int, Field(ge=0)] = 0


MAX_MODEL_ROWS = 256


class Peers(_Message):
    type: Literal["peers"] = "peers"
    nonce: int = 0
    node_id: str
    fitness: float = 0.5
    peers: list[PeerRow] = []
    rewards: Annotated[int, Field(ge=0)] = 0
    agreed: Annotated[int, Field(ge=0)] = 0
    models: Annotated[list[ModelFitness], Field(max_length=MAX_MODEL_ROWS)] = []


class Rewards(_Message):
    type: Literal["rewards"] = "rewards"
    records: Annotated[list[RewardRecord], Field(max_length=MAX_REWARD_RECORDS)]


ADAPTER_PART_BYTES = 512 * 1024  # payload bytes per ``adapter_part`` (half the default frame limit)
AdapterId = Annotated[str, Field(pattern=r"^lora-[0-9a-f]{12}$")]


class GetAdapter(_Message):
    """Ask for ``ADAPTER_PART_BYTES`` of an adapter bundle from ``offset`` (issue 23; see ``get_adapter``)."""

    type: Literal["get_adapter"] = "get_adapter"
    nonce: int = 0
    adapter_id: AdapterId
    offset: Annotated[int, Field(ge=0)] = 0


class AdapterPart(_Message):
    """A part of an adapter bundle, or why there is none (``error``)."""

    type: Literal["adapter_part"] = "adapter_part"
    nonce: int = 0
    adapter_id: str
    error: str | None = None
    manifest: Annotated[bytes, Field(max_length=4096, strict=True)] = b""
    signature: Signature = b""
    offset: Annotated[int, Field(ge=0)] = 0
    total: Annotated[int, Field(ge=0)] = 0
    data: Annotated[bytes, Field(max_length=ADAPTER_PART_BYTES, strict=True)] = b""


_TYPES = (
    Hello,
    Auth,
    Generate,
    Token,
    Done,
    Error,
    Cancel,
    Ping,
    Pong,
    GetStats,
    Stats,
    Members,
    GetPeers,
    Peers,
    Rewards,
    Sync,
    GetAdapter,
    AdapterPart,
)
Message = Annotated[
    Hello
    | Auth
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
    | Rewards
    | Sync
    | GetAdapter
    | AdapterPart,
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
    """Encode a message as one msgpack map (the payload of one binary frame); bytes fields become bin."""
    if isinstance(message, Sync):  # raw rows and changes (bytes stay bin), already checked or to be checked
        return msgpack.packb(
            {
                "type": "sync",
                "nonce": message.nonce,
                "reply": message.reply,
                "digest": message.digest,
                "changes": message.changes,
                **({"buckets": message.buckets} if message.buckets else {}),
            },
            use_bin_type=True,
        )
    if isinstance(message, Members) and message.beats:
        # Beats are already plain tuples: dumping hundreds of them through
        # pydantic doubled the cost of every gossip frame (bench_scale, N = 500).
        fields = message.model_dump(exclude={"beats"})
        fields["beats"] = message.beats
        return msgpack.packb(fields, use_bin_type=True)
    return msgpack.packb(message.model_dump(exclude_none=False), use_bin_type=True)


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
