"""PeerTable bookkeeping and failure detection, with a hand-driven clock."""

from __future__ import annotations

import logging

import pytest

from dellm_p2p.peer_table import Observed, PeerState, PeerTable
from dellm_p2p.protocol import MemberEntry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(clock) -> PeerTable:
    return PeerTable("me", "ws://127.0.0.1:1", suspect_after_s=3, dead_after_s=8, forget_after_s=60, clock=clock)


def entry(node_id="b", heartbeat=1, incarnation=1000, url=None, **fields) -> MemberEntry:
    return MemberEntry(
        node_id=node_id, url=url or f"ws://127.0.0.1:{ord(node_id[0])}", incarnation=incarnation, heartbeat=heartbeat,
        **fields,
    )  # fmt: skip


def test_new_entry_is_added_alive(table):
    assert table.observe(entry(model="m", capacity=4))
    peer = table.get("b")
    assert peer.state is PeerState.ALIVE and peer.model == "m" and peer.capacity == 4


def test_only_newer_versions_win(table, clock):
    table.observe(entry(heartbeat=5))
    clock.now += 2
    assert not table.observe(entry(heartbeat=5))
    assert not table.observe(entry(heartbeat=4))
    assert table.get("b").last_seen == 100.0
    assert table.observe(entry(heartbeat=6))
    assert table.get("b").last_seen == 102.0


def test_silence_makes_suspect_then_dead_then_forgotten(table, clock):
    table.observe(entry())
    clock.now += 3.5
    assert table.sweep() == [("b", PeerState.SUSPECT)]
    assert [p.node_id for p in table.alive()] == ["b"], "a suspect peer may still get work"
    clock.now += 5
    assert table.sweep() == [("b", PeerState.DEAD)]
    assert table.alive() == []
    clock.now += 61
    table.sweep()
    assert "b" not in table


def test_stale_gossip_does_not_revive_a_dead_peer(table, clock):
    table.observe(entry(heartbeat=7))
    clock.now += 9
    table.sweep()
    assert not table.observe(entry(heartbeat=7))
    assert table.get("b").state is PeerState.DEAD


def test_restart_rejoins_with_same_id(table, clock):
    table.observe(entry(heartbeat=50, incarnation=1000))
    clock.now += 9
    table.sweep()
    assert table.observe(entry(heartbeat=1, incarnation=2000))
    assert table.get("b").state is PeerState.ALIVE


def test_left_entry_drops_peer_at_once_and_is_gossiped(table):
    table.observe(entry(heartbeat=3))
    assert table.observe(entry(heartbeat=4, state="left"))
    assert table.get("b").state is PeerState.LEFT
    assert table.alive() == []
    assert [e.state for e in table.digest()] == ["left"]


def test_unknown_left_entry_is_ignored(table):
    assert not table.observe(entry(state="left"))
    assert len(table) == 0


def test_digest_passes_on_suspects_but_not_the_dead(table, clock):
    table.observe(entry("b"))
    clock.now += 4
    table.observe(entry("c"))
    table.sweep()
    assert {e.node_id for e in table.digest()} == {"b", "c"}
    clock.now += 5
    table.sweep()
    assert [e.node_id for e in table.digest()] == ["c"]


def test_observe_tells_joins_from_heartbeats(table, clock):
    assert table.observe(entry(heartbeat=1)) is Observed.JOINED
    assert table.observe(entry(heartbeat=2)) is Observed.UPDATED
    assert table.observe(entry(heartbeat=2)) is Observed.NOTHING
    clock.now += 9
    table.sweep()
    assert table.observe(entry(heartbeat=3)) is Observed.JOINED, "back from the dead"
    assert table.observe_all([entry("c"), entry(heartbeat=4)]) is Observed.JOINED


def test_own_id_from_elsewhere_is_a_duplicate(table, caplog):
    with caplog.at_level(logging.ERROR):
        assert not table.observe(entry("me", url="ws://127.0.0.1:9"))
        table.observe(entry("me", url="ws://127.0.0.1:9", heartbeat=2))
    assert table.duplicates == {"me"}
    assert len([r for r in caplog.records if "duplicate node id" in r.message]) == 1
    assert not table.observe(entry("me", url="ws://127.0.0.1:1"))  # our own entry echoed back
    assert len(table) == 0


def test_rtt_is_an_ewma_and_touch_revives_suspect(table, clock):
    table.observe(entry())
    table.record_rtt("b", 10.0)
    table.record_rtt("b", 20.0)
    assert table.get("b").rtt_ms == pytest.approx(0.7 * 10 + 0.3 * 20)
    clock.now += 4
    table.sweep()
    table.record_rtt("b", 10.0)
    assert table.get("b").state is PeerState.ALIVE


def test_fitness_and_rtt_survive_heartbeat_updates(table):
    table.observe(entry(heartbeat=1))
    table.get("b").fitness = 0.8
    table.record_rtt("b", 5.0)
    table.observe(entry(heartbeat=2))
    assert table.get("b").fitness == 0.8 and table.get("b").rtt_ms == 5.0


def test_table_size_is_bounded(clock):
    small = PeerTable("me", max_peers=3, clock=clock)
    assert sum(bool(small.observe(entry(f"n{i}"))) for i in range(10)) == 3
    small.add_candidate("extra", "ws://127.0.0.1:5", "mdns")
    assert len(small) == 3


def test_candidate_from_mdns_is_replaced_by_gossip(table):
    table.add_candidate("b", "ws://127.0.0.1:98", "mdns", model="m")
    assert table.get("b").source == "mdns"
    assert table.observe(entry("b", heartbeat=1))
    assert table.get("b").source == "mdns" and table.get("b").incarnation == 1000


def test_rows_report_state_and_age(table, clock):
    table.observe(entry())
    clock.now += 1.5
    (row,) = table.rows()
    assert row.node_id == "b" and row.state == "alive" and row.last_seen_s == pytest.approx(1.5)
