"""Reward: score each peer's answer to a chunk against the vote (the DELLM reward rule).

A peer whose answer agrees with the consensus earns ``+0.05`` plus a speed
bonus of up to ``+0.02`` (the fastest agreeing peer gets all of it, the
slowest none), others ``−0.05``. A peer that gave several samples agrees when
any of them does. When the vote has no winner, or the greedy anchor decided
because no answer had a strict plurality (``VoteResult.anchored``), nobody
is rewarded: there was no consensus to agree with, and rewarding agreement
with the greedy reply would only favour the peer that was asked greedily. The
fitness update itself is :func:`dellm_p2p.membership.fitness.apply_reward`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..protocol import RewardRecord
from .types import Candidate, VoteResult
from .vote import cluster_keys

if TYPE_CHECKING:
    from ..identity import Identity

AGREE = 0.05
DISAGREE = -0.05
SPEED_BONUS = 0.02


def chunk_rewards(candidates: Sequence[Candidate], result: VoteResult) -> dict[str, float]:
    """Reward per peer id for one chunk (see module docstring); empty without a winner or a consensus."""
    if result.answer is None or result.anchored or not candidates:
        return {}
    clusters = cluster_keys(candidates)  # the vote counted near-identical long answers as one

    def agrees(c: Candidate) -> bool:
        return c.answer is not None and clusters.get(c.answer, c.answer) == result.answer

    by_peer: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_peer.setdefault(candidate.peer_id, []).append(candidate)
    agreeing = {
        peer: min(c.latency_ms for c in cands if agrees(c))
        for peer, cands in by_peer.items()
        if any(map(agrees, cands))
    }
    fastest, slowest = min(agreeing.values(), default=0.0), max(agreeing.values(), default=0.0)
    span = slowest - fastest
    rewards = {}
    for peer in by_peer:
        if peer in agreeing:
            speed = 1.0 if span <= 0 else (slowest - agreeing[peer]) / span
            rewards[peer] = round(AGREE + SPEED_BONUS * speed, 6)
        else:
            rewards[peer] = DISAGREE
    return rewards


def reward_records(
    issuer: Identity,
    chunk_id: str,
    rewards: dict[str, float],
    *,
    models: Mapping[str, str | None] | None = None,
    kind: str | None = None,
) -> list[RewardRecord]:
    """Gossip-ready records for one chunk's rewards (peer id -> reward), signed by ``issuer``.

    Each gets a unique id, the issuer's next sequence number and the current
    time [s since the epoch]; see ``rewards`` in :mod:`dellm_p2p.protocol`.
    ``models`` (peer id -> the model it answered with) and ``kind`` (the
    chunk's operation) are carried when given, for the per-(model, kind) counts.
    """
    models = models or {}
    now = time.time()
    return [
        issuer.sign_reward(
            RewardRecord(
                id=uuid.uuid4().hex,
                issuer=issuer.node_id,
                seq=issuer.next_seq(),
                node_id=peer,
                reward=reward,
                chunk=chunk_id,
                ts=now,
                model=(models.get(peer) or None) and models[peer][:128],
                kind=kind[:16] if kind else None,
            )
        )
        for peer, reward in rewards.items()
    ]
