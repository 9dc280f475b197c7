"""Unit conversions computed by the coordinator with pint (coordinator/units.py), not guessed by a peer."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dellm_p2p.coordinator.types import Chunk, Operation
from dellm_p2p.coordinator.units import COMPUTED_BY, Conversion, convert, format_value, parse_conversion, unit_vote
from dellm_p2p.swarm import Swarm

from .test_swarm import cluster  # noqa: F401 (fixture)


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("How many centimetres are in 5 feet?", "152.4"),
        ("How many Centimeters are in 5 Feet?", "152.4"),
        ("How many seconds are in a day?", "86400"),
        ("how many ounces in 2.5 pounds", "40"),
        ("Convert 1,000 metres into km.", "1"),
        ("How many inches is 2 feet?", "24"),
        ("What is 3 miles in kilometres?", "4.828032"),
        ("Convert 212 degrees Fahrenheit to Celsius", "100"),
        ("What is -40 degC in degF?", "-40"),
        ("How many kilometers per hour is 10 miles per hour?", "16.09344"),
        ("How many MB are in 2 GB?", "2000"),  # symbols keep their case: "mb" would be millibarns
    ],
)
def test_conversions_are_computed(question, value):
    conversion = parse_conversion(question)
    assert conversion is not None, question
    assert convert(conversion) == value


@pytest.mark.parametrize(
    "question",
    [
        "How many apples are in 5 boxes?",  # not units
        "How many metres are in 5 kilograms?",  # different dimensions
        "How many days are in 2 years?",  # calendar units: 365 or 366?
        "What is 5 plus 3?",
        "How many centimetres are in 5 feet? Then explain why.",  # more than the conversion
        "Convert that to miles",  # a number from an earlier chunk: the peers answer it
    ],
)
def test_anything_else_is_not_a_conversion(question):
    assert parse_conversion(question) is None


def test_format_value_has_no_float_noise_or_exponent():
    assert format_value(152.39999999999998) == "152.4"
    assert format_value(1609344.0) == "1609344"
    assert format_value(6.21371192e-07) == "0.000000621371192"
    assert convert(Conversion(Decimal(5), "feet", "centimetres")) == "152.4"


def test_unit_vote_is_decided_and_names_no_peer():
    result = unit_vote(Chunk("c1", "How many centimetres are in 5 feet?", Operation.MATH))
    assert result is not None and result.answer == "152.4" and result.agreement == 1.0
    assert result.winner.peer_id == COMPUTED_BY and result.winner.text == "5 feet = 152.4 centimetres"
    assert unit_vote(Chunk("c1", "How many apples are in 5 boxes?", Operation.MATH)) is None


async def test_the_swarm_answers_a_conversion_without_asking_a_peer(cluster):  # noqa: F811
    nodes, bootstrap = cluster
    async with Swarm(peers=[bootstrap], mdns=False, discover_timeout_s=5) as swarm:
        answer = await swarm.ask("How many centimetres are in 5 feet?")
        assert "152.4" in answer.text and not answer.rewards
        assert not any(n.engine.prompts for n in nodes)
        # Without program aid the peers answer it (the coordinator computes nothing).
        plain = await swarm.ask("How many centimetres are in 5 feet?", program_aided=False)
        assert plain.chunks[0].candidates
