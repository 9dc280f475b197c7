"""Unit conversions the coordinator computes itself: "How many centimetres are in 5 feet?" is 152.4, by `pint`.

The default 135M model writes "5 * 100 = 500" for that question: it does not
know conversion factors, and program-aided arithmetic (:mod:`.program`)
computes whatever factor it invents. So a chunk that *is* a unit conversion
is not sent to the peers at all: :func:`parse_conversion` reads the quantity
and the two units from the question and :func:`convert` computes the result
with pint's unit registry (a well-kept units library; its definitions are
NIST's). Why the coordinator parses the question itself rather than asking
the model to name the quantities: the phrasings handled below are
unambiguous, parsing them is exact and instant, and the model's reply would
have to be parsed the same way anyway; anything else (a conversion inside a
word problem, a unit pint does not know, "that" from an earlier chunk) goes
to the peers as before.

Phrasings (case-insensitive, one sentence): "How many <unit> are/is (there)
in <N> <unit>?", "How many <unit> is/are/make <N> <unit>?", "Convert <N>
<unit> to/into/in <unit>", "(What is) <N> <unit> in/to/into <unit>?". <N> is a
number ("5", "2.5", "1,000", "-40") or "a"/"an"/"one". Calendar units (year,
month: 365 or 366 days? 28 to 31?) and units of different dimensions are
refused (``None``): the peers answer those.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal

from .types import Candidate, Chunk, VoteResult

__all__ = ["COMPUTED_BY", "Conversion", "convert", "format_value", "parse_conversion", "unit_vote"]

#: Units whose size depends on the calendar: not converted here.
AMBIGUOUS_UNITS = frozenset({"year", "month", "decade", "century", "millennium", "common_year", "leap_year"})
#: Significant digits of a converted value (float error sits at the 16th).
SIGNIFICANT_DIGITS = 10

_NUMBER = r"(?P<n>-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|an?|one)"
_UNIT = r"[a-zA-Z][a-zA-Z°µ/ .]{0,40}?"
_END = r"\s*[?.!]?\s*$"
_PATTERNS = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"^how\s+many\s+(?P<to>{_UNIT})\s+(?:are|is)(?:\s+there)?\s+in\s+{_NUMBER}\s+(?P<from>{_UNIT}){_END}",
        rf"^how\s+many\s+(?P<to>{_UNIT})\s+in\s+{_NUMBER}\s+(?P<from>{_UNIT}){_END}",
        rf"^how\s+many\s+(?P<to>{_UNIT})\s+(?:is|are|make|equals?)\s+{_NUMBER}\s+(?P<from>{_UNIT}){_END}",
        rf"^(?:please\s+)?convert\s+{_NUMBER}\s+(?P<from>{_UNIT})\s+(?:to|into|in)\s+(?P<to>{_UNIT}){_END}",
        rf"^(?:what\s+is\s+|what's\s+)?{_NUMBER}\s+(?P<from>{_UNIT})\s+(?:in|to|into|in\s+terms\s+of)\s+(?P<to>{_UNIT}){_END}",
    )
)


@dataclass(frozen=True)
class Conversion:
    """One conversion read from a question.

    Attributes:
        value: the quantity's magnitude as written ("a" and "one" are 1).
        source: the unit converted from, as the user wrote it ("feet").
        target: the unit converted to, as the user wrote it ("centimetres").
    """

    value: Decimal
    source: str
    target: str


@functools.cache
def _registry():
    """pint's default unit registry (built once, about 0.2 s; imported lazily to keep start-up fast)."""
    import pint

    return pint.UnitRegistry(autoconvert_offset_to_baseunit=True)


def _unit(name: str):
    """The pint unit for a user's unit name ("centimetres", "degrees Fahrenheit"), else ``None``."""
    import pint

    text = " ".join(name.strip().replace("°", "deg").split())
    text = re.sub(r"(?i)^(?:degrees?|deg)\s+(celsius|centigrade|fahrenheit|kelvin)$", r"deg\1", text)
    text = re.sub(r"(?i)^deg(?:centigrade|celsius)$", "degC", re.sub(r"(?i)^degfahrenheit$", "degF", text))
    text = re.sub(r"(?i)^(?:the|a|an)\s+", "", text)
    text = re.sub(r"(?i)\s+per\s+", "/", text)
    if not text or " " in text:
        return None
    registry = _registry()
    # As written first: symbols are case-sensitive ("MB" is megabytes, "mb" millibarns); then in lower case.
    for spelling in dict.fromkeys((text, text.lower())):
        try:
            unit = registry.parse_units(spelling)
        except (pint.errors.PintError, AttributeError, ValueError, TypeError, SyntaxError):
            continue
        if any(str(part) in AMBIGUOUS_UNITS for part in unit._units):
            return None
        return unit
    return None


def parse_conversion(text: str) -> Conversion | None:
    """The conversion a one-sentence question asks for, or ``None`` when it is not one of the phrasings above.

    ``None`` too when either unit is unknown to pint, a calendar unit, or the
    two units measure different things ("How many apples are in 5 boxes?",
    "How many metres are in 5 kilograms?").
    """
    question = " ".join(text.split())
    if len(question) > 200:
        return None
    for pattern in _PATTERNS:
        match = pattern.match(question)
        if match is None:
            continue
        source, target = _unit(match["from"]), _unit(match["to"])
        if source is None or target is None or source.dimensionality != target.dimensionality:
            return None
        number = match["n"].lower()
        value = Decimal(1) if number in ("a", "an", "one") else Decimal(number.replace(",", ""))
        return Conversion(value, " ".join(match["from"].split()), " ".join(match["to"].split()))
    return None


def format_value(value: float) -> str:
    """``value`` to :data:`SIGNIFICANT_DIGITS` significant digits, written out without an exponent ("152.4")."""
    text = format(Decimal(f"{value:.{SIGNIFICANT_DIGITS}g}"), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def convert(conversion: Conversion) -> str:
    """The converted magnitude as text (:func:`format_value`): ``Conversion(5, "feet", "centimetres")`` → ``"152.4"``.

    Raises:
        ValueError: a unit that :func:`parse_conversion` would not have accepted.
    """
    source, target = _unit(conversion.source), _unit(conversion.target)
    if source is None or target is None:
        raise ValueError(f"cannot convert {conversion.source!r} to {conversion.target!r}")
    quantity = _registry().Quantity(float(conversion.value), source)
    return format_value(quantity.to(target).magnitude)


#: The peer id shown for an answer the coordinator computed itself (no peer was asked, none is rewarded).
COMPUTED_BY = "coordinator"


def unit_vote(chunk: Chunk) -> VoteResult | None:
    """The decided vote of a chunk that is a unit conversion (:func:`parse_conversion`), else ``None``.

    The winner is a reply written by the coordinator ("5 feet = 152.4
    centimetres", vote key and display "152.4") with agreement 1 and no
    candidates: no peer is asked, so none is rewarded.
    """
    conversion = parse_conversion(chunk.text)
    if conversion is None:
        return None
    try:
        value = convert(conversion)
    except (ValueError, ArithmeticError):  # pint's DimensionalityError is a ValueError
        return None
    amount = format_value(float(conversion.value))
    text = f"{amount} {conversion.source} = {value} {conversion.target}"
    winner = Candidate(peer_id=COMPUTED_BY, text=text, answer=value, display=value, fitness=1.0)
    return VoteResult(strategy="units", answer=value, winner=winner, agreement=1.0, scores={value: 1.0})
