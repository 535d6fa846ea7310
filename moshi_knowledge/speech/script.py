"""Which texts get spoken, by whom: every question alone (user / held-out voice) and every answer (Moshi)."""

from __future__ import annotations

from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.schema import Line


def question_line_id(qid: str, phrasing: int = 0) -> str:
    return f"q-{qid}-{phrasing}"


def answer_line_id(qid: str) -> str:
    return f"a-{qid}"


def question_lines(qa: QASet, voices_per_fact: int | None = None) -> list[Line]:
    """Every phrasing of every train/eval/retain/unseen_facts/heldout_facts question in rotating user voices (the
    never-trained tiers last, so the other tiers keep their voices); paraphrases and unseen_voice in the held-out voice;
    unseen_wording in the voice of its training item's first phrasing. The shifted tier has no line: it plays its
    training item's own recording (speaking it again would not give the same samples). Nor has a spiked-in
    heldout_facts question (qa.spike_in): its training item's first phrasing is that question in the voice the tier
    asks it in, and the tier plays that recording, the very samples trained; the item's other phrasings come after
    every other line, so a calibration run voices every other question as the run without spike-in does.

    An item's phrasings take the next `voices_per_fact` voices in turn (`tts.voices_per_fact`; null: one voice
    per phrasing), so 1 speaks a fact in one voice however often it is phrased."""
    lines: list[Line] = []
    voice_of: dict[str, int] = {}
    spiked_in = {q.source_id: q.id for q in qa.heldout_facts if q.spiked}

    def width(n_phrasings: int) -> int:
        return n_phrasings if voices_per_fact is None else max(1, min(voices_per_fact, n_phrasings))

    turn = 0
    for item in [*(q for q in qa.train if q.id not in spiked_in), *qa.eval, *qa.retain, *qa.unseen_facts,
                 *qa.heldout_facts]:
        voice_of[item.id] = turn
        w = width(len(item.phrasings))
        if not (item.tier == "heldout_facts" and item.spiked):
            lines += [Line(question_line_id(item.id, k), text, "user", voice_index=turn + k % w)
                      for k, text in enumerate(item.phrasings)]
        turn += w
    for item in (q for q in qa.train if q.id in spiked_in):
        voice_of[item.id] = voice_of[spiked_in[item.id]]
        w = width(len(item.phrasings) - 1)
        lines += [Line(question_line_id(item.id, k), text, "user",
                       voice_index=turn + (k - 1) % w if k else voice_of[item.id])
                  for k, text in enumerate(item.phrasings)]
        turn += w if len(item.phrasings) > 1 else 0
    for item in [*qa.paraphrase, *qa.unseen_voice]:
        lines.append(Line(question_line_id(item.id), item.question, "heldout"))
    for item in qa.unseen_wording:
        lines.append(Line(question_line_id(item.id), item.question, "user", voice_index=voice_of[item.source_id]))
    return lines


def retain_distractor_line_id(k: int) -> str:
    return f"a-retain-alt-{k:03d}"


def answer_lines(qa: QASet) -> list[Line]:
    """Every gold answer in Moshi's voice, plus each retain distractor that no gold answer says: other tiers draw
    distractors from golds, the retain tier has its own, and every candidate needs Moshi-voice speech for scoring."""
    lines = [Line(answer_line_id(item.id), item.answer, "moshi")
             for item in [*qa.train, *qa.eval, *qa.retain, *qa.unseen_facts, *qa.heldout_facts]]
    spoken = {line.text for line in lines}
    extra = dict.fromkeys(d for item in qa.retain for d in item.distractors if d not in spoken)
    return lines + [Line(retain_distractor_line_id(k), text, "moshi") for k, text in enumerate(extra)]
