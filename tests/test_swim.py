"""The SWIM state machine (dellm_p2p.membership.swim), sans I/O: a fake clock and an in-memory network."""

from __future__ import annotations

import random

import pytest

from dellm_p2p.identity import Identity
from dellm_p2p.membership.swim import (
    ALIVE,
    DEAD,
    LEFT,
    SUSPECT,
    SYNC_BUCKETS,
    Acked,
    BroadcastQueue,
    MemberChanged,
    RewardsReceived,
    SignedEntry,
    Suspicion,
    Swim,
    SwimConfig,
    retransmit_limit,
    suspicion_timeout,
    sync_bucket,
)

_IDS = [Identity.generate() for _ in range(12)]


class Net:
    """Swim cores wired by URL; ``step`` advances the fake clock by ``dt`` and delivers every message at once."""

    def __init__(self, n: int, config: SwimConfig | None = None, seed: int = 1, drop: float = 0.0):
        self.now = 0.0
        self.rng = random.Random(seed)
        self.drop = drop
        self.down: set[str] = set()
        self.cores: dict[str, Swim] = {}
        for i in range(n):
            url = f"ws://sim:{i}"
            self.cores[url] = Swim(
                _IDS[i], url=url, name=f"n{i}", incarnation=1000, config=config or SwimConfig(), rng=random.Random(i)
            )
        self.events: dict[str, list] = {url: [] for url in self.cores}
        self.sent = 0
        for core in self.cores.values():  # everyone starts knowing everyone (as after a push-pull join)
            for other in self.cores.values():
                if other is not core:
                    core.apply_entry(other.me, 0.0)
            core.take_events()

    def url(self, i: int) -> str:
        return f"ws://sim:{i}"

    def core(self, i: int) -> Swim:
        return self.cores[self.url(i)]

    def deliver(self) -> None:
        for _ in range(20):  # replies of replies
            pending = []
            for url, core in self.cores.items():
                if url in self.down:
                    core.take_sends()
                    continue
                pending += [(url, s) for s in core.take_sends()]
                self.events[url] += core.take_events()
            if not pending:
                return
            for src, send in pending:
                self.sent += 1
                dest = send.to
                if dest in self.down or src in self.down or self.rng.random() < self.drop:
                    continue
                self.cores[dest].handle(send.message, src, self.now)

    def step(self, dt: float = 0.05) -> None:
        self.now += dt
        for url, core in self.cores.items():
            if url not in self.down:
                core.tick(self.now)
        self.deliver()

    def run(self, seconds: float, dt: float = 0.05) -> None:
        for _ in range(round(seconds / dt)):
            self.step(dt)

    def states(self, i: int) -> set[str]:
        """What every other live core thinks of node i."""
        node_id = self.core(i).node_id
        return {c.state_of(node_id) for u, c in self.cores.items() if u not in self.down and c.node_id != node_id}


def test_signed_entry_round_trip_and_forgery():
    entry = SignedEntry.signed(_IDS[0], url="ws://a:1", name="a", model=None, capacity=2, incarnation=5, left=False)
    assert entry.verify()
    again = SignedEntry.from_wire(entry.to_wire())
    assert again == entry and again.verify()
    forged = SignedEntry.from_wire([*entry.to_wire()[:3], "ws://evil:1", *entry.to_wire()[4:]])
    assert forged is not None and not forged.verify()
    assert SignedEntry.from_wire(["a", "x"]) is None
    assert SignedEntry.from_wire([*entry.to_wire()[:9], b"short"]) is None


def test_quiet_network_stays_alive_and_queues_drain():
    net = Net(6)
    net.run(10)
    for i in range(6):
        assert net.states(i) == {ALIVE}
    assert all(len(c.queue) == 0 for c in net.cores.values())
    sent = net.sent
    net.run(10)
    # Steady state: one ping and one ack per node per period, nothing else.
    per_node_per_period = (net.sent - sent) / 6 / (10 / 0.5)
    assert per_node_per_period == pytest.approx(2.0, abs=0.2)


def test_dead_node_suspected_then_dead_everywhere():
    cfg = SwimConfig()
    net = Net(8, cfg)
    net.run(2)
    net.down.add(net.url(3))
    t0 = net.now
    while SUSPECT not in net.states(3) and net.now - t0 < 10:
        net.step()
    assert SUSPECT in net.states(3)
    while net.states(3) != {DEAD} and net.now - t0 < 30:
        net.step()
    assert net.states(3) == {DEAD}
    # Bounded by a pass over the members, the max suspicion timeout and dissemination.
    lo = suspicion_timeout(cfg.suspicion_mult, 8, cfg.probe_interval_s)
    assert net.now - t0 < 8 * cfg.probe_interval_s + cfg.suspicion_max_mult * lo + 2
    assert all(net.core(i).state_of(net.core(3).node_id) == DEAD for i in range(8) if i != 3)


def test_indirect_probe_saves_a_member_behind_a_broken_link():
    net = Net(5)
    a, b = net.url(0), net.url(1)
    original = net.deliver

    def deliver_without_link():
        # 0 and 1 cannot talk directly; others relay.
        for _ in range(20):
            pending = []
            for url, core in net.cores.items():
                pending += [(url, s) for s in core.take_sends()]
                net.events[url] += core.take_events()
            if not pending:
                return
            for src, send in pending:
                if {src, send.to} == {a, b}:
                    continue
                net.cores[send.to].handle(send.message, src, net.now)

    net.deliver = deliver_without_link
    net.run(20)
    net.deliver = original
    assert net.core(0).state_of(net.core(1).node_id) == ALIVE
    assert net.core(0).counters["probes_failed"] == 0


def test_suspected_member_refutes_with_higher_incarnation():
    net = Net(4)
    target = net.core(2)
    before = target.me.incarnation
    net.core(0).on_suspect(target.node_id, before, net.core(0).node_id, net.now)
    assert net.core(0).state_of(target.node_id) == SUSPECT
    net.run(3)
    assert target.me.incarnation == before + 1
    assert target.counters["member_refuted"] == 1
    assert target.awareness >= 0
    assert net.states(2) == {ALIVE}


def test_dead_claim_is_refuted_when_it_reaches_the_member():
    net = Net(4)
    target = net.core(1)
    net.core(0).on_dead(target.node_id, target.me.incarnation, net.core(0).node_id, net.now)
    assert net.core(0).state_of(target.node_id) == DEAD
    net.run(4)
    assert net.states(1) == {ALIVE}
    assert target.me.incarnation > 1000


def test_old_claims_are_ignored_after_refutation():
    net = Net(3)
    core, target = net.core(0), net.core(1)
    target.update_self(model="m")
    net.run(2)
    assert core.members[target.node_id].entry.model == "m"
    core.on_suspect(target.node_id, 1000, "someone", net.now)  # about the incarnation before the change
    assert core.state_of(target.node_id) == ALIVE


def test_suspicion_timeout_shrinks_with_confirmations():
    timer = Suspicion(started=0.0, min_s=2.0, max_s=8.0, k=2, claimants={"a"})
    assert timer.timeout() == pytest.approx(8.0)
    timer.claimants.add("b")
    mid = timer.timeout()
    assert 2.0 < mid < 8.0
    timer.claimants.add("c")
    assert timer.timeout() == pytest.approx(2.0)
    timer.claimants.add("d")
    assert timer.timeout() == pytest.approx(2.0)


def test_suspicion_timeout_grows_with_log_n():
    assert suspicion_timeout(4, 5, 1.0) == pytest.approx(4.0)  # max(1, log10 n)
    assert suspicion_timeout(4, 100, 1.0) == pytest.approx(8.0)
    assert suspicion_timeout(4, 1000, 0.5) == pytest.approx(6.0)


def test_confirmations_from_independent_claimants_shorten_suspicion():
    net = Net(6)
    core = net.core(0)
    victim = net.core(5).node_id
    inc = core.members[victim].incarnation
    core.on_suspect(victim, inc, "x", 0.0)
    lone = core.suspicions[victim].deadline()
    core.on_suspect(victim, inc, "y", 0.0)
    assert core.suspicions[victim].deadline() < lone
    core.on_suspect(victim, inc, "y", 0.0)  # the same claimant again is no confirmation
    assert len(core.suspicions[victim].claimants) == 2


def test_awareness_scales_timeouts_and_recovers():
    net = Net(5)
    core = net.core(0)
    # Every relay and the target silent: no nacks come, so the prober blames itself too.
    for i in range(1, 5):
        net.down.add(net.url(i))
    net.run(3)
    assert core.awareness > 0
    slow = core.awareness
    assert core._scaled(1.0) == slow + 1
    net.down.clear()
    for i in range(1, 5):  # they come back and refute whatever they were suspected of
        net.core(i).tick(net.now)
    net.run(20)
    assert core.awareness < slow


def test_nack_from_relay_when_target_is_silent():
    net = Net(4)
    net.run(1)
    net.down.add(net.url(3))
    prober = net.core(0)
    # Force the next probe onto node 3.
    prober._order, prober._index = [net.core(3).node_id], 0
    prober._probe, prober._next_probe = None, net.now
    awareness = prober.awareness
    net.run(prober.config.probe_interval_s + 0.1)
    assert prober.state_of(net.core(3).node_id) == SUSPECT
    assert prober.awareness == awareness  # the relays nacked: the target, not us, is slow


def test_left_member_is_left_everywhere_and_its_alive_entry_replayed_is_dropped():
    net = Net(4)
    leaver = net.core(2)
    old = leaver.me
    leaver.leave()
    net.run(2)
    net.down.add(net.url(2))
    assert net.states(2) == {LEFT}
    core = net.core(0)
    stale = core.counters["member_stale"]  # copies of its alive entry still in flight count too
    assert core.apply_entry(old, net.now) is False
    assert core.counters["member_stale"] == stale + 1  # an older incarnation
    same_inc = SignedEntry.signed(
        _IDS[2], url=old.url, name=old.name, model=None, capacity=0, incarnation=leaver.me.incarnation, left=False
    )
    assert core.apply_entry(same_inc, net.now) is False
    assert core.counters["member_replayed"] == 1
    assert core.state_of(leaver.node_id) == LEFT


def test_forged_stale_and_replayed_entries_are_dropped_and_counted():
    net = Net(3)
    core, victim = net.core(0), net.core(1)
    evil = Identity.generate()
    # Forged: the victim's id with a new URL, signed by someone else's key (or not at all).
    stolen = SignedEntry(
        victim.node_id, "ws://evil:1", victim.me.public_key, "x", None, 0, victim.me.incarnation + 5, False, b"\0" * 64
    )
    assert core.apply_entry(stolen, net.now) is False
    other_key = SignedEntry.signed(
        evil, url="ws://evil:1", name="x", model=None, capacity=0, incarnation=victim.me.incarnation + 5, left=False
    )
    assert (
        core.apply_entry(
            SignedEntry(
                victim.node_id,
                *list(other_key.to_wire()[3:4]),
                evil.public_key,
                "x",
                None,
                0,
                other_key.incarnation,
                False,
                other_key.signature,
            ),
            net.now,
        )
        is False
    )
    assert core.counters["member_forged"] == 2
    assert core.members[victim.node_id].entry.url == victim.me.url
    # Stale: an older incarnation of a known member.
    old = victim.me
    victim.update_self(capacity=4)
    assert core.apply_entry(victim.me, net.now) is True
    assert core.apply_entry(old, net.now) is False
    assert core.counters["member_stale"] == 1
    # Replayed: a forgotten member's entry at or below its tombstone.
    core.on_dead(victim.node_id, victim.me.incarnation, core.node_id, net.now)
    core.tick(net.now + core.config.forget_after_s + 1)
    assert victim.node_id not in core.members
    assert core.apply_entry(victim.me, net.now + 62) is False
    assert core.counters["member_replayed"] == 1
    # Our own id from another key is forged too.
    fake_me = SignedEntry.signed(evil, url="ws://evil:2", name="", model=None, capacity=0, incarnation=1, left=False)
    assert core.apply_entry(_with_id(fake_me, core.node_id), net.now) is False
    assert core.counters["member_forged"] == 3


def _with_id(entry: SignedEntry, node_id: str) -> SignedEntry:
    return SignedEntry(
        node_id,
        entry.url,
        entry.public_key,
        entry.name,
        entry.model,
        entry.capacity,
        entry.incarnation,
        entry.left,
        entry.signature,
    )


def test_restart_with_higher_incarnation_revives_a_dead_member():
    net = Net(4)
    core = net.core(0)
    victim = net.core(3)
    core.on_dead(victim.node_id, victim.me.incarnation, core.node_id, net.now)
    same = victim.me
    assert core.apply_entry(same, net.now) is False  # alive at the incarnation declared dead: must refute
    restarted = SignedEntry.signed(
        _IDS[3], url=same.url, name=same.name, model=None, capacity=0, incarnation=same.incarnation + 7000, left=False
    )
    assert core.apply_entry(restarted, net.now) is True
    assert core.state_of(victim.node_id) == ALIVE


def test_newcomer_learned_from_piggyback_spreads_to_everyone():
    net = Net(8)
    newcomer = Swim(_IDS[8], url="ws://sim:new", incarnation=5, rng=random.Random(9))
    net.cores["ws://sim:new"] = newcomer
    net.events["ws://sim:new"] = []
    newcomer.apply_entry(net.core(0).me, 0.0)  # it knows only node 0 (a bootstrap push-pull)
    net.run(5)
    assert all(c.state_of(newcomer.node_id) == ALIVE for u, c in net.cores.items() if c is not newcomer)
    assert len(newcomer.members) == 8 or newcomer.size() >= 2


def test_direct_ack_gives_rtt_and_load():
    net = Net(2)
    net.core(1).load = 3
    net.run(1)
    acks = [e for e in net.events[net.url(0)] if isinstance(e, Acked)]
    assert acks and acks[0].load == 3 and acks[0].rtt_s >= 0


def test_broadcast_queue_limits_retransmits_and_replaces_by_key():
    q = BroadcastQueue()
    q.put("a", ["s", "a", 1, "x"])
    q.put("a", ["d", "a", 1, "x"])  # replaces
    q.put("b", ["s", "b", 1, "x"])
    sent = [q.take(10_000, 3) for _ in range(5)]
    assert [len(s) for s in sent] == [2, 2, 2, 0, 0]
    assert sent[0][0][0] == "d" or sent[0][1][0] == "d"
    assert retransmit_limit(4, 9) == 4 and retransmit_limit(4, 500) == 12


def test_broadcast_queue_respects_byte_budget():
    q = BroadcastQueue()
    for i in range(50):
        q.put(str(i), ["s", "n" * 17, i, "c" * 17])
    first = q.take(200, 10)
    assert 0 < len(first) < 50


def test_push_pull_digest_sends_only_what_the_peer_lacks():
    net = Net(4)
    a, b = net.core(0), net.core(1)
    assert a.newer_than(b.digest()) == []
    victim = net.core(3).node_id
    a.on_suspect(victim, a.members[victim].incarnation, a.node_id, net.now)
    changes = a.newer_than(b.digest())
    assert [c[0] for c in changes] == ["s"]
    fresh = Swim(_IDS[9], url="ws://sim:9", incarnation=1)
    full = a.newer_than(fresh.digest())
    assert {c[1] for c in full if c[0] == "a"} == {a.node_id} | set(a.members)
    fresh.apply_changes(full, 0.0, sender=a.node_id, sync=True)
    assert fresh.state_of(victim) == SUSPECT
    # A dead state from a push-pull counts as a suspicion only.
    b.on_dead(victim, b.members[victim].incarnation, b.node_id, net.now)
    other = Swim(_IDS[10], url="ws://sim:10", incarnation=1)
    other.apply_changes(b.newer_than(other.digest()), 0.0, sender=b.node_id, sync=True)
    assert other.state_of(victim) == SUSPECT


def test_bucket_hashes_summarise_the_view_and_scope_the_push_pull():
    net = Net(8)
    a, b = net.core(0), net.core(1)
    assert a.bucket_hashes() == b.bucket_hashes(), "the same view, the same summary"
    assert a.differing_buckets(b.bucket_hashes()) == set()
    assert all(len(h) == 8 for h in a.bucket_hashes()) and len(a.bucket_hashes()) == SYNC_BUCKETS
    victim = net.core(5).node_id
    a.on_suspect(victim, a.members[victim].incarnation, a.node_id, net.now)
    scope = b.differing_buckets(a.bucket_hashes())
    assert scope == {sync_bucket(victim)}
    rows = b.digest(scope)
    assert {row[0] for row in rows} == {n for n in [b.node_id, *b.members] if sync_bucket(n) in scope}
    # Only members of the differing buckets are compared: b lacks the suspicion, nothing else.
    assert a.newer_than(rows, scope) == [["s", victim, a.members[victim].incarnation, a.node_id]]
    b.apply_changes(a.newer_than(rows, scope), net.now, sender=a.node_id, sync=True)
    assert b.state_of(victim) == SUSPECT and a.differing_buckets(b.bucket_hashes()) == set()
    assert b.differing_buckets([b"x"] * 3) is None and b.differing_buckets("junk") is None


def test_a_newcomer_learns_everyone_through_a_scoped_push_pull():
    net = Net(6)
    a = net.core(0)
    fresh = Swim(_IDS[9], url="ws://sim:9", incarnation=1)
    scope = a.differing_buckets(fresh.bucket_hashes())  # the reply to its first frame: rows of these buckets
    first_reply = a.digest(scope)
    to_a = fresh.newer_than(first_reply, fresh.differing_buckets(a.bucket_hashes()))
    assert [c[1] for c in to_a] == [fresh.node_id]
    a.apply_changes(to_a, 0.0, sender=fresh.node_id, sync=True)
    fresh.apply_changes(a.newer_than(fresh.digest(scope), scope), 0.0, sender=a.node_id, sync=True)
    assert set(fresh.members) == {a.node_id} | set(a.members) - {fresh.node_id}
    assert fresh.differing_buckets(a.bucket_hashes()) == set()


def test_a_node_that_missed_a_refutation_gets_the_entry_from_the_member_it_gossips_dead_to():
    net = Net(4)
    observer, member = net.core(0), net.core(1)
    old = member.me.incarnation
    member._resign(old + 1)  # refuted earlier; the observer never heard (a lost datagram)
    member.take_sends()
    observer.on_dead(member.node_id, old, observer.node_id, net.now)
    assert observer.state_of(member.node_id) == DEAD
    # The observer gossips its claim to the recently dead member (as _gossip does); the member answers.
    claim = ["d", member.node_id, old, observer.node_id]
    member.handle({"t": "gossip", "from": observer.node_id, "c": [claim]}, net.url(0), net.now)
    assert member.me.incarnation == old + 1, "a claim about an older incarnation is not refuted again"
    (answer,) = member.take_sends()
    assert answer.to == net.url(0) and answer.message["c"] == [member.me.to_wire()]
    observer.handle(answer.message, net.url(1), net.now)
    assert observer.state_of(member.node_id) == ALIVE
    # Once per period per sender: a second copy of the claim right away gets no second answer.
    member.handle({"t": "gossip", "from": observer.node_id, "c": [claim]}, net.url(0), net.now)
    assert member.take_sends() == []


def test_no_false_positives_with_five_percent_loss():
    net = Net(10, drop=0.05, seed=7)
    net.run(60)
    for i in range(10):
        assert DEAD not in net.states(i)
    changed = [e for evs in net.events.values() for e in evs if isinstance(e, MemberChanged) and e.state == DEAD]
    assert changed == []


def test_reward_records_ride_along_a_bounded_number_of_times():
    net = Net(6)
    net.run(1)
    net.core(0).broadcast_reward({"id": "r1", "x": 1})
    got = dict.fromkeys(net.cores, 0)
    seen = {net.url(0)}
    for _ in range(100):
        net.step()
        for url, events in net.events.items():
            for event in events:
                if isinstance(event, RewardsReceived):
                    if url not in seen:  # the driver re-broadcasts a record it applied, once
                        seen.add(url)
                        net.cores[url].broadcast_reward(event.records[0])
                    got[url] += len(event.records)
            events.clear()
    assert all(got[net.url(i)] >= 1 for i in range(1, 6))
    limit = retransmit_limit(4, 6)
    assert sum(got.values()) <= 6 * limit  # duplicates per node per record: about the retransmit limit
