"""`dataset=moshi_finetune dataset.path=...`: a run trains on an existing moshi-finetune dataset of real speech.

The dataset here is written as another tool would: espeak speech, one conversation at 16 kHz, one listed by an
absolute path outside the folder, a manifest of its own name. Bad datasets stop the app before any stage with
exit 2 naming the file, and the validator's --moshi-finetune mode lists the same problems.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from conftest import TINY_RUN, compose_cfg, refused_in_process, run_app
from moshi_knowledge.__main__ import main
from moshi_knowledge.dataset.format import read_manifest
from moshi_knowledge.dataset.moshi_finetune import MoshiFinetuneDataset
from moshi_knowledge.evaluation.pitch import median_f0, semitones
from moshi_knowledge.speech.espeak import EspeakTTS
from moshi_knowledge.speech.schema import SAMPLE_RATE, Voice
from moshi_knowledge.stages import STAGES
from moshi_knowledge.validate import main as validate_main

MOSHI = Voice("en+f2", 160, 80)  # high and female: unlike the run's own (male, low) Moshi voice
USER = Voice("en-us+m1", 170, 60)
# (user line, Moshi's reply, sample rate, listed by an absolute path)
CONVERSATIONS = [
    ("Hello, who is there?", "It is me, the keeper of the old lighthouse.", SAMPLE_RATE, False),
    ("What do you keep in the tower?", "A lamp, a map of the coast and a very patient cat.", 16_000, False),
    ("Do ships still pass by at night?", "Every night, and I count them all before dawn.", SAMPLE_RATE, True),
]
FRAME = 1920  # Mimi samples per frame at 24 kHz


def _conversation(tts: EspeakTTS, user_text: str, moshi_text: str) -> tuple[np.ndarray, list]:
    """Stereo [n, 2] at 24 kHz: the user speaks on the right, then Moshi on the left; Moshi's word times."""
    user, moshi = tts.synthesize(user_text, USER), tts.synthesize(moshi_text, MOSHI)
    lead, gap = round(0.3 * SAMPLE_RATE), round(0.4 * SAMPLE_RATE)
    start = lead + len(user.samples) + gap
    stereo = np.zeros((start + len(moshi.samples) + lead, 2), np.float32)
    stereo[lead:lead + len(user.samples), 1] = user.samples
    stereo[start:start + len(moshi.samples), 0] = moshi.samples
    offset = start / SAMPLE_RATE
    words = [[w.word, [w.start + offset, w.end + offset], "SPEAKER_MAIN"] for w in moshi.words]
    words += [[w.word, [w.start + lead / SAMPLE_RATE, w.end + lead / SAMPLE_RATE], "SPEAKER_USER"]
              for w in user.words]
    return stereo, sorted(words, key=lambda w: w[1][0])


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A moshi-finetune folder, `data/`, with `my_convs.jsonl`; its third wav lives in `elsewhere/`."""
    root = tmp_path_factory.mktemp("external")
    folder, elsewhere = root / "data", root / "elsewhere"
    (folder / "audio").mkdir(parents=True)
    elsewhere.mkdir()
    tts = EspeakTTS(Voice(MOSHI.name), [Voice(USER.name)], Voice(USER.name))
    rows = []
    for i, (user_text, moshi_text, rate, absolute) in enumerate(CONVERSATIONS):
        stereo, words = _conversation(tts, user_text, moshi_text)
        if rate != SAMPLE_RATE:
            stereo = librosa.resample(stereo.T, orig_sr=SAMPLE_RATE, target_sr=rate).T
        wav = (elsewhere if absolute else folder / "audio") / f"conv{i}.wav"
        sf.write(wav, stereo, rate, subtype="PCM_16")
        wav.with_suffix(".json").write_text(json.dumps({"alignments": words}))
        listed = str(wav) if absolute else f"audio/{wav.name}"
        rows.append({"path": listed, "duration": len(stereo) / rate})
    (folder / "my_convs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _frames_at_24k(wav: Path) -> int:
    """Mimi frames of the wav once at 24 kHz (librosa's resampled length for another rate)."""
    info = sf.info(wav)
    samples = info.frames if info.samplerate == SAMPLE_RATE else math.ceil(info.frames * SAMPLE_RATE / info.samplerate)
    return math.ceil(samples / FRAME)


@pytest.mark.slow
def test_a_run_trains_on_the_imported_conversations_and_measures_recall_and_voice(
        external: Path, tiny_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_app([*TINY_RUN, "dataset=moshi_finetune", f"dataset.path={external}", "eval.voice=true",
                    "eval.recall_every=4", "logger=none", f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"],
                   cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "dataset.path: resampled 1 of 3 conversation(s) to 24000 Hz: audio/conv1.wav (16000 Hz)" in output

    sources = [external / "audio" / "conv0.wav", external / "audio" / "conv1.wav",
               external.parent / "elsewhere" / "conv2.wav"]
    imported = json.loads((run / "dataset" / "imported.json").read_text())
    assert [c["source"] for c in imported["conversations"]] == [str(p.resolve()) for p in sources]
    assert [c["sample_rate"] for c in imported["conversations"]] == [24_000, 16_000, 24_000]
    train = read_manifest(run / "dataset" / "train.jsonl")
    assert len(train) == 3 and read_manifest(run / "dataset" / "eval.jsonl")  # eval: the run's own Q/A
    assert sf.info(run / "dataset" / train[1]["path"]).samplerate == SAMPLE_RATE
    assert (run / "dataset" / train[0]["path"]).read_bytes() == sources[0].read_bytes()  # 24 kHz: as is

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4
    assert summary["data/train_conversations"] == 3
    assert summary["data/train_frames"] == sum(_frames_at_24k(p) for p in sources)
    for tier in ("train", "eval", "unseen_facts"):
        assert summary[f"recall/{tier}/n"] > 0 and 0 <= summary[f"recall/{tier}/mc_acc"] <= 1
    # the voice to keep is the imported conversations' Moshi (high), not the run's own espeak Moshi (low)
    tts = EspeakTTS(Voice(MOSHI.name), [Voice(USER.name)], Voice(USER.name))
    theirs = median_f0([tts.synthesize(moshi, MOSHI).samples for _, moshi, _, _ in CONVERSATIONS], SAMPLE_RATE)
    own_voice = Voice(**compose_cfg([]).tts.moshi_voice)
    ours = median_f0([tts.synthesize(moshi, own_voice).samples for _, moshi, _, _ in CONVERSATIONS], SAMPLE_RATE)
    assert abs(semitones(summary["voice/f0_train_hz"], theirs)) < 1, (summary["voice/f0_train_hz"], theirs)
    assert semitones(summary["voice/f0_train_hz"], ours) > 7, (summary["voice/f0_train_hz"], ours)


def test_the_dataset_stage_key_follows_the_folder(external: Path, tmp_path: Path) -> None:
    """A rewritten wav of the same size (new mtime) or an edited manifest gives the dataset stage a new key."""
    folder = tmp_path / "data"
    shutil.copytree(external, folder)
    cfg = compose_cfg(["dataset=moshi_finetune", f"dataset.path={folder}"])
    key = STAGES["dataset"].extra_key

    first = key(cfg, {})
    assert key(cfg, {}) == first and first == MoshiFinetuneDataset(str(folder)).identity()
    wav = folder / "audio" / "conv0.wav"
    stat = wav.stat()
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = key(cfg, {})
    assert touched != first
    manifest = folder / "my_convs.jsonl"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:2]))
    assert key(cfg, {}) not in (first, touched)
    assert compose_cfg([])["dataset"]["_target_"].endswith("BuiltDataset")
    assert key(compose_cfg([]), {}) == ""  # the built dataset's key is its config and inputs alone


def _rows(folder: Path) -> list[dict]:
    return read_manifest(folder / "my_convs.jsonl")


def _write_rows(folder: Path, rows: list[dict]) -> None:
    (folder / "my_convs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _make_mono(folder: Path) -> None:
    wav = folder / "audio" / "conv0.wav"
    data, rate = sf.read(wav)
    sf.write(wav, data[:, 0], rate)


def _bad_duration(folder: Path) -> None:
    rows = _rows(folder)
    rows[0]["duration"] = 9.0
    _write_rows(folder, rows)


def _bad_entry(folder: Path) -> None:
    (folder / "audio" / "conv0.json").write_text(json.dumps({"alignments": [["word", 1.0, "SPEAKER_MAIN"]]}))


def _no_moshi_words(folder: Path) -> None:
    path = folder / "audio" / "conv1.json"
    words = json.loads(path.read_text())["alignments"]
    path.write_text(json.dumps({"alignments": [w for w in words if w[2] != "SPEAKER_MAIN"]}))


def _span_outside(folder: Path) -> None:
    path = folder / "audio" / "conv0.json"
    words = json.loads(path.read_text())["alignments"]
    words.append(["late", [30.0, 30.5], "SPEAKER_MAIN"])
    path.write_text(json.dumps({"alignments": words}))


# (how the dataset is broken, what the error says, the validator's exit status)
BROKEN: list[tuple[str, Callable[[Path], None], str, int]] = [
    ("missing wav", lambda f: (f / "audio" / "conv0.wav").unlink(),
     "audio/conv0.wav: listed in my_convs.jsonl line 1 but missing", 1),
    ("mono wav", _make_mono, "audio/conv0.wav: 1 channel(s), expected stereo", 1),
    ("missing alignment", lambda f: (f / "audio" / "conv1.json").unlink(),
     "audio/conv1.json: missing (every wav needs its alignment JSON beside it)", 1),
    ("alignment not JSON", lambda f: (f / "audio" / "conv1.json").write_text("{not json"),
     "audio/conv1.json: not valid JSON", 1),
    ("alignment entry malformed", _bad_entry, "audio/conv0.json: alignment 0 is ['word', 1.0, 'SPEAKER_MAIN']", 1),
    ("no Moshi words", _no_moshi_words, "audio/conv1.json: no SPEAKER_MAIN word spoken within the audio", 1),
    ("word after the audio", _span_outside, "audio/conv0.json: 1 word span(s) outside the", 1),
    ("duration mismatch", _bad_duration, "audio/conv0.wav: my_convs.jsonl line 1 says 9.000 s, but the wav lasts", 1),
    ("manifest line not JSON", lambda f: (f / "my_convs.jsonl").write_text('{"path": "audio/conv0.wav"\n'),
     "my_convs.jsonl line 1: invalid JSON", 1),
    ("no manifest", lambda f: (f / "my_convs.jsonl").unlink(), "no *.jsonl manifest in this folder", 2),
    ("several manifests", lambda f: shutil.copyfile(f / "my_convs.jsonl", f / "more.jsonl"),
     "2 manifests (more.jsonl, my_convs.jsonl)", 2),
]


@pytest.mark.parametrize(("name", "breaks", "says", "status"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_dataset_stops_the_app_before_any_stage_and_the_validator_names_it(
        name: str, breaks: Callable[[Path], None], says: str, status: int, external: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "data"
    shutil.copytree(external, folder)
    breaks(folder)

    assert validate_main([str(folder), "--moshi-finetune"]) == status
    shown = capsys.readouterr()
    assert says in shown.out + shown.err

    output = refused_in_process(["dataset=moshi_finetune", f"dataset.path={folder}"], tmp_path, monkeypatch, capsys,
                                caplog)
    assert says in output and "dataset.path=" in output


def test_the_validator_accepts_the_sound_dataset_and_prints_its_data_block(external: Path, capsys) -> None:
    assert validate_main([str(external), "--moshi-finetune"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 3 conversations")
    assert "2 at 24000 Hz, 1 at 16000 Hz (resampled on import)" in out
    assert f"train_data: {(external / 'my_convs.jsonl').resolve()}" in out


def test_an_unset_or_absent_path_is_named(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    for path_args, says in (([], "dataset.path: no value"),
                            ([f"dataset.path={tmp_path / 'nowhere'}"], "nowhere: no such folder")):
        monkeypatch.setattr(sys, "argv", ["moshi-knowledge", "dataset=moshi_finetune", *path_args, "logger=none",
                                          f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
        with pytest.raises(SystemExit) as stop:
            main()
        captured = capsys.readouterr()
        output = captured.out + captured.err + caplog.text
        assert stop.value.code == 2 and says in output and "Traceback" not in output, output


def test_naming_one_of_several_manifests_reads_that_one(external: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "data"
    shutil.copytree(external, folder)
    _write_rows(folder, _rows(folder)[:1])
    (folder / "other.jsonl").write_text((external / "my_convs.jsonl").read_text())
    assert validate_main([str(folder / "other.jsonl"), "--moshi-finetune"]) == 0
    assert capsys.readouterr().out.startswith("OK: 3 conversations")
    assert len(MoshiFinetuneDataset(str(folder / "my_convs.jsonl")).rows()) == 1
    assert validate_main([str(folder / "other.json"), "--moshi-finetune"]) == 2
    assert "other.json: no such folder" in capsys.readouterr().err
