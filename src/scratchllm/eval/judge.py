"""LLM-as-judge against any OpenAI-compatible chat endpoint (including our own server).

The endpoint is reached through ``scratchllm.client.ChatClient`` (retries, backoff, clear errors).

* ``grade_single``: a 1-10 score for one answer against a rubric (MT-Bench style ``[[7]]`` verdict).
* ``judge_pairwise``: A/B/tie between two answers, asked twice with the answers' positions swapped;
  a winner counts only if both orders agree, which removes the judge's position bias.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scratchllm.client import ChatClient

DEFAULT_RUBRIC = (
    "Judge helpfulness, correctness, relevance, depth and clarity. Penalise factual errors, "
    "unsafe content, and answers that ignore the question. Do not reward length for its own sake."
)

SINGLE_SYSTEM = (
    "You are an impartial judge. Evaluate the quality of the AI assistant's answer to the user's "
    "question. Rubric: {rubric} Begin with a short explanation, then give your rating from 1 to 10 "
    'strictly in this format: "Rating: [[5]]".'
)
SINGLE_USER = "[Question]\n{question}\n{reference}\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"

PAIR_SYSTEM = (
    "You are an impartial judge. Compare the answers of two AI assistants to the user's question and "
    "decide which is better. Rubric: {rubric} Do not let the order in which the answers are presented, "
    "their length, or the assistants' names influence you. Begin with a short explanation, then give "
    'your verdict strictly as "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, '
    'or "[[C]]" for a tie.'
)
PAIR_USER = (
    "[Question]\n{question}\n{reference}\n[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)


# --- grading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grade:
    score: float | None  # None: the judge's reply had no parsable rating
    explanation: str


def _reference_block(reference: str | None) -> str:
    return f"\n[Reference Answer]\n{reference}\n" if reference else ""


def grade_single(client: ChatClient, question: str, answer: str, reference: str | None = None,
                 rubric: str = DEFAULT_RUBRIC) -> Grade:
    reply = client.chat([
        {"role": "system", "content": SINGLE_SYSTEM.format(rubric=rubric)},
        {"role": "user", "content": SINGLE_USER.format(question=question, answer=answer,
                                                       reference=_reference_block(reference))},
    ])
    return Grade(parse_rating(reply), reply)


def parse_rating(reply: str) -> float | None:
    m = re.search(r"\[\[(\d+(?:\.\d+)?)\]\]", reply) or re.search(r"[Rr]ating:\s*\[?(\d+(?:\.\d+)?)", reply)
    if not m:
        return None
    value = float(m.group(1))
    return value if 1 <= value <= 10 else None


def parse_verdict(reply: str) -> str | None:
    """'A', 'B', 'tie', or None when the reply has no verdict."""
    found = re.findall(r"\[\[([ABC])\]\]", reply)
    if len(set(found)) != 1:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[found[0]]


@dataclass(frozen=True)
class PairwiseResult:
    """``winner``: 'A', 'B' or 'tie' after the position swap; ``consistent``: both orders agreed."""

    winner: str
    consistent: bool
    first: str | None  # verdict with A shown first
    second: str | None  # verdict with B shown first, mapped back to A/B


def judge_pairwise(client: ChatClient, question: str, answer_a: str, answer_b: str,
                   reference: str | None = None, rubric: str = DEFAULT_RUBRIC) -> PairwiseResult:
    def ask(first: str, second: str) -> str | None:
        reply = client.chat([
            {"role": "system", "content": PAIR_SYSTEM.format(rubric=rubric)},
            {"role": "user", "content": PAIR_USER.format(question=question, a=first, b=second,
                                                         reference=_reference_block(reference))},
        ])
        return parse_verdict(reply)

    v1 = ask(answer_a, answer_b)
    v2 = {"A": "B", "B": "A", "tie": "tie", None: None}[ask(answer_b, answer_a)]
    if v1 is not None and v1 == v2:
        return PairwiseResult(v1, True, v1, v2)
    return PairwiseResult("tie", False, v1, v2)


def summarize_pairwise(results: Sequence[PairwiseResult]) -> dict[str, Any]:
    n = len(results)
    if not n:
        return {"n": 0}
    wins = sum(r.winner == "A" for r in results)
    losses = sum(r.winner == "B" for r in results)
    return {
        "n": n,
        "win_rate": wins / n,
        "loss_rate": losses / n,
        "tie_rate": (n - wins - losses) / n,
        "consistency": sum(r.consistent for r in results) / n,
    }
