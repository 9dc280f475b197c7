"""The consensus record store (issue 23): what a record holds, its bound, the switch, the export."""

from __future__ import annotations

import io
import json

from dellm_p2p.coordinator.events import ChunkTrace, SwarmAnswer
from dellm_p2p.coordinator.types import Candidate, Chunk, Operation, VoteResult
from dellm_p2p.learn.records import ConsensusRecord, RecordStore, export_jsonl, records_from_answer
from dellm_p2p.swarm import Swarm

from .test_swarm import QUESTION, cluster  # noqa: F401  (the simulated three-node fixture)


def _record(i: int) -> ConsensusRecord:
    return ConsensusRecord(ts=float(i), prompt=f"What is {i} plus 1?", kind="MATH", answer=str(i + 1), key=str(i + 1),
                           agreement=1.0, answers=5, program=True, models=["m"])  # fmt: skip


def _answer() -> SwarmAnswer:
    math = Chunk("c1", "What is 2 plus 3?", Operation.MATH)
    ok = Candidate("n1", "2 + 3", answer="5", display="5", expression="2 + 3", model="base")
    other = Candidate("n2", "6", answer="6", display="6", model="base:lora-1")
    dependent = Chunk("c2", "then find accounts paying that much", Operation.LOOKUP, depends_on=("c1",))
    unanswered = Chunk("c3", "Say nothing", Operation.GENERAL)
    traces = [
        ChunkTrace(math, candidates=[ok, ok, other], vote=VoteResult("majority", "5", ok, 2 / 3)),
        ChunkTrace(dependent, candidates=[ok], vote=VoteResult("majority", "x", ok, 1.0)),
        ChunkTrace(unanswered, candidates=[], vote=VoteResult("majority", None, None, 0.0)),
    ]
    return SwarmAnswer(question="earlier turn text. What is 2 plus 3? then find accounts", text="", chunks=traces)


def test_a_record_holds_the_chunk_and_its_consensus_only():
    (record,) = records_from_answer(_answer(), now=123.0)
    assert record.prompt == "What is 2 plus 3?" and record.kind == "MATH"
    assert (record.answer, record.key, record.reply) == ("5", "5", "2 + 3")
    assert record.program and record.answers == 3 and abs(record.agreement - 0.6667) < 1e-9
    assert record.models == ["base", "base:lora-1"] and record.ts == 123.0
    # Neither the dependent chunk, the unanswered one, nor the rest of the question is kept.
    assert "earlier turn" not in record.model_dump_json()


def test_store_appends_reads_and_stays_bounded(tmp_path):
    store = RecordStore(tmp_path / "learn", max_records=8)
    assert len(store) == 0 and list(store.read()) == []
    for i in range(30):
        store.add([_record(i)])
        assert len(store) <= 10  # 8 + a quarter before compaction
    kept = list(store.read())
    assert 8 <= len(kept) <= 10 and kept[-1].prompt == "What is 29 plus 1?"
    assert [r.ts for r in kept] == sorted(r.ts for r in kept)
    # A fresh store over the same file counts what is there, and a damaged line is skipped.
    with open(store.path, "a") as fh:
        fh.write("{not json\n")
    again = RecordStore(tmp_path / "learn", max_records=8)
    assert len(list(again.read())) == len(kept)
    out = io.StringIO()
    assert export_jsonl(again.read(), out) == len(kept)
    assert json.loads(out.getvalue().splitlines()[0])["kind"] == "MATH"


async def test_a_swarm_keeps_what_it_was_asked(cluster, tmp_path):  # noqa: F811
    _, bootstrap = cluster
    store = RecordStore(tmp_path / "learn")
    async with Swarm(peers=[bootstrap], mdns=False, records=store) as swarm:
        await swarm.ask(QUESTION)
    records = list(store.read())
    # The first chunk stands alone; the second uses its answer and is not kept.
    assert [(r.prompt, r.kind, r.answer) for r in records] == [("Calculate 10% of 1000", "MATH", "100")]
    assert records[0].agreement == 1.0 and records[0].models == ["simulated"]
    async with Swarm(peers=[bootstrap], mdns=False) as swarm:  # no store: nothing kept
        await swarm.ask(QUESTION)
    assert len(list(store.read())) == 1
