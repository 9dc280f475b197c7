"""PeerTable bookkeeping and failure detection, with a hand-driven clock."""

from __future__ import annotations

import logging

import pytest

from dellm_p2p.identity import Identity
from dellm_p2p.peer_table import Observed, PeerState, PeerTable
from dellm_p2p.protocol import MemberEntry

_IDENTITIES: dict[str, Identity] = {}


def ident(name: str) -> Identity:
    """A key pair per test name ("b", "c", "me"), so node ids derive from keys as in the product."""
    if name not in _IDENTITIES:
        _IDENTITIES[name] = Identity.generate()
    return _IDENTITIES[name]


ME, B, C = ident("me").node_id, ident("b").node_id, ident("c").node_id
KEYS = {i.node_id: i.public_key for i in _IDENTITIES.values()}


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
    return PeerTable(ME, "ws://127.0.0.1:1", suspect_after_s=3, dead_after_s=8, forget_after_s=60, clock=clock)


def entry(node_id=None, heartbeat=1, incarnation=1000, url=None, public_key=None, **fields) -> MemberEntry:
    """A gossip entry for ``node_id`` (default B), carrying its public key."""
    node_id = node_id or B
    if public_key is None:
        public_key = KEYS.get(node_id) or ident(node_id).public_key
        node_id = node_id if node_id in KEYS else ident(node_id).node_id
    return MemberEntry(
        node_id=node_id, url=url or f"ws://127.0.0.1:{1000 + sum(map(ord, node_id))}", public_key=public_key,
        incarnation=incarnation, heartbeat=heartbeat, **fields,
    )  # fmt: skip


def test_new_entry_is_added_alive(table):
    assert table.observe(entry(model="m", capacity=4))
    peer = table.get(B)
    assert peer.state is PeerState.ALIVE and peer.model == "m" and peer.capacity == 4


def test_only_newer_versions_win(table, clock):
    table.observe(entry(heartbeat=5))
    clock.now += 2
    assert not table.observe(entry(heartbeat=5))
    assert not table.observe(entry(heartbeat=4))
    assert table.get(B).last_seen == 100.0
    assert table.observe(entry(heartbeat=6))
    assert table.get(B).last_seen == 102.0


def test_silence_makes_suspect_then_dead_then_forgotten(table, clock):
    table.observe(entry())
    clock.now += 3.5
    assert table.sweep() == [(B, PeerState.SUSPECT)]
    assert [p.node_id for p in table.alive()] == [B], "a suspect peer may still get work"
    clock.now += 5
    assert table.sweep() == [(B, PeerState.DEAD)]
    assert table.alive() == []
    clock.now += 61
    table.sweep()
    assert B not in table


def test_stale_gossip_does_not_revive_a_dead_peer(table, clock):
    table.observe(entry(heartbeat=7))
    clock.now += 9
    table.sweep()
    assert not table.observe(entry(heartbeat=7))
    assert table.get(B).state is PeerState.DEAD


def test_restart_rejoins_with_same_id(table, clock):
    table.observe(entry(heartbeat=50, incarnation=1000))
    clock.now += 9
    table.sweep()
    assert table.observe(entry(heartbeat=1, incarnation=2000))
    assert table.get(B).state is PeerState.ALIVE


def test_left_entry_drops_peer_at_once_and_is_gossiped(table):
    table.observe(entry(heartbeat=3))
    assert table.observe(entry(heartbeat=4, state="left"))
    assert table.get(B).state is PeerState.LEFT
    assert table.alive() == []
    assert [e.state for e in table.digest()] == ["left"]


def test_unknown_left_entry_is_ignored(table):
    assert not table.observe(entry(state="left"))
    assert len(table) == 0


def test_digest_passes_on_suspects_but_not_the_dead(table, clock):
    table.observe(entry(B))
    clock.now += 4
    table.observe(entry(C))
    table.sweep()
    assert {e.node_id for e in table.digest()} == {B, C}
    clock.now += 5
    table.sweep()
    assert [e.node_id for e in table.digest()] == [C]


def test_observe_tells_joins_from_heartbeats(table, clock):
    assert table.observe(entry(heartbeat=1)) is Observed.JOINED
    assert table.observe(entry(heartbeat=2)) is Observed.UPDATED
    assert table.observe(entry(heartbeat=2)) is Observed.NOTHING
    clock.now += 9
    table.sweep()
    assert table.observe(entry(heartbeat=3)) is Observed.JOINED, "back from the dead"
    assert table.observe_all([entry(C), entry(heartbeat=4)]) is Observed.JOINED


def test_own_id_from_elsewhere_is_a_duplicate(table, caplog):
    with caplog.at_level(logging.ERROR):
        assert not table.observe(entry(ME, url="ws://127.0.0.1:9"))
        table.observe(entry(ME, url="ws://127.0.0.1:9", heartbeat=2))
    assert table.duplicates == {ME}
    assert len([r for r in caplog.records if "duplicate node id" in r.message]) == 1
    assert not table.observe(entry(ME, url="ws://127.0.0.1:1"))  # our own entry echoed back
    assert len(table) == 0


def test_rtt_is_an_ewma_and_touch_revives_suspect(table, clock):
    table.observe(entry())
    table.record_rtt(B, 10.0)
    table.record_rtt(B, 20.0)
    assert table.get(B).rtt_ms == pytest.approx(0.7 * 10 + 0.3 * 20)
    clock.now += 4
    table.sweep()
    table.record_rtt(B, 10.0)
    assert table.get(B).state is PeerState.ALIVE


def test_fitness_and_rtt_survive_heartbeat_updates(table):
    table.observe(entry(heartbeat=1))
    table.get(B).fitness = 0.8
    table.record_rtt(B, 5.0)
    table.observe(entry(heartbeat=2))
    assert table.get(B).fitness == 0.8 and table.get(B).rtt_ms == 5.0


def test_table_size_is_bounded(clock):
    small = PeerTable(ME, max_peers=3, clock=clock)
    assert sum(bool(small.observe(entry(f"n{i}"))) for i in range(10)) == 3
    small.add_candidate("extra", "ws://127.0.0.1:5", "mdns")
    assert len(small) == 3


def test_candidate_from_mdns_is_replaced_by_gossip(table):
    table.add_candidate(B, "ws://127.0.0.1:98", "mdns", model="m")
    assert table.get(B).source == "mdns"
    assert table.observe(entry(B, heartbeat=1))
    assert table.get(B).source == "mdns" and table.get(B).incarnation == 1000


def test_rows_report_state_and_age(table, clock):
    table.observe(entry())
    clock.now += 1.5
    (row,) = table.rows()
    assert row.node_id == B and row.state == "alive" and row.last_seen_s == pytest.approx(1.5)


def test_entry_whose_id_does_not_derive_from_its_key_is_dropped_counted_and_logged_once(table, caplog):
    forged = entry(B, public_key=ident("c").public_key)  # B's id with C's key
    with caplog.at_level(logging.WARNING):
        assert table.observe(forged) is Observed.NOTHING
        assert table.observe(entry(B, heartbeat=2, public_key=ident("c").public_key)) is Observed.NOTHING
    assert B not in table and table.identity_rejected == 2
    assert len([r for r in caplog.records if "does not derive from its public key" in r.message]) == 1
    assert table.observe(entry(B)) is Observed.JOINED, "the genuine entry still gets in"
    assert table.get(B).public_key == ident("b").public_key
    assert not table.observe(entry(B, heartbeat=5, public_key=ident("c").public_key)), "a known key is never replaced"
    assert table.get(B).public_key == ident("b").public_key and table.get(B).heartbeat == 1


def test_candidate_with_mismatched_key_is_dropped_and_a_keyless_one_is_not_gossiped(table):
    table.add_candidate(B, "ws://127.0.0.1:98", "inbound", public_key=ident("c").public_key)
    assert B not in table and table.identity_rejected == 1
    table.add_candidate(B, "ws://127.0.0.1:98", "mdns")  # mDNS gives no key
    assert table.get(B).public_key is None and table.digest() == [], "an entry must carry a key"
    table.add_candidate(B, "ws://127.0.0.1:98", "inbound", public_key=ident("b").public_key)  # its hello
    assert table.get(B).public_key == ident("b").public_key
    assert [e.node_id for e in table.digest()] == [B]


def test_coordinator_member_without_url_is_known_gossiped_but_not_reachable(table):
    assert table.observe(entry(C, url="", model=None).model_copy(update={"url": None})) is Observed.JOINED
    assert table.get(C).url is None and table.get(C).state is PeerState.ALIVE
    assert table.alive() == [], "gossip and routing never contact a url-less member"
    (sent,) = table.digest()
    assert sent.url is None and sent.public_key == ident("c").public_key
    table.observe(entry(B))
    assert [p.node_id for p in table.alive()] == [B]


# Beats: the compact liveness part of an entry.


def test_beats_list_what_digest_lists(table, clock):
    table.observe(entry(heartbeat=4, in_flight=2))
    table.observe(entry(C, heartbeat=1))
    clock.now += 9
    table.sweep()  # both dead
    table.observe(entry(heartbeat=5, in_flight=2))  # B is back
    assert table.beats() == [(B, 1000, 5, 2, False)]
    assert [e.node_id for e in table.entries_for([B, C, "nobody"])] == [B], "dead and unknown members are skipped"


def test_beat_of_known_member_advances_liveness(table, clock):
    table.observe(entry(heartbeat=1))
    clock.now += 2
    assert table.observe_beats([(B, 1000, 2, 7, False)]) == (Observed.UPDATED, [])
    peer = table.get(B)
    assert (peer.heartbeat, peer.in_flight, peer.last_seen) == (2, 7, clock.now)
    assert table.observe_beats([(B, 1000, 2, 0, False), (B, 999, 50, 0, False)]) == (Observed.NOTHING, []), "stale"


def test_beat_of_unknown_or_restarted_member_is_asked_for(table):
    table.observe(entry(heartbeat=3))
    table.add_candidate(C, "ws://127.0.0.1:9", "mdns")  # known, but without a key
    news, want = table.observe_beats([(B, 2000, 1, 0, False), (C, 1000, 1, 0, False), ("nz", 5, 1, 0, False)])
    assert news is Observed.NOTHING and want == [B, C, "nz"]
    assert table.get(B).heartbeat == 3 and "nz" not in table, "nothing applied before the full entry arrives"
    assert table.observe_beats([("ngone", 5, 1, 0, True)]) == (Observed.NOTHING, []), "a goodbye of a stranger"


def test_beats_carry_goodbye_and_revival(table, clock):
    table.observe(entry(heartbeat=1))
    assert table.observe_beats([(B, 1000, 2, 0, True)])[0] is Observed.UPDATED
    assert table.get(B).state is PeerState.LEFT
    assert table.observe_beats([(B, 1000, 3, 0, False)])[0] is Observed.JOINED
    assert table.get(B).state is PeerState.ALIVE


def test_beat_with_our_id_is_asked_for_only_from_another_incarnation(table):
    assert table.observe_beats([(ME, 77, 1, 0, False)], self_incarnation=77) == (Observed.NOTHING, [])
    assert table.observe_beats([(ME, 78, 1, 0, False)], self_incarnation=77) == (Observed.NOTHING, [ME])


def test_a_member_swim_declares_dead_is_kept_dead_for_forget_after_s(table, clock):
    """SWIM hears from a member once per probe pass: a death long after the last contact is still shown."""
    bob = ident("bob")
    fields = dict(url="ws://b:1", public_key=bob.public_key, name="b", model="m", capacity=1, incarnation=1)
    table.apply_member(bob.node_id, PeerState.ALIVE, **fields)
    clock.now += 100  # no contact since: its probes come once per pass
    assert table.apply_member(bob.node_id, PeerState.DEAD, **fields) is PeerState.ALIVE
    clock.now += 59
    table.sweep()
    row = table.get(bob.node_id)
    assert row is not None and row.state is PeerState.DEAD
    assert row.row(clock.now).last_seen_s == 159  # silent since the last contact
    assert row not in table.alive()
    clock.now += 2
    table.sweep()
    assert table.get(bob.node_id) is None
