"""A real node serves an adopted LoRA adapter through vLLM and shares it (issue 23; slow: real model)."""

from __future__ import annotations

import time

import pytest

from dellm_p2p.client import PeerClient
from dellm_p2p.identity import load_identity
from dellm_p2p.learn.adapters import adopt, model_hash
from dellm_p2p.learn.records import ConsensusRecord
from dellm_p2p.learn.share import fetch_adapter
from dellm_p2p.learn.train import TrainSettings, train_adapter
from dellm_p2p.local import NodeProcess
from dellm_p2p.models import DEFAULT_MODEL_NAME, ensure_default_model
from dellm_p2p.protocol import SamplingParams

pytestmark = pytest.mark.slow


def _records(n: int) -> list[ConsensusRecord]:
    return [ConsensusRecord(ts=time.time(), prompt=f"What is {i} plus 11?", kind="MATH", answer=str(i + 11),
                            key=str(i + 11), reply=f"{i} + 11", agreement=1.0, answers=5, program=True)
            for i in range(n)]  # fmt: skip


async def test_node_serves_its_adopted_adapter_and_a_peer_fetches_it(tmp_path):
    base = ensure_default_model()
    state = tmp_path / "trainer"
    trainer = load_identity(state).node_id  # the key the node will start with
    settings = TrainSettings(batch_size=4, holdout=0.0, max_steps=2)
    _, meta = train_adapter(_records(8), base, DEFAULT_MODEL_NAME, state, settings, trainer=trainer)
    adopt(state, meta)
    node = NodeProcess(["--name", "learn-vllm", "--state-dir", str(state), "--no-mdns", "--max-concurrency", "4"])
    try:
        node.wait_ready(timeout_s=600)
        async with await PeerClient.connect(node.url) as client:
            assert client.remote.model == f"{DEFAULT_MODEL_NAME}:{meta.id}"
            result = await client.complete(messages=[{"role": "user", "content": "What is 3 plus 11?"}],
                                           params=SamplingParams(max_tokens=8, temperature=0.0))  # fmt: skip
            assert result.text.strip()
            directory, fetched, manifest = await fetch_adapter(
                client, meta.id, tmp_path / "peer", base_hash=model_hash(base)
            )
        assert fetched == meta and manifest["trainer"] == trainer and directory.name == meta.id
    finally:
        code = node.stop(timeout_s=60)
    assert code == 0, node.stderr_tail()
