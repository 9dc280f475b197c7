"""Cluster key (shared-secret peer authentication), its handshake proofs, and TLS contexts.

A cluster key is a random secret shared by every node of one cluster (and
the clients that may use it). It never travels on the wire: in the
handshake each side proves knowledge of it with an HMAC over fresh nonces
from both sides (see the ``Handshake`` section of :mod:`dellm_p2p.protocol`).

Key file: one line of text, the secret as hex (``dellm keygen`` writes 32
random bytes as 64 hex digits) or base64; at least 16 bytes. Keep it mode
0600; a key file readable by group or others is used but logged as a warning.

TLS (``wss://``) is independent of the key: the key decides who may join,
TLS hides and protects the traffic (without TLS, an on-path attacker can
read frames and hijack an authenticated connection).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import stat
from pathlib import Path

log = logging.getLogger(__name__)

AUTH_LABEL = b"dellm-p2p/1 cluster-auth"  # context label: a proof is useless to any other protocol
KEY_BYTES = 32  # what keygen writes
MIN_KEY_BYTES = 16
NONCE_BYTES = 32
KEY_FILE_ENV = "DELLM_CLUSTER_KEY_FILE"
ROLES = ("client", "server")


class SecurityConfigError(ValueError):
    """A cluster key file or TLS file cannot be used (one-line reason in ``str``, never the secret)."""


def default_key_path() -> Path:
    """Where ``dellm keygen`` writes by default: ``$XDG_CONFIG_HOME/dellm/cluster.key``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(Path.home(), ".config")
    return Path(base) / "dellm" / "cluster.key"


def new_key_text() -> str:
    """A fresh random cluster key: :data:`KEY_BYTES` bytes from :mod:`secrets` as hex (64 characters)."""
    return secrets.token_hex(KEY_BYTES)


def write_key_file(path: str | Path, *, force: bool = False) -> Path:
    """Write a fresh cluster key to ``path`` with file mode 0600 (parent made 0700 if missing).

    Args:
        path: the key file to create.
        force: replace an existing file (atomically) instead of refusing.

    Returns:
        The path written.

    Raises:
        SecurityConfigError: the file exists and ``force`` is false, or it cannot be written.
    """
    path = Path(path).expanduser()
    text = new_key_text() + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not force:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            target = path
        else:
            target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(target, 0o600)  # O_CREAT's mode is masked by the umask; 0600 needs no widening, but be explicit
        if target != path:
            os.replace(target, path)
    except FileExistsError:
        raise SecurityConfigError(
            f"{path} exists; pass --force to replace it (nodes using the old key lock out)"
        ) from None
    except OSError as exc:
        raise SecurityConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def parse_key(text: str) -> bytes:
    """The secret in a key file's text: hex or base64, surrounding whitespace ignored.

    Raises:
        SecurityConfigError: neither hex nor base64, or shorter than :data:`MIN_KEY_BYTES` bytes.
    """
    value = text.strip()
    key: bytes | None = None
    if value and len(value) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in value):
        key = bytes.fromhex(value)
    else:
        with contextlib.suppress(binascii.Error, ValueError):  # standard or URL-safe alphabet
            key = base64.b64decode(value.replace("-", "+").replace("_", "/"), validate=True)
    if not key:
        raise SecurityConfigError("the cluster key is neither hex nor base64 (generate one with `dellm keygen`)")
    if len(key) < MIN_KEY_BYTES:
        raise SecurityConfigError(f"the cluster key is {len(key)} bytes; at least {MIN_KEY_BYTES} are required")
    return key


def load_cluster_key(path: str | Path) -> bytes:
    """Read a cluster key file (see module docstring); returns the secret bytes.

    Raises:
        SecurityConfigError: unreadable file or invalid key (the message names the file, never the key).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="ascii")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not ASCII text"
        raise SecurityConfigError(f"cannot read cluster key file {path}: {reason}") from None
    try:
        key = parse_key(text)
    except SecurityConfigError as exc:
        raise SecurityConfigError(f"cluster key file {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("cluster key file %s is accessible by group or others; chmod 600 it", path)
    return key


def cluster_key_from_env() -> bytes | None:
    """The key in the file named by ``$DELLM_CLUSTER_KEY_FILE``, or ``None`` when unset (for scripts).

    Raises:
        SecurityConfigError: as :func:`load_cluster_key`.
    """
    path = os.environ.get(KEY_FILE_ENV)
    return load_cluster_key(path) if path else None


def new_nonce() -> str:
    """A fresh handshake nonce: :data:`NONCE_BYTES` random bytes as lowercase hex."""
    return secrets.token_hex(NONCE_BYTES)


def auth_proof(key: bytes, role: str, client_nonce: str, server_nonce: str, client_id: str, server_id: str) -> str:
    """The handshake proof of ``role`` (``client`` or ``server``): HMAC-SHA256 as lowercase hex.

    The MAC input is ``AUTH_LABEL || 0x00 || role || 0x00 || client_nonce ||
    server_nonce || u16be(len(client_id)) || client_id || u16be(len(server_id))
    || server_id``, nonces as raw bytes (decoded from hex) and ids as UTF-8.

    Raises:
        ValueError: a nonce is not hex, or ``role`` is unknown.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    parts = [AUTH_LABEL, b"\x00", role.encode(), b"\x00", bytes.fromhex(client_nonce), bytes.fromhex(server_nonce)]
    for node_id in (client_id, server_id):
        raw = node_id.encode()
        parts += [len(raw).to_bytes(2, "big"), raw]
    return hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest()


def check_proof(
    key: bytes, proof: str, role: str, client_nonce: str, server_nonce: str, client_id: str, server_id: str
) -> bool:
    """True when ``proof`` is :func:`auth_proof` of these inputs (constant-time comparison)."""
    try:
        expected = auth_proof(key, role, client_nonce, server_nonce, client_id, server_id)
    except ValueError:
        return False
    return hmac.compare_digest(expected.encode(), proof.encode())


def server_ssl_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A TLS server context from a PEM certificate (chain) and its private key.

    Raises:
        SecurityConfigError: a file is missing or the pair is invalid.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(Path(cert).expanduser()), str(Path(key).expanduser()))
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc.strerror or exc}") from None
    return context


def client_ssl_context(ca: str | Path | None = None) -> ssl.SSLContext:
    """A TLS client context that verifies servers against ``ca`` (PEM), or the system's CAs when ``None``.

    Raises:
        SecurityConfigError: ``ca`` cannot be read.
    """
    try:
        return ssl.create_default_context(cafile=str(Path(ca).expanduser()) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise SecurityConfigError(f"cannot load TLS CA {ca}: {exc.strerror or exc}") from None
