"""Per-(model, kind) agreement counts: reward records carry model and kind, every book counts them alike,
they persist, travel in ``peers`` replies, and seed a new peer of a known model."""

from __future__ import annotations

import json
import time

import pytest

from dellm_p2p.coordinator.reward import reward_records
from dellm_p2p.identity import Identity, verify_reward
from dellm_p2p.membership.fitness import MODEL_PRIOR_REWARDS, FitnessBook
from dellm_p2p.peer_table import PeerTable
from dellm_p2p.protocol import (
    MemberEntry,
    ModelFitness,
    Peers,
    RewardRecord,
    Rewards,
    decode,
    encode,
    reward_signing_bytes,
)


def member(identity: Identity, model: str | None = "m", url: str | None = "ws://127.0.0.1:9") -> MemberEntry:
    return MemberEntry(
        node_id=identity.node_id, url=url, name="n", model=model, capacity=4, heartbeat=1,
        public_key=identity.public_key,
    )  # fmt: skip


def test_model_and_kind_are_signed_and_a_record_without_them_signs_as_before():
    issuer = Identity.generate()
    [plain] = reward_records(issuer, "c1", {"peer": 0.05})
    [tagged] = reward_records(issuer, "c1", {"peer": 0.05}, models={"peer": "gemma-3-270m"}, kind="LOOKUP")
    assert plain.model is None and plain.kind is None
    assert (tagged.model, tagged.kind) == ("gemma-3-270m", "LOOKUP")
    assert verify_reward(issuer.public_key, plain) and verify_reward(issuer.public_key, tagged)
    # The bytes of an untagged record are the original layout: older records keep verifying.
    assert reward_signing_bytes(plain) == reward_signing_bytes(plain.model_copy(update={"model": None, "kind": None}))
    assert not verify_reward(issuer.public_key, tagged.model_copy(update={"model": "SmolLM2-135M-Instruct"}))
    assert not verify_reward(issuer.public_key, tagged.model_copy(update={"kind": "MATH"}))
    assert decode(encode(Rewards(records=[tagged]))).records == [tagged]


def test_book_counts_per_model_and_kind_and_persists_them(tmp_path):
    me = Identity.generate()
    path = tmp_path / "fitness.json"
    book = FitnessBook(me.node_id, PeerTable(me.node_id, "ws://127.0.0.1:1"), path=path)
    rewards = [("gemma", "LOOKUP", 0.05), ("gemma", "LOOKUP", 0.06), ("gemma", "LOOKUP", -0.05),
               ("smol", "LOOKUP", -0.05), ("smol", "MATH", 0.05), (None, "LOOKUP", 0.05)]  # fmt: skip
    for i, (model, kind, reward) in enumerate(rewards):
        book.apply(RewardRecord(id=f"r{i}", issuer="c", node_id=f"p{i}", reward=reward, model=model, kind=kind))
    assert book.model_counts == {("gemma", "LOOKUP"): (2, 3), ("smol", "LOOKUP"): (0, 1), ("smol", "MATH"): (1, 1)}
    assert book.model_posterior("gemma", "LOOKUP") == pytest.approx(3 / 5)  # Beta(1, 1) prior
    assert book.model_posterior("smol", "LOOKUP") == pytest.approx(1 / 3)
    assert book.model_posterior("never-seen", "LOOKUP") == 0.5 and book.model_posterior(None, "MATH") == 0.5
    assert book.model_rows()[0] == ("gemma", "LOOKUP", 2, 3)
    book._dirty = True
    book.save()
    assert ["gemma", "LOOKUP", 2, 3] in json.loads(path.read_text())["models"]
    again = FitnessBook(me.node_id, PeerTable(me.node_id, "ws://127.0.0.1:1"), path=path)
    assert again.model_counts == book.model_counts


def test_a_new_peer_of_a_known_model_starts_from_its_scaled_evidence():
    me, old, new, other = Identity.generate(), Identity.generate(), Identity.generate(), Identity.generate()
    table = PeerTable(me.node_id, "ws://127.0.0.1:1")
    book = FitnessBook(me.node_id, table, clock=time.time)
    table.observe(member(old, model="gemma"))
    for i in range(40):  # 30 of 40 agreeing, over two kinds
        kind = "LOOKUP" if i % 2 else "MATH"
        book.apply(RewardRecord(id=f"r{i}", issuer="c", node_id=old.node_id, reward=0.05 if i < 30 else -0.05,
                                model="gemma", kind=kind))  # fmt: skip
    assert book.model_prior("gemma") == (round(30 * MODEL_PRIOR_REWARDS / 40), MODEL_PRIOR_REWARDS)
    table.observe(member(new, model="gemma"))
    table.observe(member(other, model="unknown-model"))
    assert (table.get(new.node_id).agreed, table.get(new.node_id).rewards) == book.model_prior("gemma")
    assert (table.get(other.node_id).agreed, table.get(other.node_id).rewards) == (0, 0)
    assert (table.get(old.node_id).agreed, table.get(old.node_id).rewards) == (30, 40), "own evidence untouched"


def test_adopting_another_nodes_counts_keeps_the_better_evidenced_view():
    me = Identity.generate()
    book = FitnessBook(me.node_id, PeerTable(me.node_id, "ws://127.0.0.1:1"))
    book.model_counts[("gemma", "LOOKUP")] = (5, 10)
    book.adopt_model_counts([("gemma", "LOOKUP", 1, 4), ("smol", "LOOKUP", 9, 12), ("smol", "MATH", 20, 3)])
    assert book.model_counts[("gemma", "LOOKUP")] == (5, 10), "fewer rewards than ours: ignored"
    assert book.model_counts[("smol", "LOOKUP")] == (9, 12)
    assert book.model_counts[("smol", "MATH")] == (3, 3), "agreed never exceeds rewards"


def test_peers_reply_carries_model_rows_and_old_replies_still_decode():
    reply = Peers(node_id="n", models=[ModelFitness(model="gemma", kind="LOOKUP", agreed=2, rewards=3)])
    assert decode(encode(reply)).models == reply.models
    assert decode(encode(Peers(node_id="n"))).models == []


def test_dellm_peers_shows_model_fitness_per_kind_best_first():
    from rich.console import Console

    from dellm_p2p.cli.model_fitness import model_fitness_rows, model_fitness_table

    models = [
        ModelFitness(model="smol", kind="LOOKUP", agreed=10, rewards=30),
        ModelFitness(model="gemma", kind="LOOKUP", agreed=25, rewards=30),
        ModelFitness(model="smol", kind="MATH", agreed=3, rewards=3),
    ]
    rows = model_fitness_rows(models)
    assert [(r["kind"], r["model"]) for r in rows] == [("LOOKUP", "gemma"), ("LOOKUP", "smol"), ("MATH", "smol")]
    assert rows[0]["reliability"] == pytest.approx(26 / 32, abs=1e-4)
    console = Console(width=200, record=True)
    console.print(model_fitness_table(models))
    text = console.export_text()
    assert "gemma" in text and "25 / 30" in text and "0.812" in text
    assert model_fitness_table([]) is None
