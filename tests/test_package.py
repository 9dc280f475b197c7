"""The package face: the public API imports from ``dellm_p2p`` itself, and library code prints nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dellm_p2p

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_import_from_the_package():
    from dellm_p2p import (  # noqa: F401
        AllPeersFailedError,
        AskOptions,
        ChunkVoted,
        Final,
        NoPeersError,
        QuestionError,
        Swarm,
        SwarmAnswer,
        SwarmError,
        SynthesisToken,
    )
    from dellm_p2p.coordinator import errors, events, pipeline
    from dellm_p2p.swarm import Swarm as SwarmClass

    assert Swarm is SwarmClass and AskOptions is pipeline.AskOptions and SwarmAnswer is events.SwarmAnswer
    assert issubclass(NoPeersError, SwarmError) and SwarmError is errors.SwarmError
    assert set(dellm_p2p.__all__) == {"__version__", *dellm_p2p._EXPORTS}
    for name in dellm_p2p.__all__:
        assert getattr(dellm_p2p, name) is not None, name
    assert set(dellm_p2p.__all__) <= set(dir(dellm_p2p))


def test_unknown_name_is_an_attribute_error():
    try:
        dellm_p2p.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_importing_the_package_imports_nothing_heavy():
    code = (
        "import sys, dellm_p2p; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('websockets', 'zeroconf', 'dellm_p2p')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.stdout.strip() == "['dellm_p2p']", result.stdout + result.stderr
