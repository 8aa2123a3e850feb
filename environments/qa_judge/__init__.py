"""`qa_judge`: answer a question from a small document store; an LLM judge scores the answer.

The agent searches (`search`), reads (`read`) and submits its final answer (`answer`; without one,
the last assistant message of the response counts). The verifier asks the `"judge"` effect whether
the answer matches the reference, with a rubric in the prompt; the judge's reply is recorded in the
verified event, so replay and re-verification never call it again. With no judge configured, a
deterministic rule-based scorer decides. The verified event's `details.scorer` says which one did.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

from pydantic import Field

from eventsourced_env import Args, Context, Environment, State, Task, ToolError, VerifyResult

from .corpus import DOCUMENTS

__all__ = ["RUBRIC", "QAState", "QATask", "env", "oracle"]


class QATask(Task):
    """A question, its reference answer (and other accepted forms) and the note that holds it."""

    question: str
    expected_answer: str
    aliases: list[str] = []
    source_doc: str | None = None


class QAState(State):
    """What the agent has done: the notes it read, its searches, and its submitted answer."""

    read: tuple[str, ...] = ()
    searches: int = 0
    answer: str | None = None


class Search(Args):
    """Arguments of `search`."""

    query: str = Field(min_length=1, max_length=500)
    limit: int = Field(default=3, ge=1, le=10)


class Read(Args):
    """Arguments of `read`."""

    doc_id: str


class Answer(Args):
    """Arguments of `answer`."""

    text: str = Field(min_length=1, max_length=2000)


env: Environment[QATask, QAState] = Environment("qa_judge", version="1", task=QATask, effects=["judge"])

_STOPWORDS = frozenset(
    {
        *("a", "an", "the", "of", "in", "on", "at", "to", "is", "was", "what", "which", "who", "how"),
        *("when", "where", "does", "do", "did", "for", "by", "and", "or", "it", "its", "from", "with"),
    }
)


def _words(text: str) -> list[str]:
    """Lower-case words and numbers, punctuation dropped: a decimal is one number ("2.5" is not "5"),
    and a comma joins only digits ("1,200" is 1200; "saffron,tea" two words)."""
    return re.findall(r"[0-9]+(?:\.[0-9]+)+|[a-z0-9]+", re.sub(r"(?<=[0-9]),(?=[0-9])", "", text.lower()))


@env.initial
def initial(task: QATask, ctx: Context) -> QAState:
    """Nothing read, nothing answered."""
    return QAState()


@env.tool
def search(state: QAState, args: Search, ctx: Context) -> tuple[QAState, Any]:
    """Search the notes about Port Averly; returns the best-matching notes' ids, titles and first lines."""
    terms = {w for w in _words(args.query) if w not in _STOPWORDS}
    scored = []
    for doc_id, (title, text) in DOCUMENTS.items():
        title_words, text_words = set(_words(title)), set(_words(text))
        score = sum(2 * (t in title_words) + (t in text_words) for t in terms)
        if score:
            scored.append((-score, doc_id, title, text))
    results = [
        {"doc_id": doc_id, "title": title, "snippet": text[:80] + "…"}
        for _, doc_id, title, text in sorted(scored)[: args.limit]
    ]
    return state.model_copy(update={"searches": state.searches + 1}), {"results": results}


@env.tool
def read(state: QAState, args: Read, ctx: Context) -> tuple[QAState, Any]:
    """Read one note in full, by the `doc_id` a search returned."""
    if args.doc_id not in DOCUMENTS:
        raise ToolError(f"no note {args.doc_id!r}; search first and use a doc_id it returns")
    title, text = DOCUMENTS[args.doc_id]
    read = state.read if args.doc_id in state.read else (*state.read, args.doc_id)
    return state.model_copy(update={"read": read}), {"doc_id": args.doc_id, "title": title, "text": text}


@env.tool
def answer(state: QAState, args: Answer, ctx: Context) -> tuple[QAState, Any]:
    """Submit your final answer to the question (a later one replaces it)."""
    return state.model_copy(update={"answer": args.text}), {"submitted": True}


RUBRIC = """You grade a candidate's answer to a question against the reference answer.
Rubric:
- CORRECT: the candidate states the same fact as the reference. Paraphrase, units written out or
  abbreviated, and numbers in words or digits are all fine; extra correct detail is fine.
- INCORRECT: the candidate contradicts the reference, leaves out the key fact, hedges between
  several answers, or says it does not know.
Reason in one or two sentences, then end with exactly one line: `VERDICT: CORRECT` or `VERDICT: INCORRECT`."""

_VERDICT = re.compile(r"VERDICT:\s*(CORRECT|INCORRECT)\b")


def judge_request(task: QATask, answer: str) -> dict[str, Any]:
    """What the verifier asks the judge: the rubric, then the question, reference and candidate."""
    return {
        "messages": [
            {"role": "system", "content": RUBRIC},
            {
                "role": "user",
                "content": f"Question: {task.question}\nReference answer: {task.expected_answer}\n"
                f"Candidate answer: {answer}",
            },
        ],
        "temperature": 0,
        "max_tokens": 300,
    }


def final_message(response: Any) -> str | None:
    """The text of the last assistant message in a Responses-API output, if any."""
    output = response.get("output") if isinstance(response, dict) else None
    for item in reversed(output if isinstance(output, list) else []):
        if isinstance(item, dict) and item.get("type") == "message" and item.get("role") == "assistant":
            content = item.get("content")
            if isinstance(content, str):
                return content
            parts = content if isinstance(content, list) else []
            return "".join(p.get("text", "") for p in parts if isinstance(p, dict)) or None
    return None


#: How many words a short answer may say beyond the longest accepted form, for the rules. A longer
#: one could be a pasted note, which holds the reference word for word (the notes run 18 words and up).
RULES_EXTRA_WORDS = 12


def rules_verdict(task: QATask, answer: str) -> bool:
    """The rule-based scorer: the answer is short (at most `RULES_EXTRA_WORDS` words beyond the
    longest accepted form) and the reference (or an alias) appears in it, word for word."""
    accepted = [
        [w for w in _words(form) if w not in ("a", "an", "the")]
        for form in (task.expected_answer, *task.aliases)
    ]
    said = [w for w in _words(answer) if w not in ("a", "an", "the")]
    if len(said) > max(map(len, accepted)) + RULES_EXTRA_WORDS:
        return False
    # A form with no words ("?", "—") says nothing to match: it would match every answer.
    return any(form and f" {' '.join(form)} " in f" {' '.join(said)} " for form in accepted)


@env.verifier
def verify(state: QAState, task: QATask, response: Any, ctx: Context) -> VerifyResult:
    """1.0 iff the judge (or, without one, the rule-based scorer) finds the answer matches the reference."""
    given = state.answer if state.answer is not None else final_message(response)
    if not given or not given.strip():
        return VerifyResult(reward=0.0, details={"scorer": "none", "verdict": "no_answer"})
    if not ctx.can("judge"):
        correct = rules_verdict(task, given)
        verdict = "correct" if correct else "incorrect"
        details = {"scorer": "rules", "verdict": verdict, "answer": given}
        return VerifyResult(reward=float(correct), details=details)
    reply = ctx.effect("judge", judge_request(task, given))
    found = _VERDICT.findall(reply["text"])
    if not found:
        failure = {"kind": "judge", "error": "the judge's reply has no `VERDICT: CORRECT|INCORRECT` line"}
        return VerifyResult(reward=0.0, details={"scorer": "judge", "answer": given}, failure=failure)
    verdict = found[-1].lower()
    return VerifyResult(
        reward=float(verdict == "correct"), details={"scorer": "judge", "verdict": verdict, "answer": given}
    )


def oracle(row: dict[str, Any]) -> Generator[tuple[str, dict[str, Any]], Any, None]:
    """A perfect agent for `row`: yields (tool, args), is sent each observation; searches, reads, answers."""
    task = env.parse_task(row)
    found = yield ("search", {"query": task.question})
    hits = found.get("results", []) if isinstance(found, dict) else []
    doc_id = task.source_doc or (hits[0]["doc_id"] if hits else None)
    if doc_id is not None:
        yield ("read", {"doc_id": doc_id})
    yield ("answer", {"text": task.expected_answer})
