"""Node identity: an Ed25519 key pair, the node id derived from it, and signed reward records.

Every node has an Ed25519 key pair; its node id is derived from the public
key, so anyone holding the key (it travels in ``hello`` and in member
entries) can check the id, and nobody can claim another node's id without
its private key.

Node id: ``"n"`` followed by the lowercase RFC 4648 base32 (no padding) of
the first 10 bytes (80 bits) of SHA-256(public key), 17 characters in all,
e.g. ``nq3x7kd2m5a4vbz6e``. 80 bits keep ids short yet collision-safe: two
random ids among a million nodes collide with probability about 4e-13, and
taking over a given node's id means finding a key pair whose hash matches
80 given bits (about 2^80 key generations).

Key fingerprint: SHA-256(public key) as 64 lowercase hex digits; mDNS
announces it (TXT ``fp``), and the node id is a function of it
(:func:`node_id_from_fingerprint`).

Key file: ``<state_dir>/node_key.pem``, the private key as unencrypted PKCS#8
PEM, file mode 0600, created on first start (written to a temporary file,
then hard-linked into place, so two processes starting at once agree on one
key). ``<state_dir>/node_id`` holds the derived id for people and scripts
to read; it is rewritten from the key at every start.

Migration: a state directory from before identities has a ``node_id`` file
with a random 16-hex-digit id and no key. The key replaces it: a key pair
is created, the node id becomes the one derived from it (logged once, old
and new), and ``node_id`` is rewritten. Peers see a new node; fitness earned
under the old id is not carried over (it was never bound to a key).

A short-lived coordinator (:class:`dellm_p2p.swarm.Swarm`) uses an
ephemeral identity (:meth:`Identity.generate`) unless given one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import secrets
import stat
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .protocol import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, RewardRecord, reward_signing_bytes

log = logging.getLogger(__name__)

NODE_ID_PREFIX = "n"
NODE_ID_HASH_BYTES = 10  # 80 bits of SHA-256(public key) -> 16 base32 characters
KEY_FILE = "node_key.pem"
ID_FILE = "node_id"


class IdentityError(ValueError):
    """A key file that cannot be used (one-line reason in ``str``; never contains the key)."""


def key_fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw 32-byte public key as 64 lowercase hex digits."""
    return hashlib.sha256(public_key).hexdigest()


def _id_from_digest(digest: bytes) -> str:
    return NODE_ID_PREFIX + base64.b32encode(digest[:NODE_ID_HASH_BYTES]).decode("ascii").lower()


def derive_node_id(public_key: bytes) -> str:
    """The node id of a raw 32-byte Ed25519 public key (see module docstring), e.g. ``nq3x7kd2m5a4vbz6e``."""
    return _id_from_digest(hashlib.sha256(public_key).digest())


def node_id_from_fingerprint(fingerprint: str) -> str | None:
    """The node id a key fingerprint (64 hex digits) implies; ``None`` when it is not a fingerprint."""
    if len(fingerprint) != 64:
        return None
    try:
        return _id_from_digest(bytes.fromhex(fingerprint))
    except ValueError:
        return None


def node_id_matches(node_id: str, public_key: bytes | None) -> bool:
    """True when ``node_id`` is the id derived from ``public_key`` (a missing or malformed key never matches)."""
    return public_key is not None and len(public_key) == PUBLIC_KEY_BYTES and derive_node_id(public_key) == node_id


@functools.lru_cache(maxsize=4096)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Check an Ed25519 ``signature`` (64 bytes) of ``data`` by ``public_key`` (raw 32 bytes); never raises."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    try:
        _public_key(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_reward(public_key: bytes, record: RewardRecord) -> bool:
    """True when ``record.signature`` is the issuer's signature over its canonical encoding.

    ``public_key`` is the issuer's raw 32-byte key (the caller finds it; see
    :meth:`dellm_p2p.membership.fitness.FitnessBook.check`). ``hops`` is not signed.
    """
    return verify_signature(public_key, record.signature, reward_signing_bytes(record))


class Identity:
    """An Ed25519 key pair and what derives from it.

    Attributes:
        public_key: the raw 32-byte public key.
        node_id: the node id derived from it (see module docstring).
        fingerprint: SHA-256 of the public key, 64 hex digits.
    """

    def __init__(self, private_key: Ed25519PrivateKey):
        self._private_key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = derive_node_id(self.public_key)
        self.fingerprint = key_fingerprint(self.public_key)
        self._last_seq = 0

    def __repr__(self) -> str:  # never the private key
        return f"Identity({self.node_id})"

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random key pair (ephemeral unless saved with :meth:`to_pem`)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        """Load an unencrypted PKCS#8 PEM Ed25519 private key.

        Raises:
            IdentityError: not PEM, encrypted, or not an Ed25519 key.
        """
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"not an unencrypted PEM private key ({type(exc).__name__})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"not an Ed25519 key ({type(key).__name__})")
        return cls(key)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (keep it mode 0600)."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of ``data`` (64 bytes)."""
        return self._private_key.sign(data)

    def next_seq(self) -> int:
        """The next issuer sequence number: microseconds since the epoch, strictly increasing.

        Time-based, so it keeps increasing across restarts without being
        persisted (as long as the wall clock does not go back further than
        the time between two runs).
        """
        self._last_seq = max(self._last_seq + 1, time.time_ns() // 1000)
        return self._last_seq

    def sign_reward(self, record: RewardRecord) -> RewardRecord:
        """``record`` with its ``signature`` set (its ``issuer`` must be our node id).

        Raises:
            ValueError: the record names another issuer.
        """
        if record.issuer != self.node_id:
            raise ValueError(f"record issuer {record.issuer!r} is not this identity ({self.node_id})")
        return record.model_copy(update={"signature": self.sign(reward_signing_bytes(record))})


def load_identity(state_dir: Path) -> Identity:
    """The node's identity from ``state_dir/node_key.pem``, created on first use (see module docstring).

    Also (re)writes ``state_dir/node_id`` with the derived id; a different
    id found there (a state directory from before identities) is logged once.

    Raises:
        IdentityError: the key file exists but cannot be read or is not an Ed25519 key.
        OSError: the state directory cannot be created or written.
    """
    path = state_dir / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        identity = _create_key_file(path)
    except OSError as exc:
        raise IdentityError(f"cannot read node key {path}: {exc.strerror}") from None
    else:
        try:
            identity = Identity.from_pem(data)
        except IdentityError as exc:
            raise IdentityError(
                f"node key {path} is unusable: {exc}; move it away to create a new identity (the node id changes)"
            ) from None
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("node key %s is readable by others (mode %o); run: chmod 600 %s", path, mode, path)
    _write_id_file(state_dir / ID_FILE, identity.node_id)
    return identity


def _create_key_file(path: Path) -> Identity:
    """Create a key file atomically: write a private temporary file, hard-link it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(identity.to_pem())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process created it first: use theirs
            return Identity.from_pem(path.read_bytes())
        except OSError:  # no hard links on this file system
            if path.exists():
                return Identity.from_pem(path.read_bytes())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("created node key %s (node id %s)", path, identity.node_id)
    return identity


def _write_id_file(path: Path, node_id: str) -> None:
    try:
        old = path.read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        old = ""
    if old == node_id:
        return
    if old:
        log.warning("node id is now %s, derived from the node key (it was %s before node keys)", node_id, old)
    # Unique per call: two threads (or processes) starting on one state dir must not share a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(node_id + "\n")
    os.replace(tmp, path)
