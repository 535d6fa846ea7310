"""Read and write the dataset in kyutai-labs/moshi-finetune's format, plus our own index files beside it.

moshi-finetune reads a jsonl manifest of {"path", "duration"} rows (paths relative to the manifest's folder),
one stereo wav per row (channel 0 = Moshi, channel 1 = user) and, beside each wav, a JSON of word times
{"alignments": [[word, [start, end], speaker], ...]}; it trains Moshi's text stream only on "SPEAKER_MAIN"
words. Our extras (conversations.json, meta.json, questions.json) sit beside the manifests and are ignored
by moshi-finetune, so the same folder trains there unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_json, atomic_write_text, read_json
from moshi_knowledge.speech.audio import write_stereo_wav
from moshi_knowledge.speech.schema import SAMPLE_RATE, Conversation, SpeakerWord, Turn

TRAIN_MANIFEST = "train.jsonl"
EVAL_MANIFEST = "eval.jsonl"
CONVERSATIONS = "conversations.json"
META = "meta.json"
QUESTIONS = "questions.json"

LayoutName = Literal["dialogue", "mono_duplicate", "narration", "mixed"]
# Layouts whose Q/A turns put the question only on the user's channel and the answer only on Moshi's.
QA_CHANNEL_LAYOUTS = ("dialogue", "narration", "mixed")


@dataclass(frozen=True)
class ConversationEntry:
    """Where each Q/A turn sits in one conversation wav, so training and eval can find it."""

    path: str  # relative to the dataset folder, as in the manifests
    split: Literal["train", "eval"]
    turns: list[Turn]


@dataclass(frozen=True)
class DatasetMeta:
    """meta.json: the layout and the silences it put around each turn, which recall prompts must mirror."""

    layout: LayoutName
    lead_sec: float  # silence before a conversation's first turn
    gap_sec: float  # silence between a question's audio and its answer's
    sample_rate: int = SAMPLE_RATE


def write_conversation(
    conv: Conversation, alignments: list[SpeakerWord], dataset_dir: Path, rel_path: str
) -> dict[str, Any]:
    """Write `rel_path` (stereo wav, left = Moshi) and its alignment JSON; return the manifest row."""
    if not rel_path.endswith(".wav") or Path(rel_path).is_absolute():
        raise ValueError(f"conversation {conv.id}: rel_path {rel_path!r} must be a relative path ending in .wav")
    wav_path = Path(dataset_dir) / rel_path
    write_stereo_wav(conv.left, conv.right, wav_path)
    write_alignments(wav_path.with_suffix(".json"), alignments)
    return {"path": rel_path, "duration": len(conv.left) / SAMPLE_RATE}


def write_alignments(json_path: Path, words: list[SpeakerWord]) -> None:
    atomic_write_json(json_path, {"alignments": [[w.word, [w.start, w.end], w.speaker] for w in words]})


def read_alignments(json_path: Path) -> list[SpeakerWord]:
    """Parse moshi-finetune's alignment JSON; a malformed file raises UserError naming the file and entry."""
    data = _read_json_file(json_path)
    entries = data.get("alignments") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{json_path}: expected an object with an 'alignments' list", fix="rewrite the dataset")
    words = []
    for i, entry in enumerate(entries):
        try:
            word, (start, end), speaker = entry
            words.append(SpeakerWord(str(word), float(start), float(end), str(speaker)))
        except (TypeError, ValueError):
            raise UserError(
                f"{json_path}: alignment {i} is {entry!r}, expected [word, [start, end], speaker]",
                fix="rewrite the dataset",
            ) from None
    return words


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps({"path": r["path"], "duration": r["duration"]}) + "\n" for r in rows))


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a jsonl manifest; a malformed line raises UserError naming the file and line."""
    rows = []
    for lineno, raw in enumerate(Path(path).read_bytes().split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{path} line {lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                fix="save the manifest as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {lineno}: invalid JSON ({e.msg})", fix="rewrite the dataset") from None
        if not (isinstance(row, dict) and isinstance(row.get("path"), str) and _is_number(row.get("duration"))):
            raise UserError(
                f"{path} line {lineno}: expected {{\"path\": str, \"duration\": seconds}}, got {line.strip()}",
                fix="rewrite the dataset",
            )
        rows.append(row)
    return rows


def write_conversations_index(path: Path, items: list[dict[str, Any]]) -> None:
    """Items are {"path", "split", "turns": [{"qid", "question": [s, e], "answer": [s, e]}]}; checked before writing."""
    entries = _parse_index(items, path)
    atomic_write_json(
        path,
        [
            {
                "path": e.path,
                "split": e.split,
                "turns": [{"qid": t.qid, "question": list(t.question), "answer": list(t.answer)} for t in e.turns],
            }
            for e in entries
        ],
    )


def read_conversations_index(path: Path) -> list[ConversationEntry]:
    return _parse_index(_read_json_file(path), path)


def _parse_index(items: Any, path: Path) -> list[ConversationEntry]:
    try:
        entries = [
            ConversationEntry(
                path=item["path"],
                split=item["split"],
                turns=[Turn(t["qid"], _span(t["question"]), _span(t["answer"])) for t in item["turns"]],
            )
            for item in items
        ]
    except (TypeError, KeyError, ValueError) as e:
        raise UserError(
            f"{path}: malformed conversation index ({type(e).__name__}: {e})", fix="rewrite the dataset"
        ) from None
    bad = [e.path for e in entries if not isinstance(e.path, str) or e.split not in ("train", "eval")]
    if bad:
        raise UserError(
            f"{path}: entry {bad[0]!r} needs a str path and split 'train' or 'eval'", fix="rewrite the dataset"
        )
    return entries


def write_meta(path: Path, meta: DatasetMeta) -> None:
    if meta.layout not in get_args(LayoutName):
        raise ValueError(f"layout {meta.layout!r} is not one of {get_args(LayoutName)}")
    atomic_write_json(path, asdict(meta))


def read_meta(path: Path) -> DatasetMeta:
    data = _read_json_file(path)
    ok = (isinstance(data, dict) and data.get("layout") in get_args(LayoutName)
          and isinstance(data.get("sample_rate"), int)
          and all(_is_number(data.get(k)) and data[k] >= 0 for k in ("lead_sec", "gap_sec")))
    if not ok:
        raise UserError(
            f"{path}: expected {{\"layout\": one of {list(get_args(LayoutName))}, \"lead_sec\": seconds >= 0, "
            f"\"gap_sec\": seconds >= 0, \"sample_rate\": int}}, got {data!r}",
            fix="rebuild the dataset (the dataset stage writes the layout's timing), or add the missing keys",
        )
    return DatasetMeta(layout=data["layout"], lead_sec=float(data["lead_sec"]), gap_sec=float(data["gap_sec"]),
                       sample_rate=data["sample_rate"])


def _read_json_file(path: Path) -> Any:
    try:
        return read_json(path)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})", fix="rewrite the dataset") from None


def _span(value: Any) -> tuple[float, float]:
    start, end = value
    return float(start), float(end)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
