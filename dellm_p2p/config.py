"""Node configuration: defaults < TOML file (``--config``) < ``DELLM_*`` env < CLI flags."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .models import check_model_option
from .protocol import DEFAULT_MAX_FRAME_BYTES

DEFAULT_MEMBERSHIP = "swim"  # a node's and a Swarm's membership unless DELLM_MEMBERSHIP or the config says otherwise


class ConfigError(ValueError):
    """The configuration is invalid (one-line reason in ``str``)."""


class NodeConfig(BaseSettings):
    """Everything a ``dellm-node`` needs; see ``nodes/*.toml`` for examples.

    Attributes:
        name: node name shown to peers; also keys the state directory.
        host: address to listen on (``0.0.0.0`` to serve a LAN).
        port: websocket port; 0 picks a free one.
        engine: ``vllm`` (model in this node), ``openai`` (front an existing
            OpenAI-compatible server) or ``none`` (coordinator only).
        model: an embedded model (``smollm2-135m``, ``gemma3-270m``; see
            :data:`dellm_p2p.models.EMBEDDED_MODELS`), a local HF directory or
            a cached model id; ``None`` = the embedded default, SmolLM2-135M-Instruct.
        dtype: vLLM dtype; ``None`` picks float32 on CPU, ``auto`` on GPU.
        max_model_len: context window [tokens].
        kv_cache_gib: vLLM CPU KV-cache size [GiB].
        cpu_bind: CPU cores for vLLM's CPU worker threads
            (``VLLM_CPU_OMP_THREADS_BIND``, e.g. ``"1"`` or ``"0-3"``;
            ``"auto"``: vLLM's own choice). ``None``: the node claims
            ``cpu_cores`` cores that no other dellm node on this machine
            holds (:mod:`dellm_p2p.cores`), since vLLM alone would bind
            every node to core 0.
        cpu_cores: cores a node claims when ``cpu_bind`` is not set.
        vllm_args: extra ``AsyncEngineArgs`` (e.g. ``tensor_parallel_size``).
        engine_env: environment variables for vLLM's engine processes only
            (e.g. ``LD_PRELOAD`` or oneDNN settings), over the node's measured
            CPU defaults (``dellm_p2p.engine.vllm_engine.CPU_ENGINE_ENV``).
        openai_base_url: API root for ``engine = "openai"``.
        openai_model: model on that server (``None`` = the first listed).
        openai_api_key_env: environment variable holding its API key.
        max_concurrency: requests served at once; more get ``overloaded``.
        max_frame_bytes: largest accepted frame [bytes].
        request_timeout_s: deadline of one request [s].
        grace_period_s: time in-flight requests get at shutdown [s].
        state_dir: where the node keeps its id (default
            ``$XDG_STATE_HOME/dellm/nodes/<name>``).
        peers: bootstrap peers (``ws://host:port``), contacted until they answer.
            A host that is a DNS name resolving to several addresses (a
            Kubernetes headless Service) stands for one peer per address.
        dns_refresh_s: how often bootstrap DNS names are resolved again [s].
        mdns: announce and browse on mDNS.
        mdns_interfaces: IPv4 addresses for mDNS; default 127.0.0.1 when
            listening on loopback, else all interfaces.
        advertise_url: the URL peers should use (default from host and port).
        gossip_interval_s: membership gossip period [s].
        fanout: peers contacted per gossip round.
        suspect_after_s: heartbeat silence before a peer is suspect [s].
        dead_after_s: heartbeat silence before a peer is dead [s].
        membership: ``swim`` (the default, issue 14: SWIM failure
            detection with Lifeguard, probes over UDP on the node's port,
            signed member entries, see :mod:`dellm_p2p.membership`) or
            ``gossip`` (the older heartbeat gossip; ``gossip_interval_s``,
            ``suspect_after_s`` and ``dead_after_s`` apply to it only).
            All nodes of a network, and the coordinators that ask it, must
            use the same one.
        probe_interval_s: SWIM protocol period [s]; suspicion and detection
            times scale with it (see :class:`dellm_p2p.membership.swim.SwimConfig`).
        push_pull_interval_s: base interval of SWIM's full-state sync with
            one random member [s]; it grows with log N beyond 32 members.
        reward_window_s: freshness window of gossiped reward records: a
            record whose timestamp is further than this from our clock is
            rejected as stale [s].
        cluster_key_file: file holding the cluster's shared secret (``dellm
            keygen`` writes one); peers must prove it in the handshake.
            ``None``: an open node, refused by keyed peers.
        tls_cert, tls_key: PEM certificate (chain) and private key: serve
            ``wss://`` (both or neither).
        tls_ca: PEM CA bundle to verify ``wss://`` peers this node dials
            (default: the system's CAs).
        handshake_timeout_s: a connection must complete the handshake
            (authentication included) this soon after opening [s].
        max_in_flight_per_peer: requests one peer connection may have in
            flight (``None``: up to ``max_concurrency``).
        max_requests_per_s_per_peer: sustained messages per second one peer
            connection may send [1/s]; above it they get ``rate_limited``.
        request_burst_per_peer: burst size of that rate [messages].
        max_prompt_chars: longest prompt (or all message contents) a
            ``generate`` may carry [characters].
        http_port: port of the OpenAI-compatible HTTP API (``None``: off;
            0 picks a free one).
        http_host: address the HTTP API listens on; anything but loopback
            needs ``api_key_file`` or ``http_insecure``.
        api_key_file: file holding the API key requests must send as
            ``Authorization: Bearer <key>`` (env ``DELLM_API_KEY_FILE``).
        http_insecure: allow an HTTP API without a key on a non-loopback address.
        http_max_body_bytes: largest HTTP request body [bytes]; more gets 413.
        http_max_concurrent: peer-model completions the API answers at once;
            more get 429 (``model: dellm`` questions queue instead).
        http_max_queue: ``model: dellm`` questions that may wait for the
            swarm at once (the admission queue); more get 429.
        http_requests_per_minute, http_tokens_per_minute: per-client rate
            limits of the API (token buckets; ``None``: off).
        learn_records: keep the consensus this node's questions reach per
            chunk in ``<state_dir>/learn/records.jsonl`` (issue 23; ``dellm
            learn export``); ``false`` keeps nothing.
        learn_max_records: records kept (the newest).
        learn_serve: serve the adapter adopted for this node's model
            (``<state_dir>/learn/adopted.json``, see ``dellm learn``) with
            vLLM's LoRA support; the node then announces ``<model>:<adapter>``.
    """

    model_config = SettingsConfigDict(env_prefix="DELLM_", extra="forbid", validate_default=True)

    name: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    host: str = "127.0.0.1"
    port: int = Field(default=7070, ge=0, le=65535)
    engine: Literal["vllm", "openai", "none"] = "vllm"
    model: str | None = None
    dtype: str | None = None
    max_model_len: int = Field(default=2048, ge=16)
    kv_cache_gib: float = Field(default=1.0, gt=0)
    cpu_bind: str | None = None
    cpu_cores: int = Field(default=1, ge=1, le=4096)
    vllm_args: dict[str, Any] = Field(default_factory=dict)
    engine_env: dict[str, str] = Field(default_factory=dict)
    openai_base_url: str | None = None
    openai_model: str | None = None
    openai_api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = Field(default=32, ge=1, le=4096)
    max_frame_bytes: int = Field(default=DEFAULT_MAX_FRAME_BYTES, ge=4096)
    request_timeout_s: float = Field(default=600.0, gt=0)
    grace_period_s: float = Field(default=10.0, ge=0)
    state_dir: Path | None = None
    peers: list[str] = Field(default_factory=list)
    dns_refresh_s: float = Field(default=30.0, gt=0)
    mdns: bool = True
    mdns_interfaces: list[str] | None = None
    advertise_url: str | None = None
    gossip_interval_s: float = Field(default=0.5, gt=0)
    fanout: int = Field(default=3, ge=1, le=64)
    suspect_after_s: float = Field(default=3.0, gt=0)
    dead_after_s: float = Field(default=8.0, gt=0)
    membership: Literal["swim", "gossip"] = DEFAULT_MEMBERSHIP
    probe_interval_s: float = Field(default=0.5, gt=0)
    push_pull_interval_s: float = Field(default=30.0, gt=0)
    reward_window_s: float = Field(default=120.0, gt=0)
    cluster_key_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    max_in_flight_per_peer: int | None = Field(default=None, ge=1)
    max_requests_per_s_per_peer: float = Field(default=500.0, gt=0)
    request_burst_per_peer: int = Field(default=1000, ge=1)
    max_prompt_chars: int = Field(default=100_000, ge=1)
    http_port: int | None = Field(default=None, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    api_key_file: Path | None = None
    http_insecure: bool = False
    http_max_body_bytes: int = Field(default=1 << 20, ge=1024)
    http_max_concurrent: int = Field(default=64, ge=1, le=4096)
    http_max_queue: int = Field(default=1024, ge=0)
    http_requests_per_minute: float | None = Field(default=None, gt=0)
    http_tokens_per_minute: float | None = Field(default=None, gt=0)
    learn_records: bool = True
    learn_max_records: int = Field(default=10_000, ge=1, le=10_000_000)
    learn_serve: bool = True

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not all(c.isalnum() or c in "-_." for c in value):
            raise ValueError("use letters, digits, '-', '_' or '.'")
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        # A typo fails here, in one line, not minutes later inside vLLM.
        return None if value is None else check_model_option(value)

    @field_validator("peers")
    @classmethod
    def _peer_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("ws://", "wss://")) or ":" not in url.split("//", 1)[1]:
                raise ValueError(f"{url!r} is not a ws://host:port URL")
        return value

    @property
    def resolved_mdns_interfaces(self) -> list[str] | None:
        """mDNS interfaces: as configured, else loopback for a loopback node, else all (``None``)."""
        if self.mdns_interfaces:
            return self.mdns_interfaces
        return ["127.0.0.1"] if self.host.startswith("127.") or self.host == "localhost" else None

    @property
    def resolved_state_dir(self) -> Path:
        """The state directory, defaulted from ``name``."""
        if self.state_dir is not None:
            return self.state_dir.expanduser()
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
        return Path(base) / "dellm" / "nodes" / self.name

    def check(self) -> None:
        """Cross-field checks. Raises :class:`ConfigError`."""
        if self.engine == "openai" and not self.openai_base_url:
            raise ConfigError("engine 'openai' needs openai_base_url (--openai-url)")
        if self.dead_after_s <= self.suspect_after_s:
            raise ConfigError("dead_after_s must be larger than suspect_after_s")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both tls_cert and tls_key (--tls-cert, --tls-key)")
        if (
            self.http_port is not None
            and self.api_key_file is None
            and not self.http_insecure
            and not is_loopback(self.http_host)
        ):
            raise ConfigError(
                f"the HTTP API on {self.http_host} would be open to the network: give an api_key_file "
                "(--api-key-file) or http_insecure (--http-insecure)"
            )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_config(path: str | Path | None = None, **overrides: Any) -> NodeConfig:
    """Build a :class:`NodeConfig` from an optional TOML file and overrides.

    ``None`` overrides are dropped so unset CLI flags do not mask the file.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key or invalid value.
    """
    data = _read_toml(Path(path)) if path is not None else {}
    # Environment beats the file: drop file keys that a DELLM_* variable sets
    # (pydantic-settings ranks constructor arguments above the environment).
    env = {key.upper() for key in os.environ}
    data = {k: v for k, v in data.items() if f"DELLM_{k.upper()}" not in env}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = NodeConfig(**data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        # A validator's own ValueError reads better without pydantic's "Value error, " prefix.
        message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
        raise ConfigError(f"invalid config value for {where}: {message}") from None
    config.check()
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    """Read a node file: its keys at top level or all inside one ``[node]`` table."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None
    if "node" not in data:
        return data
    table = data.pop("node")
    if not isinstance(table, dict):
        raise ConfigError(f"config {path}: 'node' must be a table ([node])")
    if data:
        raise ConfigError(f"config {path}: keys outside [node]: {', '.join(sorted(data))}")
    return table
