"""The moshi-finetune dataset format (write/read round trip) and the validator, on real wav files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from moshi_knowledge.dataset.format import (
    CONVERSATIONS,
    EVAL_MANIFEST,
    META,
    QUESTIONS,
    TRAIN_MANIFEST,
    ConversationEntry,
    DatasetMeta,
    read_alignments,
    read_conversations_index,
    read_manifest,
    read_meta,
    write_conversation,
    write_conversations_index,
    write_manifest,
    write_meta,
)
from moshi_knowledge.dataset.validate import validate_dataset
from moshi_knowledge.errors import UserError
from moshi_knowledge.speech.audio import read_mono_wav, read_stereo, write_mono_wav
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE, USER_SPEAKER, Conversation, SpeakerWord, Turn
from moshi_knowledge.validate import main

QUANT = 0.5 / 32768 + 1e-7  # int16 rounding error bound
SEG = 0.5  # seconds of each question and answer
GAP = 0.25


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def _tone(n: int, hz: float = 220.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * hz * np.arange(n) / SAMPLE_RATE)).astype(np.float32)


def _conversation(conv_id: str, split: str, qids: list[str], seed: int = 0) -> Conversation:
    """Per turn: the question (noise) on the right, a gap, then the answer (a tone) on the left."""
    rng = np.random.default_rng(seed)
    seg, gap = int(SEG * SAMPLE_RATE), int(GAP * SAMPLE_RATE)
    left, right, words, turns = [np.zeros(gap, np.float32)], [np.zeros(gap, np.float32)], [], []
    t = GAP
    for qid in qids:
        q, a = (t, t + SEG), (t + SEG + GAP, t + 2 * SEG + GAP)
        left += [np.zeros(seg + gap, np.float32), _tone(seg), np.zeros(gap, np.float32)]
        right += [_noise(seg, rng), np.zeros(gap + seg + gap, np.float32)]
        words += [
            SpeakerWord("when", q[0], q[0] + SEG / 2, USER_SPEAKER),
            SpeakerWord("founded?", q[0] + SEG / 2, q[1], USER_SPEAKER),
            SpeakerWord("in", a[0], a[0] + SEG / 2, MOSHI_SPEAKER),
            SpeakerWord("1204.", a[0] + SEG / 2, a[1], MOSHI_SPEAKER),
        ]
        turns.append(Turn(qid, q, a))
        t = a[1] + GAP
    left_audio, right_audio = np.concatenate(left), np.concatenate(right)
    return Conversation(conv_id, split, left_audio, right_audio, words, turns)  # type: ignore[arg-type]


def _index_item(path: str, split: str, turns: list[Turn]) -> dict:
    turn_rows = [{"qid": t.qid, "question": list(t.question), "answer": list(t.answer)} for t in turns]
    return {"path": path, "split": split, "turns": turn_rows}


def _build_dataset(root: Path, layout: str = "dialogue") -> None:
    """A complete small dataset written with the format helpers, as the dataset stage would."""
    convs = [
        _conversation("train-0000", "train", ["train-000", "train-001"], seed=0),
        _conversation("train-0001", "train", ["train-002"], seed=1),
        _conversation("eval-0000", "eval", ["eval-000"], seed=2),
    ]
    rows: dict[str, list] = {"train": [], "eval": []}
    entries, questions = [], []
    for conv in convs:
        rel = f"conv/{conv.id}.wav"
        rows[conv.split].append(write_conversation(conv, conv.words, root, rel))
        entries.append(_index_item(rel, conv.split, conv.turns))
        for turn in conv.turns:
            audio = f"questions/q-{turn.qid}.wav"
            write_mono_wav(_noise(SAMPLE_RATE // 2, np.random.default_rng(9)), root / audio)
            questions.append({"id": turn.qid, "tier": conv.split, "text": "When?", "audio": audio, "gold": "1204"})
    write_manifest(root / TRAIN_MANIFEST, rows["train"])
    write_manifest(root / EVAL_MANIFEST, rows["eval"])
    write_conversations_index(root / CONVERSATIONS, entries)
    write_meta(root / META, DatasetMeta(layout, 0.3, 0.4))  # type: ignore[arg-type]
    (root / QUESTIONS).write_text(json.dumps({"questions": questions}), encoding="utf-8")


@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("good") / "dataset"
    _build_dataset(root)
    return root


@pytest.fixture
def dataset(good_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the good dataset for a test to break."""
    return Path(shutil.copytree(good_dataset, tmp_path / "dataset"))


# ---- format round trip -------------------------------------------------------------------------------------


def test_write_conversation_round_trip(tmp_path: Path) -> None:
    conv = _conversation("train-0007", "train", ["train-000", "train-001"])
    row = write_conversation(conv, conv.words, tmp_path, "conv/train-0007.wav")
    wav = tmp_path / "conv" / "train-0007.wav"
    assert row == {"path": "conv/train-0007.wav", "duration": len(conv.left) / SAMPLE_RATE}
    info = sf.info(wav)
    assert (info.channels, info.samplerate, info.subtype, info.frames) == (2, SAMPLE_RATE, "PCM_16", len(conv.left))
    left, right, rate = read_stereo(wav)
    assert rate == SAMPLE_RATE and left.dtype == np.float32
    np.testing.assert_allclose(left, conv.left, atol=QUANT, rtol=0)  # channel 0 is Moshi (the tone)
    np.testing.assert_allclose(right, conv.right, atol=QUANT, rtol=0)  # channel 1 is the user (the noise)
    assert read_alignments(wav.with_suffix(".json")) == conv.words
    raw = json.loads(wav.with_suffix(".json").read_text())
    assert raw == {"alignments": [[w.word, [w.start, w.end], w.speaker] for w in conv.words]}
    assert sorted(p.name for p in wav.parent.iterdir()) == ["train-0007.json", "train-0007.wav"]  # no temp files


def test_write_conversation_rejects_unequal_channels_and_bad_paths(tmp_path: Path) -> None:
    conv = _conversation("c", "train", ["q"])
    uneven = Conversation("c", "train", conv.left, conv.right[:-1], conv.words, conv.turns)
    with pytest.raises(ValueError, match="left has"):
        write_conversation(uneven, conv.words, tmp_path, "c.wav")
    with pytest.raises(ValueError, match="relative path ending in .wav"):
        write_conversation(conv, conv.words, tmp_path, "c.flac")
    assert list(tmp_path.iterdir()) == []


def test_full_scale_samples_clip_instead_of_wrapping(tmp_path: Path) -> None:
    samples = np.array([1.0, 1.5, -1.0, -2.0, 0.25], dtype=np.float32)
    write_mono_wav(samples, tmp_path / "q.wav")
    back, rate = read_mono_wav(tmp_path / "q.wav")
    assert rate == SAMPLE_RATE
    np.testing.assert_allclose(back, [32767 / 32768, 32767 / 32768, -1.0, -1.0, 0.25], atol=1e-7)


def test_manifest_round_trip_and_bad_line(tmp_path: Path) -> None:
    rows = [{"path": "conv/a.wav", "duration": 2.5}, {"path": "conv/b.wav", "duration": 3.0}]
    write_manifest(tmp_path / "train.jsonl", rows)
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert read_manifest(tmp_path / "train.jsonl") == rows
    (tmp_path / "bad.jsonl").write_text('{"path": "a.wav", "duration": 1}\n{"path": "b.wav"}\n')
    with pytest.raises(UserError, match="bad.jsonl line 2"):
        read_manifest(tmp_path / "bad.jsonl")


def test_index_and_meta_round_trip(tmp_path: Path) -> None:
    items = [_index_item("conv/a.wav", "train", [Turn("train-000", (0.25, 0.75), (1.0, 1.5))])]
    write_conversations_index(tmp_path / CONVERSATIONS, items)
    assert json.loads((tmp_path / CONVERSATIONS).read_text()) == items
    assert read_conversations_index(tmp_path / CONVERSATIONS) == [
        ConversationEntry("conv/a.wav", "train", [Turn("train-000", (0.25, 0.75), (1.0, 1.5))])
    ]
    with pytest.raises(UserError, match="malformed conversation index"):
        write_conversations_index(tmp_path / "bad.json", [{"path": "conv/a.wav", "split": "train"}])
    with pytest.raises(UserError, match="split 'train' or 'eval'"):
        write_conversations_index(tmp_path / "bad.json", [{**items[0], "split": "test"}])
    assert not (tmp_path / "bad.json").exists()
    write_meta(tmp_path / META, DatasetMeta("mono_duplicate", 0.3, 0.0))
    assert read_meta(tmp_path / META) == DatasetMeta("mono_duplicate", 0.3, 0.0, SAMPLE_RATE)
    with pytest.raises(ValueError):
        write_meta(tmp_path / META, DatasetMeta("stereo", 0.3, 0.4))  # type: ignore[arg-type]
    # a dataset written before meta.json carried the layout's timing is refused with the fix
    (tmp_path / META).write_text(json.dumps({"layout": "dialogue", "sample_rate": SAMPLE_RATE}))
    with pytest.raises(UserError, match="(?s)gap_sec.*rebuild the dataset"):
        read_meta(tmp_path / META)


# ---- validator ---------------------------------------------------------------------------------------------


def test_validator_passes_good_dataset(good_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_dataset(good_dataset) == []
    assert main([str(good_dataset)]) == 0
    assert capsys.readouterr().out.strip() == "OK: 3 conversations"


def _problems_about(root: Path, file: str) -> list[str]:
    problems = validate_dataset(root)
    assert problems, "the validator missed the breakage"
    return [p for p in problems if p.startswith(f"{file}: ")]


def test_mono_conversation_wav(dataset: Path) -> None:
    sf.write(dataset / "conv/train-0000.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE, subtype="PCM_16")
    assert _problems_about(dataset, "conv/train-0000.wav") == ["conv/train-0000.wav: 1 channel(s), expected stereo"]


def test_wrong_sample_rate(dataset: Path) -> None:
    sf.write(dataset / "conv/eval-0000.wav", np.zeros((16000, 2), np.float32), 16000, subtype="PCM_16")
    assert _problems_about(dataset, "conv/eval-0000.wav") == [
        "conv/eval-0000.wav: sample rate 16000 Hz, expected 24000"
    ]


def test_missing_alignment_json_and_missing_wav(dataset: Path) -> None:
    (dataset / "conv/train-0001.json").unlink()
    (dataset / "conv/eval-0000.wav").unlink()
    problems = validate_dataset(dataset)
    assert "conv/train-0001.json: missing (every wav needs its alignment JSON)" in problems
    assert "conv/eval-0000.wav: listed in a manifest but missing" in problems


def test_bad_alignment_spans_order_and_speaker(dataset: Path) -> None:
    path = dataset / "conv/train-0000.json"
    rows = json.loads(path.read_text())["alignments"]
    duration = sf.info(dataset / "conv/train-0000.wav").duration
    rows[1][1] = [rows[1][1][0], duration + 0.5]  # ends after the audio
    rows[2][1] = [rows[2][1][1], rows[2][1][0]]  # ends before it starts
    rows[3] = ["1204.", [0.0, 0.1], "SPEAKER_0"]  # starts before the word ahead of it; unknown speaker
    path.write_text(json.dumps({"alignments": rows}))
    problems = _problems_about(dataset, "conv/train-0000.json")
    assert any("bad span for 'founded?'" in p and "(and 1 more like it)" in p for p in problems)
    assert any("not sorted by start" in p for p in problems)
    assert any("unknown speaker 'SPEAKER_0' for '1204.'" in p for p in problems)


def test_wrong_manifest_duration(dataset: Path) -> None:
    rows = read_manifest(dataset / TRAIN_MANIFEST)
    rows[1]["duration"] += 0.5
    write_manifest(dataset / TRAIN_MANIFEST, rows)
    problems = _problems_about(dataset, "conv/train-0001.wav")
    assert len(problems) == 1 and "manifest duration" in problems[0]


def test_one_frame_of_duration_slack_is_accepted(dataset: Path) -> None:
    rows = read_manifest(dataset / TRAIN_MANIFEST)
    rows[0]["duration"] += 0.5 / SAMPLE_RATE
    write_manifest(dataset / TRAIN_MANIFEST, rows)
    assert validate_dataset(dataset) == []


def test_channel_bleed_in_dialogue_layout(dataset: Path) -> None:
    conv = _conversation("train-0000", "train", ["train-000", "train-001"], seed=0)
    q0, q1 = (int(s * SAMPLE_RATE) for s in conv.turns[0].question)
    conv.left[q0:q1] += 0.05 * _tone(q1 - q0, hz=440)  # Moshi's channel hears the question
    a0, a1 = (int(s * SAMPLE_RATE) for s in conv.turns[1].answer)
    conv.right[a0:a1] += _noise(a1 - a0, np.random.default_rng(5))  # the user talks over the answer
    write_conversation(conv, conv.words, dataset, "conv/train-0000.wav")
    problems = _problems_about(dataset, "conv/train-0000.wav")
    assert any("turn train-000 question" in p and "left (Moshi) channel is not silent" in p for p in problems)
    assert any("turn train-001 answer" in p and "right (user) channel is not silent" in p for p in problems)
    assert any("has sound on the right channel" in p and "(and 1 more like it)" in p for p in problems)
    assert len(problems) == 3
    # the same audio is legitimate in the mono_duplicate layout, which does not separate channels
    write_meta(dataset / META, DatasetMeta("mono_duplicate", 0.3, 0.0))
    assert validate_dataset(dataset) == []


def test_moshi_words_misplaced_off_the_left_channel(dataset: Path) -> None:
    conv = _conversation("train-0001", "train", ["train-002"], seed=1)
    q = conv.turns[0].question
    shifted = [
        SpeakerWord(w.word, q[0], q[1], w.speaker) if w.speaker == MOSHI_SPEAKER else w for w in conv.words
    ]
    shifted.sort(key=lambda w: w.start)
    write_conversation(conv, shifted, dataset, "conv/train-0001.wav")
    problems = _problems_about(dataset, "conv/train-0001.wav")
    assert any("SPEAKER_MAIN word 'in'" in p and "silent on the left channel" in p for p in problems)
    assert any("has sound on the right channel" in p for p in problems)


def test_no_moshi_words_means_empty_text_stream(dataset: Path) -> None:
    conv = _conversation("eval-0000", "eval", ["eval-000"], seed=2)
    write_conversation(conv, [w for w in conv.words if w.speaker == USER_SPEAKER], dataset, "conv/eval-0000.wav")
    assert _problems_about(dataset, "conv/eval-0000.json") == [
        "conv/eval-0000.json: no SPEAKER_MAIN words: Moshi's text stream would be empty"
    ]


def test_question_audio_checks(dataset: Path) -> None:
    (dataset / "questions/q-train-001.wav").unlink()
    sf.write(dataset / "questions/q-eval-000.wav", np.zeros((100, 2), np.float32), SAMPLE_RATE)
    problems = validate_dataset(dataset)
    assert problems == [
        f"questions/q-train-001.wav: missing (referenced by {QUESTIONS} question 1, id 'train-001')",
        "questions/q-eval-000.wav: 2 channel(s), expected mono",
    ]


def test_index_and_meta_problems(dataset: Path) -> None:
    items = json.loads((dataset / CONVERSATIONS).read_text())
    items[0]["split"] = "eval"
    items[0]["turns"][0]["answer"] = [5.0, 99.0]
    write_conversations_index(dataset / CONVERSATIONS, items)
    (dataset / META).unlink()
    problems = validate_dataset(dataset)
    assert f"{CONVERSATIONS}: conv/train-0000.wav (eval) is not in eval.jsonl" in problems
    assert any(p.startswith(f"{CONVERSATIONS}: conv/train-0000.wav: turn train-000 answer span") for p in problems)
    assert f"{META}: missing (it says which layout the dataset has)" in problems


def test_missing_manifest(dataset: Path) -> None:
    (dataset / EVAL_MANIFEST).unlink()
    problems = validate_dataset(dataset)
    assert "eval.jsonl: missing" in problems
    assert f"{CONVERSATIONS}: conv/eval-0000.wav (eval) is not in eval.jsonl" in problems


def test_cli_reports_problems_and_non_datasets(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (dataset / "conv/train-0001.json").unlink()
    assert main([str(dataset)]) == 1
    out = capsys.readouterr()
    assert "conv/train-0001.json: missing" in out.out and "1 problem(s)" in out.err
    empty = tmp_path / "not-a-dataset"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "is not a dataset folder" in capsys.readouterr().err
    with pytest.raises(UserError):
        validate_dataset(tmp_path / "nowhere")


def test_cli_runs_as_module(good_dataset: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "moshi_knowledge.validate", str(good_dataset)], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout.strip()) == (0, "OK: 3 conversations")


def test_moshi_finetune_block_trains_on_the_train_split_alone(good_dataset: Path) -> None:
    """moshi-finetune reads every *.jsonl under a folder it is given: the printed block names the train manifest
    itself, so the files it reads for training are train.jsonl alone, and eval.jsonl only as eval data."""
    result = subprocess.run([sys.executable, "-m", "moshi_knowledge.validate", str(good_dataset), "--moshi-finetune"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout.split("\n", 1)[1])["data"]

    def moshi_finetune_reads(path: str) -> list[Path]:  # a folder: every jsonl below it; a file: that file
        p = Path(path)
        return sorted(p.rglob("*jsonl")) if p.is_dir() else [p]

    assert sorted(good_dataset.rglob("*jsonl")) == [good_dataset / "eval.jsonl", good_dataset / "train.jsonl"]
    assert moshi_finetune_reads(data["train_data"]) == [(good_dataset / "train.jsonl").resolve()]
    assert moshi_finetune_reads(data["eval_data"]) == [(good_dataset / "eval.jsonl").resolve()]
