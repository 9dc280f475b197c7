"""Errors the coordinator raises to its users (each ``str`` is one line)."""

from __future__ import annotations


class SwarmError(RuntimeError):
    """Base class: the question could not be answered."""


class QuestionError(SwarmError, ValueError):
    """The question is empty, too long, or asks for an unknown strategy or setting."""


class NoPeersError(SwarmError):
    """No alive peer that serves a model can take the work."""


class AllPeersFailedError(SwarmError):
    """Every peer asked for a chunk (re-routes included) failed or timed out."""


class DeadlineError(SwarmError):
    """The question's deadline passed before it was answered."""
