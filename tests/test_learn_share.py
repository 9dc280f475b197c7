"""Sharing adapters over the wire protocol (issue 23): signed, hash-checked, size-limited; bad ones refused."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from dellm_p2p.client import PeerClient
from dellm_p2p.identity import Identity
from dellm_p2p.learn.adapters import ADAPTER_FILES, adapters_dir
from dellm_p2p.learn.share import SIGNING_CONTEXT, AdapterShelf, ShareError, fetch_adapter
from dellm_p2p.learn.train import TrainSettings, train_adapter
from dellm_p2p.server import NodeServer

from .test_learn_train import _records, tiny_model  # noqa: F401  (the tiny Llama fixture)


@pytest.fixture
async def trainer(tiny_model, tmp_path, monkeypatch):  # noqa: F811
    """A node (no engine) that trained an adapter and offers it in 8 KiB parts (so a fetch takes several frames)."""
    monkeypatch.setattr("dellm_p2p.learn.share.ADAPTER_PART_BYTES", 8192)
    identity = Identity.generate()
    state = tmp_path / "trainer"
    _, meta = train_adapter(_records(8), tiny_model, "tiny", state,
                            TrainSettings(rank=4, alpha=8, batch_size=4, holdout=0.0, max_steps=1),
                            trainer=identity.node_id)  # fmt: skip
    server = NodeServer(None, node_id=identity.node_id, name="trainer", identity=identity)
    server.adapters = AdapterShelf(state, identity)
    url = await server.start("127.0.0.1", 0)
    client = await PeerClient.connect(url)
    yield client, server, meta, state, identity
    await client.close()
    await server.shutdown(0)


async def test_a_peer_fetches_a_signed_adapter(trainer, tmp_path):
    client, _, meta, state, identity = trainer
    directory, fetched, manifest = await fetch_adapter(client, meta.id, tmp_path / "peer", base_hash=meta.base_hash)
    assert fetched == meta and manifest["trainer"] == identity.node_id and manifest["bytes"] > 3 * 8192
    for name in ADAPTER_FILES:
        assert (directory / name).read_bytes() == (adapters_dir(state) / meta.id / name).read_bytes()
    assert not (directory.parent.parent / "heldout").exists()  # held-back records are never shared


async def test_unknown_adapter_and_other_base_are_refused(trainer, tmp_path):
    client, _, meta, _, _ = trainer
    with pytest.raises(ShareError, match="has no adapter"):
        await fetch_adapter(client, "lora-000000000000", tmp_path / "peer")
    with pytest.raises(ShareError, match="another base model"):
        await fetch_adapter(client, meta.id, tmp_path / "peer", base_hash="0" * 64)


def _nothing_loaded(state) -> bool:
    root = adapters_dir(state)
    return not root.exists() or not any(root.iterdir())


async def test_oversized_adapter_is_refused_before_download(trainer, tmp_path, caplog):
    client, _, meta, _, _ = trainer
    with caplog.at_level(logging.WARNING), pytest.raises(ShareError, match="over the limit"):
        await fetch_adapter(client, meta.id, tmp_path / "peer", max_bytes=10_000)
    assert "refused adapter" in caplog.text and _nothing_loaded(tmp_path / "peer")


async def test_tampered_bundle_is_refused(trainer, tmp_path):
    client, server, meta, _, _ = trainer
    await client.adapter_part(meta.id, 0)  # the node builds its bundle
    bundle = server.adapters._bundles[meta.id]
    flipped = bytearray(bundle.payload)
    flipped[len(flipped) // 2] ^= 0xFF
    server.adapters._bundles[meta.id] = dataclasses.replace(bundle, payload=bytes(flipped))
    with pytest.raises(ShareError, match="hash"):
        await fetch_adapter(client, meta.id, tmp_path / "peer")
    assert _nothing_loaded(tmp_path / "peer")


async def test_bad_signature_is_refused(trainer, tmp_path):
    client, server, meta, _, identity = trainer
    await client.adapter_part(meta.id, 0)
    bundle = server.adapters._bundles[meta.id]
    # Signed by another key under the trainer's name; then a manifest changed after signing.
    forged = dataclasses.replace(bundle, signature=Identity.generate().sign(SIGNING_CONTEXT + bundle.manifest))
    server.adapters._bundles[meta.id] = forged
    with pytest.raises(ShareError, match="bad signature"):
        await fetch_adapter(client, meta.id, tmp_path / "peer")
    changed = json.loads(bundle.manifest) | {"base_model": "other"}
    raw = json.dumps(changed, sort_keys=True, separators=(",", ":")).encode()
    server.adapters._bundles[meta.id] = dataclasses.replace(bundle, manifest=raw)
    with pytest.raises(ShareError, match="bad signature"):
        await fetch_adapter(client, meta.id, tmp_path / "peer")
    # A key that is not the named trainer's.
    other = Identity.generate()
    stolen = json.loads(bundle.manifest) | {"public_key": other.public_key.hex()}
    raw = json.dumps(stolen, sort_keys=True, separators=(",", ":")).encode()
    server.adapters._bundles[meta.id] = dataclasses.replace(
        bundle, manifest=raw, signature=other.sign(SIGNING_CONTEXT + raw)
    )
    with pytest.raises(ShareError, match="does not match its node id"):
        await fetch_adapter(client, meta.id, tmp_path / "peer")
    assert _nothing_loaded(tmp_path / "peer") and identity.node_id in bundle.manifest.decode()


async def test_a_node_offers_only_what_it_trained(tiny_model, tmp_path):  # noqa: F811
    settings = TrainSettings(rank=4, alpha=8, batch_size=4, holdout=0.0, max_steps=1)
    _, meta = train_adapter(_records(8), tiny_model, "tiny", tmp_path, settings, trainer="nsomeoneelse")
    from dellm_p2p.protocol import GetAdapter

    part = await AdapterShelf(tmp_path, Identity.generate()).part(GetAdapter(adapter_id=meta.id))
    assert part.error and "not trained by this node" in part.error and not part.data
