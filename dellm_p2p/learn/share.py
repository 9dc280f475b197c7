"""Sharing adapters between peers over the wire protocol (``get_adapter`` / ``adapter_part``).

The node that trained an adapter serves it as a **bundle**: an uncompressed
tar of the adapter's three files (:data:`~.adapters.ADAPTER_FILES`, never
its held-back records), described by a **manifest** (canonical JSON: id,
base model and its hash, the bundle's SHA-256 and size, the trainer's node
id and public key) that the trainer signs with its node key (Ed25519 over
``"dellm-adapter/1\\n" || manifest``). A peer serving the same base model
fetches it part by part (512 KiB each) and checks, in this order, refusing
with a one-line :class:`ShareError` and loading nothing when a check fails:

1. the manifest parses and names the adapter asked for;
2. its size is at most ``max_bytes`` (before anything more is fetched, and
   again as parts arrive);
3. the public key derives the trainer's node id, and the signature checks;
4. the bundle's SHA-256 is the manifest's;
5. the tar holds exactly the adapter's files (regular files, no paths), the
   weights hash to the id and the metadata agrees with the manifest.

Only then is the adapter written to ``<state_dir>/learn/adapters/<id>/``; the
guard (:mod:`.guard`) decides whether it is adopted.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..identity import Identity, derive_node_id, verify_signature
from ..protocol import ADAPTER_PART_BYTES, AdapterPart, GetAdapter
from .adapters import ADAPTER_FILES, AdapterError, AdapterMeta, adapters_dir, check_adapter_dir

log = logging.getLogger(__name__)

FORMAT = "dellm-adapter/1"
SIGNING_CONTEXT = b"dellm-adapter/1\n"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # the largest adapter a node fetches [bytes]


class ShareError(RuntimeError):
    """An adapter could not be fetched or was refused (one-line reason in ``str``)."""


@dataclass(frozen=True)
class Bundle:
    """An adapter ready to send: its signed manifest and the tar bytes."""

    manifest: bytes
    signature: bytes
    payload: bytes


def _tar(adapter: Path) -> bytes:
    """The adapter's files as a deterministic uncompressed tar (sorted, mtime 0, owner 0)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(ADAPTER_FILES):
            data = (adapter / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_bundle(adapter: Path, identity: Identity) -> Bundle:
    """Bundle and sign an adapter directory with the trainer's key. Raises :class:`AdapterError`."""
    meta = check_adapter_dir(adapter)
    payload = _tar(Path(adapter))
    manifest = {
        "format": FORMAT, "id": meta.id, "base_model": meta.base_model, "base_hash": meta.base_hash,
        "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload),
        "trainer": identity.node_id, "public_key": identity.public_key.hex(),
    }  # fmt: skip
    raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return Bundle(raw, identity.sign(SIGNING_CONTEXT + raw), payload)


class AdapterShelf:
    """The adapters a node offers to peers: bundles of ``<state_dir>/learn/adapters/<id>/``, built on first ask.

    Only adapters the node trained itself (its node id in the metadata) are
    offered, signed with its own key: a node never vouches for another's.
    """

    def __init__(self, state_dir: Path, identity: Identity):
        self.state_dir = Path(state_dir)
        self.identity = identity
        self._bundles: dict[str, Bundle] = {}

    def _load(self, adapter_id: str) -> Bundle:
        directory = adapters_dir(self.state_dir) / adapter_id
        if not directory.is_dir():
            raise AdapterError(f"no adapter {adapter_id} here")
        meta = check_adapter_dir(directory)
        if meta.trainer != self.identity.node_id:
            raise AdapterError(f"adapter {adapter_id} was not trained by this node")
        return make_bundle(directory, self.identity)

    async def part(self, request: GetAdapter) -> AdapterPart:
        """The ``adapter_part`` answering ``request`` (an ``error`` when there is no such adapter)."""
        reply = {"nonce": request.nonce, "adapter_id": request.adapter_id}
        bundle = self._bundles.get(request.adapter_id)
        if bundle is None:
            try:
                bundle = await asyncio.to_thread(self._load, request.adapter_id)
            except (AdapterError, OSError) as exc:
                return AdapterPart(**reply, error=str(exc))
            self._bundles[request.adapter_id] = bundle
        if request.offset > len(bundle.payload):
            return AdapterPart(**reply, error=f"offset {request.offset} is past the end ({len(bundle.payload)} bytes)")
        first = request.offset == 0
        return AdapterPart(
            **reply,
            manifest=bundle.manifest if first else b"",
            signature=bundle.signature if first else b"",
            offset=request.offset,
            total=len(bundle.payload),
            data=bundle.payload[request.offset : request.offset + ADAPTER_PART_BYTES],
        )


def check_manifest(manifest: bytes, signature: bytes, adapter_id: str, max_bytes: int) -> dict:
    """Checks 1-3 of the module docstring; returns the manifest. Raises :class:`ShareError`."""
    try:
        data = json.loads(manifest)
        public_key = bytes.fromhex(data["public_key"])
        size = int(data["bytes"])
        for key in ("sha256", "base_hash", "trainer"):
            str(data[key])
    except (ValueError, KeyError, TypeError):
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ShareError(f"adapter {adapter_id}: the manifest is not a {FORMAT} manifest")
    if data.get("id") != adapter_id:
        raise ShareError(f"adapter {adapter_id}: the manifest describes {data.get('id')!r}")
    if size > max_bytes:
        raise ShareError(f"adapter {adapter_id} is {size:,} bytes, over the limit of {max_bytes:,}")
    if len(public_key) != 32 or derive_node_id(public_key) != data.get("trainer"):
        raise ShareError(f"adapter {adapter_id}: the trainer's key does not match its node id")
    if not verify_signature(public_key, signature, SIGNING_CONTEXT + manifest):
        raise ShareError(f"adapter {adapter_id}: bad signature (not signed by its trainer {data.get('trainer')})")
    return data


def unpack(payload: bytes, manifest: dict, state_dir: Path) -> tuple[Path, AdapterMeta]:
    """Checks 4-5, then write the adapter to ``<state_dir>/learn/adapters/<id>/``. Raises :class:`ShareError`."""
    adapter_id = manifest["id"]
    if len(payload) != manifest["bytes"] or hashlib.sha256(payload).hexdigest() != manifest["sha256"]:
        raise ShareError(f"adapter {adapter_id}: the bundle's hash is not the signed one (corrupted or tampered)")
    root = adapters_dir(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as tar:
                members = tar.getmembers()
                names = sorted(m.name for m in members)
                if names != sorted(ADAPTER_FILES) or not all(m.isreg() for m in members):
                    raise ShareError(f"adapter {adapter_id}: the bundle holds {names}, not an adapter's files")
                for member in members:
                    source = tar.extractfile(member)
                    (tmp / member.name).write_bytes(source.read() if source is not None else b"")
        except tarfile.TarError as exc:
            raise ShareError(f"adapter {adapter_id}: the bundle is not a tar ({exc})") from None
        try:
            meta = check_adapter_dir(tmp)
        except AdapterError as exc:
            raise ShareError(f"adapter {adapter_id}: {exc}") from None
        if meta.id != adapter_id or meta.base_hash != manifest["base_hash"]:
            raise ShareError(f"adapter {adapter_id}: its metadata disagrees with the signed manifest")
        target = root / adapter_id
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        return target, meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


async def fetch_adapter(
    client,
    adapter_id: str,
    state_dir: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    base_hash: str | None = None,
    timeout_s: float = 30.0,
) -> tuple[Path, AdapterMeta, dict]:
    """Fetch ``adapter_id`` from the peer behind ``client`` (a ``PeerClient``), check it and store it.

    Args:
        client: a connected peer client.
        adapter_id: ``lora-…``.
        state_dir: the receiving node's state directory.
        max_bytes: the largest bundle accepted [bytes].
        base_hash: this node's base model hash: an adapter for another base is refused.
        timeout_s: deadline of each part [s].

    Returns:
        The adapter's directory, its metadata and the checked manifest.

    Raises:
        ShareError: the peer has no such adapter, or a check failed (logged as a warning too).
        PeerError: the connection failed or a part timed out.
    """
    try:
        first = await client.adapter_part(adapter_id, 0, timeout_s=timeout_s)
        if first.error:
            raise ShareError(f"{client.url} has no adapter {adapter_id}: {first.error}")
        manifest = check_manifest(first.manifest, first.signature, adapter_id, max_bytes)
        if base_hash is not None and manifest["base_hash"] != base_hash:
            raise ShareError(f"adapter {adapter_id} was trained on another base model (hash differs)")
        if first.total != manifest["bytes"]:
            raise ShareError(f"adapter {adapter_id}: {client.url} sends {first.total:,} bytes, the manifest says more")
        parts = [first.data]
        received = len(first.data)
        while received < first.total:
            part = await client.adapter_part(adapter_id, received, timeout_s=timeout_s)
            if part.error or not part.data or part.offset != received:
                raise ShareError(f"adapter {adapter_id}: {client.url} broke off at {received:,} bytes ({part.error})")
            received += len(part.data)
            if received > max_bytes or received > first.total:
                raise ShareError(f"adapter {adapter_id}: more bytes than announced (over {first.total:,})")
            parts.append(part.data)
        directory, meta = await asyncio.to_thread(unpack, b"".join(parts), manifest, state_dir)
    except ShareError as exc:
        log.warning("refused adapter %s from %s: %s", adapter_id, getattr(client, "url", "?"), exc)
        raise
    log.info(
        "fetched adapter %s (%d bytes) from %s, trained by %s", adapter_id, received, client.url, manifest["trainer"]
    )
    return directory, meta, manifest
