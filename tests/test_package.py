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


QUIET_PROGRAM = """
import asyncio

from dellm_p2p import Swarm
from tests.simulated_engine import SimulatedEngine
from tests.test_swarm import QUESTION, REPLIES, SimNode


async def main():
    nodes = []
    for name in ("quiet-a", "quiet-b"):
        engine = SimulatedEngine(token_interval_s=0.001)
        engine.replies = dict(REPLIES)
        nodes.append(SimNode(name, engine))
    first = await nodes[0].start([])
    await nodes[1].start([first])
    for _ in range(2):  # the second coordinator meets the first one's rewards and goodbye
        # A bootstrap peer that is down: the library logs a warning, which must not reach stderr.
        async with Swarm(peers=[first, "ws://127.0.0.1:9"], mdns=False, discover_timeout_s=2) as swarm:
            await swarm.ask(QUESTION)
            await swarm.ask("What is 10% of 1000?", redundancy=2)
    for node in nodes:
        await node.close()


asyncio.run(main())
"""


def test_library_code_prints_nothing():
    """A program that uses the library without configuring logging gets nothing on stdout or stderr."""
    result = subprocess.run(
        [sys.executable, "-c", QUIET_PROGRAM], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_a_reward_from_an_unknown_issuer_is_logged_at_info_not_warning(caplog):
    import logging

    from dellm_p2p.identity import Identity
    from dellm_p2p.membership.fitness import FitnessBook
    from dellm_p2p.peer_table import PeerTable

    from .test_fitness import signed

    me, stranger, peer = Identity.generate(), Identity.generate(), Identity.generate()
    book = FitnessBook(me.node_id, PeerTable(me.node_id, ""), identity=me)
    with caplog.at_level(logging.DEBUG, logger="dellm_p2p"):
        assert book.receive([signed(stranger, peer.node_id)]) == []
    (record,) = [r for r in caplog.records if "dropping reward record" in r.message]
    assert record.levelno == logging.INFO and "not a known member" in record.message
