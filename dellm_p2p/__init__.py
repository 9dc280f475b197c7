"""dellm-p2p: a peer-to-peer network of language-model nodes.

The public API, importable from the package itself::

    from dellm_p2p import Swarm, AskOptions, SwarmError

    async with Swarm() as swarm:
        answer = await swarm.ask("What is the capital of France?")

Names are imported on first use (PEP 562): ``import dellm_p2p`` stays cheap
for the command-line programs, which import only what they need.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Library code logs and never prints: without this, a program that has not configured logging
# would get our warnings on stderr through logging's last-resort handler.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Public name -> the module that defines it.
_EXPORTS = {
    "Swarm": "dellm_p2p.swarm",
    "AskOptions": "dellm_p2p.coordinator.pipeline",
    "SwarmAnswer": "dellm_p2p.coordinator.events",
    "ChunkTrace": "dellm_p2p.coordinator.events",
    "Event": "dellm_p2p.coordinator.events",
    "ChunkPlanned": "dellm_p2p.coordinator.events",
    "ChunkRouted": "dellm_p2p.coordinator.events",
    "PeerToken": "dellm_p2p.coordinator.events",
    "PeerFailed": "dellm_p2p.coordinator.events",
    "CandidateReady": "dellm_p2p.coordinator.events",
    "ChunkVoted": "dellm_p2p.coordinator.events",
    "SynthesisToken": "dellm_p2p.coordinator.events",
    "Final": "dellm_p2p.coordinator.events",
    "SwarmError": "dellm_p2p.coordinator.errors",
    "QuestionError": "dellm_p2p.coordinator.errors",
    "NoPeersError": "dellm_p2p.coordinator.errors",
    "AllPeersFailedError": "dellm_p2p.coordinator.errors",
    "DeadlineError": "dellm_p2p.coordinator.errors",
    "PeerClient": "dellm_p2p.client",
    "PeerError": "dellm_p2p.client",
    "load_cluster_key": "dellm_p2p.security",
    "load_identity": "dellm_p2p.identity",
}

__all__ = [  # a literal list, for linters and type checkers; a test checks it matches _EXPORTS
    "AllPeersFailedError",
    "AskOptions",
    "CandidateReady",
    "ChunkPlanned",
    "ChunkRouted",
    "ChunkTrace",
    "ChunkVoted",
    "DeadlineError",
    "Event",
    "Final",
    "NoPeersError",
    "PeerClient",
    "PeerError",
    "PeerFailed",
    "PeerToken",
    "QuestionError",
    "Swarm",
    "SwarmAnswer",
    "SwarmError",
    "SynthesisToken",
    "__version__",
    "load_cluster_key",
    "load_identity",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .client import PeerClient, PeerError
    from .coordinator.errors import AllPeersFailedError, DeadlineError, NoPeersError, QuestionError, SwarmError
    from .coordinator.events import (
        CandidateReady,
        ChunkPlanned,
        ChunkRouted,
        ChunkTrace,
        ChunkVoted,
        Event,
        Final,
        PeerFailed,
        PeerToken,
        SwarmAnswer,
        SynthesisToken,
    )
    from .coordinator.pipeline import AskOptions
    from .identity import load_identity
    from .security import load_cluster_key
    from .swarm import Swarm


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access.

    Raises:
        AttributeError: ``name`` is not part of the public API.
    """
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dellm_p2p' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
