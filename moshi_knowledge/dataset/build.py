"""The dataset stage: arrange spoken lines into stereo conversations and write the moshi-finetune format."""

from __future__ import annotations

import shutil
from pathlib import Path

from moshi_knowledge.dataset.facts import conversation_facts, write_conversation_facts
from moshi_knowledge.dataset.format import META, DatasetMeta, write_conversations_index, write_manifest, write_meta
from moshi_knowledge.dataset.source import DatasetSource, write_laid_out
from moshi_knowledge.dataset.validate import validate_dataset
from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_json
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.layout_base import Aligner, Layout
from moshi_knowledge.speech.script import question_line_id
from moshi_knowledge.speech.synthesize import load_utterance
from moshi_knowledge.world.schema import Story


def build_dataset(qa: QASet, story: Story, layout: Layout, aligner: Aligner, source: DatasetSource, tts_dir: Path,
                  out: Path) -> None:
    """Write train/eval manifests, conversation wavs + alignments, question audio, questions.json and the facts each
    conversation states (dataset/facts.py).

    `source` writes the training split; the eval split is always the layout's, of the run's eval Q/A. `story` is
    what the narration layouts narrate."""
    speech = _SpeechStore(tts_dir)
    conversations = layout.compose(qa, speech, story)
    written = {"train": source.write_train([c for c in conversations if c.split == "train"], aligner, out),
               "eval": [write_laid_out(c, aligner, out) for c in conversations if c.split == "eval"]}
    for split, items in written.items():
        write_manifest(out / f"{split}.jsonl", [w.row for w in items])
    write_conversations_index(out / "conversations.json", [w.entry for split in written.values() for w in split])
    write_meta(out / META, DatasetMeta(layout.name, layout.lead_sec, layout.gap_sec))
    stated = conversation_facts(conversations, qa, story, layout, speech)
    write_conversation_facts(out, {c.id: stated[c.id] for c in conversations
                                   if c.split == "eval" or source.trains_on_layout})
    _write_questions(qa, tts_dir, out)
    problems = validate_dataset(out)
    if problems:
        shown = "\n  ".join(problems[:20])
        raise UserError(f"the dataset built in {out} failed validation:\n  {shown}",
                        "this is a bug in a layout, an aligner or the dataset import; please report it with the config")


def _write_questions(qa: QASet, tts_dir: Path, out: Path) -> None:
    """questions.json: everything a later eval needs, with each question's audio alone (first phrasing)."""
    (out / "questions").mkdir(exist_ok=True)
    entries = []
    for item in qa.all_items():
        # the shifted tier and a spiked-in held-out question play their training item's recording
        plays_trained = item.tier == "shifted" or (item.tier == "heldout_facts" and item.spiked)
        line_id = question_line_id(item.source_id if plays_trained else item.id)
        rel = f"questions/{line_id}.wav"
        shutil.copyfile(tts_dir / f"{line_id}.wav", out / rel)
        entries.append({
            "id": item.id,
            "tier": item.tier,
            "text": item.question,
            "audio": rel,
            "gold": item.answer,
            "aliases": item.aliases,
            "distractors": item.distractors,
            "untrained_candidates": item.untrained_candidates,
            "balanced": item.balanced,
            "spiked": item.spiked,
            "relation": item.relation,
            "fact_ids": item.fact_ids,
            "entity_ids": item.entity_ids,
            "answer_type": item.answer_type,
            "source_id": item.source_id,
            "shift_sec": item.shift_sec,
        })
    atomic_write_json(out / "questions.json", {"questions": entries})


class _SpeechStore(dict):
    """A read-only mapping line_id -> Utterance that loads each utterance from the tts stage on first use."""

    def __init__(self, tts_dir: Path) -> None:
        super().__init__()
        self._dir = tts_dir

    def __missing__(self, line_id: str):
        if not (self._dir / f"{line_id}.wav").exists():
            raise KeyError(line_id)
        utt = load_utterance(self._dir, line_id)
        self[line_id] = utt
        return utt
