"""Prometheus metrics of the HTTP API and the questions behind it (``GET /metrics``).

One :class:`~prometheus_client.CollectorRegistry` per app (not the global
one), so several apps in one process (tests) never collide. Counters the
network already keeps (rewards applied and rejected, peers by state, node
in-flight requests) are read when scraped, not copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..coordinator.events import SwarmAnswer

if TYPE_CHECKING:
    from .gateway import Gateway

# Latency buckets [s]: one token on a small model (tens of ms) up to a long pipeline question (minutes).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
AGREEMENT_BUCKETS = (0.2, 0.34, 0.5, 0.67, 0.8, 0.99, 1.0)


class _NetworkCollector(Collector):
    """Values read from the gateway's view at scrape time."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        fitness = self.gateway.fitness
        applied = CounterMetricFamily("dellm_rewards_applied", "Reward records applied to fitness")
        applied.add_metric([], fitness.applied)
        yield applied
        rejected = CounterMetricFamily("dellm_rewards_rejected", "Reward records rejected", labels=["reason"])
        for reason, count in fitness.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        peers = GaugeMetricFamily("dellm_peers", "Known peers by state (this node included)", labels=["state"])
        for state, count in self.gateway.peer_states().items():
            peers.add_metric([state], count)
        yield peers
        node = GaugeMetricFamily("dellm_node_in_flight_requests", "Generations this node serves now")
        node.add_metric([], self.gateway.in_flight())
        yield node
        admission = self.gateway.admission
        for name, text, value in (
            ("dellm_admission_queued_chunks", "Chunks waiting for free slots", admission.queued_chunks),
            ("dellm_admission_queued_questions", "Questions waiting for their first slot", admission.queued_questions),
            ("dellm_admission_free_slots", "Answers the peers can take now", admission.free_slots()),
            (
                "dellm_admission_answers_in_flight",
                "Answers this coordinator has in flight",
                sum(admission.load.values()),
            ),
        ):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], value)
            yield gauge
        refused = CounterMetricFamily("dellm_admission_refused", "Questions refused because the queue was full")
        refused.add_metric([], admission.refused)
        yield refused


class ApiMetrics:
    """The API's metrics in their own registry; :meth:`question` records a finished pipeline answer."""

    def __init__(self, gateway: Gateway):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("dellm_api_requests", "API requests", ["endpoint", "status"], registry=r)
        self.errors = Counter("dellm_api_errors", "API errors by HTTP status", ["status"], registry=r)
        self.in_flight = Gauge("dellm_api_in_flight_requests", "API requests being answered", registry=r)
        self.questions = Counter(
            "dellm_questions", "Questions by model kind and outcome", ["kind", "outcome"], registry=r
        )
        self.chunks = Counter("dellm_chunks", "Chunks answered through the pipeline", registry=r)
        self.candidates = Counter("dellm_candidates", "Candidate answers received for chunks", registry=r)
        self.votes = Counter("dellm_votes", "Chunk votes by strategy", ["strategy"], registry=r)
        self.agreement = Histogram(
            "dellm_agreement", "Share of candidates agreeing with the winner", buckets=AGREEMENT_BUCKETS, registry=r
        )
        self.tokens = Counter("dellm_tokens", "Tokens peers consumed for API answers", ["kind"], registry=r)
        self.latency = Histogram(
            "dellm_request_latency_seconds", "Answer wall time [s]", ["kind"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "dellm_time_to_first_token_seconds",
            "Time to the first answer token [s]",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "dellm_admission_wait_seconds",
            "Time a chunk waited for free slots [s]",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redundancy = Counter("dellm_redundancy_used", "Chunks admitted per redundancy k used", ["k"], registry=r)
        r.register(_NetworkCollector(gateway))
        gateway.admission.listeners.append(self.admitted)

    def admitted(self, wait_s: float, k: int) -> None:
        """A chunk was admitted after ``wait_s`` [s] with redundancy ``k``."""
        self.queue_wait.observe(wait_s)
        self.redundancy.labels(str(k)).inc()

    def question(self, answer: SwarmAnswer) -> None:
        """Count a pipeline answer's chunks, candidates, votes and agreement."""
        for trace in answer.chunks:
            self.chunks.inc()
            self.candidates.inc(len(trace.candidates))
            if trace.vote is not None:
                self.votes.labels(trace.vote.strategy).inc()
                self.agreement.observe(trace.vote.agreement)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
