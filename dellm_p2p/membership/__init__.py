"""Membership, failure detection, dissemination and fitness gossip, in one package.

* :mod:`.swim` — the SWIM failure detector with Lifeguard's refinements
  (Das, Gupta and Motivala 2002; Dadgar et al. 2018), sans-I/O: messages and
  a clock in, messages and events out; no sockets, no asyncio.
* :mod:`.service` — the asyncio layer around the SWIM core
  (:class:`SwimMembership`, the default: datagrams, timers, push-pull, peer
  table), and :func:`membership_for`, which builds the one a node's
  configuration names.
* :mod:`.gossip` — the older heartbeat gossip (:class:`Membership`,
  ``membership = "gossip"``).
* :mod:`.base` — what both share (:class:`MembershipBase`: the peer table
  and pool, byte counters, refusals, the leave sequence, the hooks).
* :mod:`.fitness` — the reward rule and the gossip of signed reward records
  (:class:`FitnessBook`).
"""

from .base import MembershipBase
from .fitness import NEUTRAL_FITNESS, REJECT_REASONS, FitnessBook, apply_reward
from .gossip import Membership
from .service import SwimMembership, membership_for

__all__ = [
    "NEUTRAL_FITNESS",
    "REJECT_REASONS",
    "FitnessBook",
    "Membership",
    "MembershipBase",
    "SwimMembership",
    "apply_reward",
    "membership_for",
]
