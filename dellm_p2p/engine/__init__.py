"""Engines: a language-model backend behind a small async interface."""

from .base import (
    Delta,
    Engine,
    EngineError,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    PromptTooLongError,
)

__all__ = [
    "Delta",
    "Engine",
    "EngineError",
    "EngineStats",
    "GenerationRequest",
    "ModelInfo",
    "PromptTooLongError",
]
