"""Node identity: the key file, ids derived from keys, migration, and the mDNS key fingerprint."""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading

import pytest
from zeroconf.asyncio import AsyncServiceInfo

from dellm_p2p.discovery import SERVICE_TYPE, MdnsDiscovery, MdnsError, parse_service
from dellm_p2p.identity import (
    ID_FILE,
    KEY_FILE,
    Identity,
    IdentityError,
    derive_node_id,
    key_fingerprint,
    load_identity,
    node_id_from_fingerprint,
    node_id_matches,
)
from dellm_p2p.protocol import PROTOCOL_VERSION


def test_node_id_derives_from_the_public_key():
    identity = Identity.generate()
    node_id = identity.node_id
    assert node_id == derive_node_id(identity.public_key) and len(node_id) == 17 and node_id[0] == "n"
    assert set(node_id[1:]) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert node_id_matches(node_id, identity.public_key)
    assert not node_id_matches(node_id, Identity.generate().public_key)
    assert not node_id_matches(node_id, None) and not node_id_matches(node_id, identity.public_key[:31])
    assert identity.fingerprint == key_fingerprint(identity.public_key) and len(identity.fingerprint) == 64
    assert node_id_from_fingerprint(identity.fingerprint) == node_id
    assert node_id_from_fingerprint("zz" * 32) is None and node_id_from_fingerprint("ab") is None
    assert repr(identity) == f"Identity({node_id})", "never the private key"


def test_sequence_numbers_are_time_based_and_strictly_increasing():
    identity = Identity.generate()
    seqs = [identity.next_seq() for _ in range(1000)]
    assert seqs == sorted(set(seqs))
    assert Identity.generate().next_seq() >= seqs[0], "a restarted issuer (new object) does not go back"


def test_key_file_is_created_private_and_the_id_is_stable_across_restarts(tmp_path):
    state = tmp_path / "state"
    first = load_identity(state)
    key_file = state / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (state / ID_FILE).read_text().strip() == first.node_id
    again = load_identity(state)
    assert again.node_id == first.node_id and again.public_key == first.public_key
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == [], "no temporary file left"


def test_concurrent_first_starts_agree_on_one_key(tmp_path):
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(load_identity(tmp_path).node_id)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and results[0] == load_identity(tmp_path).node_id


def test_old_state_dir_migrates_to_a_key_derived_id(tmp_path, caplog):
    (tmp_path / ID_FILE).write_text("0123456789abcdef\n")  # a random id from before node keys
    with caplog.at_level(logging.WARNING, logger="dellm_p2p.identity"):
        identity = load_identity(tmp_path)
    assert identity.node_id != "0123456789abcdef"
    assert (tmp_path / ID_FILE).read_text().strip() == identity.node_id
    assert "0123456789abcdef" in caplog.text and identity.node_id in caplog.text
    caplog.clear()
    load_identity(tmp_path)
    assert "node id is now" not in caplog.text, "logged once"


def test_unusable_key_file_is_a_clear_error(tmp_path, caplog):
    (tmp_path / KEY_FILE).write_text("not a key")
    with pytest.raises(IdentityError, match=r"unusable.*move it away"):
        load_identity(tmp_path)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

    ec = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / KEY_FILE).write_bytes(ec)
    with pytest.raises(IdentityError, match="not an Ed25519 key"):
        load_identity(tmp_path)
    (tmp_path / KEY_FILE).write_bytes(Identity.generate().to_pem())
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with caplog.at_level(logging.WARNING, logger="dellm_p2p.identity"):
        load_identity(tmp_path)
    assert "readable by others" in caplog.text


def _info(properties: dict) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        SERVICE_TYPE, f"t.{SERVICE_TYPE}", addresses=[socket.inet_aton("127.0.0.1")], port=9,
        properties=properties, server="t.local.",
    )  # fmt: skip


def test_txt_record_carries_the_key_fingerprint_and_it_is_checked():
    identity = Identity.generate()
    mdns = MdnsDiscovery(
        node_id=identity.node_id, name="n", port=7070, model=None, capacity=0, interfaces=["127.0.0.1"],
        on_found=lambda _: None, on_removed=lambda _: None, fingerprint=identity.fingerprint,
    )  # fmt: skip
    announced = mdns._info
    assert announced.properties[b"fp"] == identity.fingerprint.encode()
    found = parse_service(announced)
    assert found.node_id == identity.node_id and found.fingerprint == identity.fingerprint
    base = {"id": identity.node_id, "proto": str(PROTOCOL_VERSION), "port": "9"}
    with pytest.raises(MdnsError, match="no valid key fingerprint"):
        parse_service(_info(base))
    with pytest.raises(MdnsError, match="does not derive"):
        parse_service(_info(base | {"fp": Identity.generate().fingerprint}))
    with pytest.raises(ValueError, match="fingerprint"):
        MdnsDiscovery(
            node_id="x", name="n", port=1, model=None, capacity=0, interfaces=["127.0.0.1"],
            on_found=lambda _: None, on_removed=lambda _: None,
        )  # fmt: skip
