"""Restate a change-of-quantity word problem as direct arithmetic the peers can write as one expression.

"If I have 3 apples, buy 5 more and eat 2, how many apples do I have?" is
``3 + 5 - 2``, but neither embedded model writes that: measured greedy and
with six samples at T = 0.7 under seven prompt wordings, SmolLM2-135M wrote
"3 * 5", "3 + 5" or "3 + 5 * 2" (its own likelihood ranks "3 + 5 * 2" above
"3 + 5 - 2" among the 16 expressions of the three numbers), and Gemma 3 270M
"3 * 5 - 2". Both do write one-sentence direct arithmetic right ("What is 3
plus 5 minus 2?"). So before routing, the coordinator restates such a
question: each stated number is classed by the verb that governs it, the way
Hosseini et al. (2014, "Learning to Solve Arithmetic Word Problems with Verb
Categorization") class verbs, here from a fixed list: the first number is the
starting amount (*have*, *there are*), each later one a gain (*buy*, *find*,
*arrive*) or a loss (*eat*, *give*, *sell*, "… away"). The peers then answer
"What is 3 plus 5 minus 2?" program-aided and vote as on any sum.

Only a question that is plainly such a problem is restated; anything else is
left as it is (``None``): a multiplicative or comparative cue ("each", "per",
"times", "half", "%", "than", "how many more"), a number no listed verb
governs, two named people (whose apples?), a question that asks for one of
the changes ("how many did he eat?") or about the one something was given to.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .types import Chunk, Operation

__all__ = ["restate", "restate_chunk"]

_STARTS = frozenset("have has had own owns owned hold holds held keep keeps kept is are was were contains".split())
_GAINS = frozenset(
    """buy buys bought get gets got gotten find finds found receive receives received pick picks picked
    collect collects collected earn earns earned gain gains gained add adds added bake bakes baked make makes
    made win wins won catch catches caught grow grows grew grown arrive arrives arrived come comes came join
    joins joined borrow borrows borrowed plant plants planted gather gathers gathered""".split()
)
_LOSSES = frozenset(
    """eat eats ate eaten give gives gave given lose loses lost sell sells sold spend spends spent use uses used
    break breaks broke broken drop drops dropped throw throws threw thrown donate donates donated pop pops popped
    remove removes removed lend lends lent drink drinks drank burn burns burned burnt leave leaves left""".split()
)
# Cues of multiplication, division, fractions or comparison: not a chain of gains and losses.
_NOT_ADDITIVE = re.compile(
    r"(?i)%|\b(?:each|every|per|times|twice|half|double|triple|percent|than|average|fraction|share[sd]?|split|"
    r"among|between|groups?|rows?|how\s+(?:many|much)\s+(?:more|fewer|less))\b|\d\s*/\s*\d"
)
_CLAUSE_BREAK = re.compile(r"(?i)[,;:.!?]|\band\b|\bthen\b|\bbut\b")
_NUMBER = re.compile(r"(?<![\w.])\$?(\d+(?:\.\d+)?)(?![\w.]|\.\d)")
_WORD = re.compile(r"[A-Za-z']+")
_ASKS = re.compile(r"(?i)\bhow\s+(?:many|much)\b")
_NAME = re.compile(r"\b([A-Z][a-z]+)\b")
# Capitalised words that name nobody (sentence starts, pronouns).
_NOT_NAMES = frozenset(
    """If Then How There What After Now Later Next Finally She He They It We You His Her Their My Our The A An This
    That These Those At In On When While So And But Yesterday Today Tomorrow Each""".split()
)
# The one a change goes to ("gives 2 to Anna", "to her brother"): if the question asks about them, not the owner.
_RECIPIENT = re.compile(r"(?i)\b(?:to|for)\s+(?:(?:his|her|my|their|our|your|the)\s+)?([a-z]+)")


def _clauses(text: str) -> list[str]:
    return [c.strip() for c in _CLAUSE_BREAK.split(text) if c.strip()]


def _change(clause: str, number_at: int) -> str | None:
    """``"start"``, ``"+"``, ``"-"`` for the number at ``number_at`` in ``clause``, from the nearest listed verb
    before it (else after it, as in "8 fly away"); ``None`` when no listed verb governs it."""
    if re.search(r"(?i)\baway\b", clause):
        return "-"
    if re.search(r"(?i)\b(?:off|out|back|over)\b", clause):  # "got off", "gave back": the verb alone misleads
        return None
    before = [w.lower() for w in _WORD.findall(clause[:number_at])]
    after = [w.lower() for w in _WORD.findall(clause[number_at:])]
    for word in [*reversed(before), *after]:
        if word in _GAINS:
            return "+"
        if word in _LOSSES:
            return "-"
        if word in _STARTS:
            return "start"
    return None


def restate(question: str) -> str | None:
    """``question`` as direct arithmetic ("What is 3 plus 5 minus 2?"), or ``None`` when it is not plainly a
    chain of gains and losses from a starting amount (see the module docstring).

    Args:
        question: one chunk's text, e.g. "If I have 3 apples, buy 5 more and eat 2, how many apples do I have?".
    """
    if _NOT_ADDITIVE.search(question) or len(_ASKS.findall(question)) != 1:
        return None
    names = {n for n in _NAME.findall(question) if n not in _NOT_NAMES}
    if len(names) > 1:
        return None
    recipients = {m.lower() for m in _RECIPIENT.findall(question)}
    steps: list[tuple[str, str]] = []
    asked = False
    for clause in _clauses(question):
        numbers = list(_NUMBER.finditer(clause))
        if _ASKS.search(clause):
            words = {w.lower() for w in _WORD.findall(clause)}
            # It states a number of its own, asks for one of the changes ("how many did he eat?"; "left" is
            # what remains) or about whom something was given to.
            if numbers or words & (_GAINS | _LOSSES) - {"left"} or words & recipients:
                return None
            asked = True
            continue
        if len(numbers) > 1:
            return None
        if numbers:
            change = _change(clause, numbers[0].start())
            if change is None:
                return None
            steps.append((change, numbers[0].group(1)))
    if not asked or len(steps) < 2 or steps[0][0] != "start" or any(c == "start" for c, _ in steps[1:]):
        return None
    words = {"+": "plus", "-": "minus"}
    return "What is " + " ".join([steps[0][1], *(f"{words[c]} {n}" for c, n in steps[1:])]) + "?"


def restate_chunk(chunk: Chunk) -> Chunk | None:
    """``chunk`` with its text restated (:func:`restate`), or ``None`` when it is not a MATH chunk, depends on
    another chunk or on earlier turns, or is not such a word problem."""
    if chunk.operation is not Operation.MATH or chunk.depends_on or chunk.context:
        return None
    text = restate(chunk.text)
    return replace(chunk, text=text) if text is not None else None
