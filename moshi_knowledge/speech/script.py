"""Which texts get spoken, by whom: every question alone (user / held-out voice) and every answer (Moshi)."""

from __future__ import annotations

from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.schema import Line


def question_line_id(qid: str, phrasing: int = 0) -> str:
    return f"q-{qid}-{phrasing}"


def answer_line_id(qid: str) -> str:
    return f"a-{qid}"


def question_lines(qa: QASet) -> list[Line]:
    """Every phrasing of every train/eval question in rotating user voices; paraphrases in the held-out voice."""
    lines: list[Line] = []
    turn = 0
    for item in [*qa.train, *qa.eval]:
        for k, text in enumerate(item.phrasings):
            lines.append(Line(question_line_id(item.id, k), text, "user", voice_index=turn))
            turn += 1
    for item in qa.paraphrase:
        lines.append(Line(question_line_id(item.id), item.question, "heldout"))
    return lines


def answer_lines(qa: QASet) -> list[Line]:
    return [Line(answer_line_id(item.id), item.answer, "moshi") for item in [*qa.train, *qa.eval]]
