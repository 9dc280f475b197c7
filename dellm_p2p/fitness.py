"""Re-export of :mod:`dellm_p2p.membership.fitness` (fitness gossip now lives in the membership package)."""

from .membership.fitness import (
    DEFAULT_WINDOW_S,
    EWMA_KEEP,
    NEUTRAL_FITNESS,
    REJECT_REASONS,
    FitnessBook,
    apply_reward,
)

__all__ = ["DEFAULT_WINDOW_S", "EWMA_KEEP", "NEUTRAL_FITNESS", "REJECT_REASONS", "FitnessBook", "apply_reward"]
