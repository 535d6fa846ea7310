"""Recall end to end on the small pipeline dataset and a tiny checkpoint built from its own text and speech."""

from __future__ import annotations

import copy
import json
import math

import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate
from peft.tuners.lora import LoraLayer

from moshi_knowledge.codes.encode import mimi_encode
from moshi_knowledge.codes.samples import MOSHI_AUDIO, USER_AUDIO, ZERO_TOKEN
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.codes.text_stream import text_stream
from moshi_knowledge.dataset.format import CONVERSATIONS, META, read_alignments, read_conversations_index, read_meta
from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.evaluation.mc import answer_mask, row_codes
from moshi_knowledge.evaluation.pitch import training_voice_f0
from moshi_knowledge.evaluation.prompts import Timing, prepare
from moshi_knowledge.evaluation.questions import AnswerSpeech, load_questions
from moshi_knowledge.evaluation.recall import RecallEvaluator
from moshi_knowledge.evaluation.run_summary import F0, recall_table, summarize
from moshi_knowledge.model.load import load_model
from moshi_knowledge.model.lora import apply_lora
from moshi_knowledge.model.tiny import TinyModel, build_tiny_checkpoint
from moshi_knowledge.specs.lora import LoraSpec
from moshi_knowledge.speech.audio import read_stereo
from moshi_knowledge.tracking.files import dumps

torch.set_num_threads(1)

TIERS = ["train", "paraphrase", "eval"]
CFG = EvalConfig(max_answer_sec=2.0, voice_max_clips=4)


@pytest.fixture(scope="module")
def setup(small_data_run, tmp_path_factory: pytest.TempPathFactory):
    cfg, _, entries = small_data_run
    paths = {name: entry.path for name, entry in entries.items()}
    text = (paths["story"] / "story.txt").read_text() + "\n" + (paths["qa"] / "qa.json").read_text()
    audio = [sf.read(p, dtype="float32")[0] for p in sorted(paths["tts"].glob("*.wav"))]
    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", text, audio, seed=0)
    loaded = load_model(TinyModel(), folder, device="cpu", dtype="float32")
    speech = AnswerSpeech(paths["tts"], instantiate(cfg.tts))
    return paths, loaded, speech


@pytest.fixture(scope="module")
def evaluator(setup) -> RecallEvaluator:
    paths, loaded, speech = setup
    questions = load_questions(paths["dataset"], TIERS)
    return RecallEvaluator(questions, loaded.lm, loaded.mimi, loaded.tokenizer, speech, CFG,
                           read_meta(paths["dataset"] / META), train_voice_f0=training_voice_f0(paths["dataset"], 4))


@pytest.fixture(scope="module")
def baseline(evaluator: RecallEvaluator, setup):
    return evaluator.evaluate(setup[1].lm, 0)


def _same_codes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Mimi codes of the same audio encoded in batches of other lengths: CPU convolutions then round differently,
    which now and then flips a code that sits on a near-tie between two centroids, and the residual vector
    quantizer carries the flip to the later codebooks of that frame (seen: 7 of 336 codes). Audio shifted by
    0.4 s changes 9-46% of the codes, so 95% still tells a misplaced question apart."""
    return a.shape == b.shape and (a == b).float().mean().item() >= 0.95


@pytest.mark.slow
def test_a_scored_row_is_the_training_turn_without_its_answer_audio(setup) -> None:
    """The gold candidate's row reproduces the first turn of the first training conversation, encoded the way
    training encodes it (Mimi on each channel, text stream from the alignments), except Moshi's answer audio."""
    paths, loaded, speech = setup
    entry = next(e for e in read_conversations_index(paths["dataset"] / CONVERSATIONS) if e.split == "train")
    wav = paths["dataset"] / entry.path
    left, right, _ = read_stereo(wav)
    train_left, train_right = mimi_encode(loaded.mimi, [left, right])
    spec = StreamSpec.from_lm(loaded.lm)
    train_text = text_stream(read_alignments(wav.with_suffix(".json")), loaded.tokenizer.encode,
                             train_left.shape[1], spec.pad_id, spec.end_pad_id)
    question = next(q for q in load_questions(paths["dataset"], ["train"]) if q.id == entry.turns[0].qid)
    meta = read_meta(paths["dataset"] / META)
    prepared = prepare([question], loaded.mimi, loaded.tokenizer.encode, spec, speech,
                       Timing(meta.lead_sec, meta.gap_sec, CFG.max_answer_sec), candidate_audio=True)[0]
    gold, *distractors = prepared.mc.candidates
    row = row_codes(prepared.mc, gold)
    n = row.shape[1]
    answer_frame = int((prepared.mc.context[1] == ZERO_TOKEN).nonzero().min())
    assert torch.equal(row[0], train_text[:n])
    assert _same_codes(row[USER_AUDIO], train_right[:, :n])
    assert _same_codes(gold.audio[:, :n], train_left[:, :n])  # candidate_audio: gold speaks as in training
    # the default: silence before the answer as in training, then the zero token, for every candidate
    assert _same_codes(prepared.mc.context[MOSHI_AUDIO, :answer_frame], train_left[:, :answer_frame])
    assert (prepared.mc.context[MOSHI_AUDIO, answer_frame:] == ZERO_TOKEN).all()
    scored = answer_mask(row[0], spec.pad_id, spec.end_pad_id).nonzero()
    assert int(scored.min()) >= answer_frame, "every scored token lies in the masked answer window"
    assert all(not torch.equal(d.audio[:, answer_frame:n], gold.audio[:, answer_frame:n]) for d in distractors)


@pytest.mark.slow
def test_evaluation_scores_and_generates_every_question_in_one_call(evaluator: RecallEvaluator, baseline) -> None:
    questions = [p.question for p in evaluator.prepared]
    assert len(baseline.predictions) == len(questions)
    assert {r["tier"] for r in baseline.predictions} == set(TIERS)
    for row, q in zip(baseline.predictions, questions):
        assert row["step"] == 0 and row["qid"] == q.id and row["gold"] == q.gold
        assert [c["text"] for c in row["candidates"]] == q.candidates
        assert row["mc_correct"] == (row["mc_rank"] == 1)
        assert isinstance(row["generated"], str) and isinstance(row["gen_correct"], bool)
        assert 0.0 <= row["f1"] <= 1.0
        assert "judge_correct" not in row
        assert row["cluster"] == q.cluster
    # one fact each: questions share a cluster only through a shared gold answer or named entity
    by_cluster: dict[str, list] = {}
    for q in questions:
        if q.tier == "paraphrase":
            by_cluster.setdefault(q.cluster, []).append(q)
    for members in by_cluster.values():
        assert len(members) == 1 or len({m.gold.lower() for m in members}) < len(members) \
            or len({e for m in members for e in m.entity_ids}) < sum(len(m.entity_ids) for m in members)
    for tier in TIERS:
        for stat in ("mc_acc", "mc_acc_low", "mc_acc_high", "gen_acc", "f1"):
            assert f"recall/{tier}/{stat}" in baseline.metrics
        assert baseline.metrics[f"recall/{tier}/mc_acc_low"] <= baseline.metrics[f"recall/{tier}/mc_acc"]
    assert baseline.metrics[F0] > 0
    assert any(r["generated"] for r in baseline.predictions), "the random tiny model says something"


@pytest.mark.slow
def test_lora_model_is_scored_and_generates_through_a_view_of_itself(evaluator: RecallEvaluator, baseline,
                                                                  setup) -> None:
    model = apply_lora(copy.deepcopy(setup[1].lm), LoraSpec(rank=4)).train()
    same = evaluator.evaluate(model, 1)  # LoRA B starts at zero: the model is still the base model
    for a, b in zip(same.predictions, baseline.predictions):
        assert [c["score"] for c in a["candidates"]] == pytest.approx([c["score"] for c in b["candidates"]], abs=1e-5)
        assert a["generated"] == b["generated"]
    assert same.metrics["recall/train/p_value"] == 1.0
    assert model.training and any(isinstance(m, LoraLayer) for m in model.modules()), "the adapter is not merged"

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    moved = evaluator.evaluate(model, 2)
    assert any(a["candidates"] != b["candidates"] for a, b in zip(moved.predictions, baseline.predictions))
    assert any(a["generated"] != b["generated"] for a, b in zip(moved.predictions, baseline.predictions))

    summary = summarize([*baseline.predictions, *same.predictions, *moved.predictions],
                        [{"step": r.step, **r.metrics} for r in (baseline, same, moved)])
    for tier in TIERS:
        for stat in ("mc_acc", "mc_acc_low", "mc_acc_high", "best_mc_acc", "baseline_mc_acc", "delta", "p_value",
                     "n", "gen_acc", "f1"):
            assert f"recall/{tier}/{stat}" in summary
    table = recall_table(summary)
    assert all(any(line.startswith(tier) for line in table.splitlines()) for tier in TIERS)


def test_recall_compiles_nothing_that_training_would_reuse(evaluator: RecallEvaluator, setup) -> None:
    """Recall's many shapes must not reach dynamo (it would turn training's kernels dynamic): a compiled module
    that recall calls is run eagerly inside it and compiled outside."""
    lm = copy.deepcopy(setup[1].lm)
    graphs = []

    def counting(gm: torch.fx.GraphModule, _inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    lm.out_norm.forward = torch.compile(lm.out_norm.forward, backend=counting)
    first = evaluator.evaluate(lm, 1)
    assert graphs == [] and first.predictions
    lm.out_norm(torch.zeros(1, 3, lm.dim))
    assert len(graphs) == 1, "outside recall the same module does compile"


@pytest.mark.slow
def test_recall_on_non_finite_weights_counts_nothing_as_right_and_says_so(evaluator: RecallEvaluator,
                                                                          baseline, setup) -> None:
    """A model whose weights went NaN scores NaN for every candidate; none of it may look like recall, and the
    rows survive the strict-JSON round trip of predictions.jsonl (null) back into the summary."""
    model = apply_lora(copy.deepcopy(setup[1].lm), LoraSpec(rank=2))
    with torch.no_grad():
        next(p for name, p in model.named_parameters() if "lora_B" in name).fill_(math.nan)
    broken = evaluator.evaluate(model, 4)
    assert all(math.isnan(c["score"]) for r in broken.predictions for c in r["candidates"])
    for row in broken.predictions:
        assert row["finite"] is False and row["mc_correct"] is False and row["mc_rank"] == len(row["candidates"])
        assert row["gen_correct"] is False and row["f1"] == 0.0
    assert all(r["finite"] for r in baseline.predictions)
    for tier in TIERS:
        n = broken.metrics[f"recall/{tier}/n"]
        assert broken.metrics[f"recall/{tier}/n_nonfinite"] == n and broken.metrics[f"recall/{tier}/mc_acc"] == 0.0
        assert baseline.metrics[f"recall/{tier}/n_nonfinite"] == 0

    stored = [json.loads(dumps(r)) for r in [*baseline.predictions, *broken.predictions]]
    assert stored[-1]["mc_margin"] is None  # strict JSON
    summary = summarize(stored)
    assert math.isnan(summary["recall/train/mc_margin"]) and summary["recall/train/mc_acc"] == 0.0
    assert "answers came from non-finite weights or scores" in recall_table(summary)


@pytest.mark.slow
def test_recall_prompts_take_the_gap_the_dataset_was_built_with(tiny_cache, tmp_path) -> None:
    """With layout.gap_sec=0.6 the dataset's meta.json says 0.6, and recall's answer starts 0.6 s after the
    question, where the training turn's answer started: its gold text stream is the training conversation's."""
    from conftest import TINY_RUN, compose_cfg
    from moshi_knowledge.codes.encode import SAMPLES_PER_FRAME
    from moshi_knowledge.recipe import _recall_hook
    from moshi_knowledge.speech.schema import SAMPLE_RATE
    from moshi_knowledge.stages import load_stage_model, run_stages

    cfg = compose_cfg([*TINY_RUN, "layout.gap_sec=0.6", "layout.max_turns=1", "eval.tiers=[train]",
                       f"paths.cache_dir={tiny_cache}", "logger=none", "stages=[dataset,model]"])
    entries = run_stages(cfg, tmp_path / "run")
    dataset = entries["dataset"].path
    meta = read_meta(dataset / META)
    assert (meta.layout, meta.lead_sec, meta.gap_sec) == ("dialogue", 0.3, 0.6)
    loaded = load_stage_model(cfg, entries["model"].path, device="cpu")
    evaluator = _recall_hook(cfg, entries, loaded, tmp_path / "run", 0, tracker=None).evaluator
    entry = next(e for e in read_conversations_index(dataset / CONVERSATIONS) if e.split == "train")
    prepared = next(p for p in evaluator.prepared if p.question.id == entry.turns[0].qid)
    answer_at = round(0.3 * SAMPLE_RATE) + len(prepared.question.samples()) + round(0.6 * SAMPLE_RATE)
    assert int((prepared.mc.context[MOSHI_AUDIO] == ZERO_TOKEN).nonzero()[:, 1].min()) == answer_at // SAMPLES_PER_FRAME
    wav = dataset / entry.path
    spec = StreamSpec.from_lm(loaded.lm)
    train_text = text_stream(read_alignments(wav.with_suffix(".json")), loaded.tokenizer.encode,
                             mimi_encode(loaded.mimi, [read_stereo(wav)[0]])[0].shape[1], spec.pad_id, spec.end_pad_id)
    gold = row_codes(prepared.mc, prepared.mc.candidates[0])[0]
    assert torch.equal(gold, train_text[:len(gold)])
