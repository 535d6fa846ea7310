"""The recall evaluation of one model state: multiple choice, generation, voice pitch and (optionally) a judge.

`RecallEvaluator` encodes the questions and lays out their multiple-choice passes once; `evaluate(model, step)`
then scores the model as it is at that step and returns one prediction row per question plus the metric row
(run_summary.py computes both summaries from the prediction rows, so a resumed run can rebuild them from
predictions.jsonl). The step-0 evaluation is the
baseline every later one is compared against, question by question.

A question answered from non-finite weights, or whose multiple-choice scores are not all finite, is marked
`finite: false` and counted wrong in every measure: NaN logits must never look like recall.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import zip_longest
from typing import Any

import numpy as np
import torch
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from sentencepiece import SentencePieceProcessor
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from moshi_knowledge.codes.samples import FRAME_RATE
from moshi_knowledge.codes.stream import StreamSpec, find_lm
from moshi_knowledge.dataset.format import DatasetMeta
from moshi_knowledge.evaluation import run_summary
from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.evaluation.controls import Controls
from moshi_knowledge.evaluation.generate import Generation, generate
from moshi_knowledge.evaluation.judge import Judge
from moshi_knowledge.evaluation.mc import MCPlan, MCResult, score
from moshi_knowledge.evaluation.metrics import Answer, row_fields
from moshi_knowledge.evaluation.pitch import compile_pyin, median_f0
from moshi_knowledge.evaluation.prompts import PreparedQuestion, Timing, prepare
from moshi_knowledge.evaluation.questions import EvalQuestion
from moshi_knowledge.model import uncompiled
from moshi_knowledge.model.lora import generation_lm
from moshi_knowledge.speech.schema import Utterance
from moshi_knowledge.tracking.sinks import AudioClip

log = logging.getLogger(__name__)

# Every attention kernel but cuDNN's (torch's first choice on the H200). cuDNN builds a kernel for each new shape:
# multiple choice, with rows of many lengths, took 7x as long on its first pass as on the next. Generation's steps
# have one shape, and there cuDNN's kernel is faster (4.6-4.7 s against 4.9-5.0 s per recall point), but in the
# full-scale rehearsal its builds added 1.2 s to the first point, more than three points saved
# (benchmarks/README.md, "Recall's kernels").
RECALL_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass
class EvalResult:
    step: int
    metrics: dict[str, float]  # recall/<tier>/..., voice/... (no `step` key: the caller's row has it)
    predictions: list[dict[str, Any]]  # one row per question, `step` included
    # a few questions with what Moshi said and its speech (`audio`, an AudioClip), for the logger's answers table
    answers: list[dict[str, Any]] = field(default_factory=list)


class RecallEvaluator:
    """Evaluates any number of model states on the same prepared questions."""

    def __init__(self, questions: Sequence[EvalQuestion], model: nn.Module, mimi: MimiModel,
                 tokenizer: SentencePieceProcessor, speech: Callable[[str], Utterance], cfg: EvalConfig,
                 dataset: DatasetMeta, train_voice_f0: float | None = None, judge: Judge | None = None) -> None:
        """`model` only lends its stream conventions (padding ids); `speech` gives candidates' Moshi-voice speech
        (see questions.AnswerSpeech); `dataset` (its meta.json) gives the silences training turns had around the
        question; `train_voice_f0` is the training Moshi voice's median F0 in Hz."""
        start = time.perf_counter()
        log.info("recall: preparing %d questions (their speech, candidates and controls, encoded once)", len(questions))
        self.cfg, self.mimi, self.tokenizer, self.judge = cfg, mimi, tokenizer, judge
        self.spec = StreamSpec.from_lm(model)
        timing = Timing(dataset.lead_sec, dataset.gap_sec, cfg.max_answer_sec)
        prepare_all = partial(prepare, mimi=mimi, tokenize=tokenizer.encode, spec=self.spec, speech=speech,
                              timing=timing, candidate_audio=cfg.candidate_audio)
        self.prepared: list[PreparedQuestion] = prepare_all(questions)
        self.controls = Controls(questions, prepare_all, cfg.seed, cfg.shuffles) if cfg.mc else None
        # the real questions and their controls, scored in one pass (a question's prefix serves its shuffled control)
        self.mc_plan = MCPlan(find_lm(model), [p.mc for p in self.prepared] + self.controls.mc_questions(),
                              cfg.mc_batch_size) if self.controls is not None else None
        if cfg.voice:
            compile_pyin()
        self.train_voice_f0 = train_voice_f0
        self.baseline: EvalResult | None = None
        self.setup_sec = time.perf_counter() - start  # reported with the first evaluation

    def evaluate(self, model: nn.Module, step: int, spoken_answers: int = 0) -> EvalResult:
        """Score `model` (a bare or peft-wrapped LMModel, not its DDP wrapper) as it is now, leaving its mode and
        weights as they were; the first call becomes the baseline. Scoring and generation both use moshi's
        streaming attention, which refuses peft's layers: they see the model through `generation_lm`.

        The metric row also holds the seconds each part took (`recall_time/*`) and, on a GPU, the evaluation's
        peak memory (`memory/recall_peak_gib`); each part is logged as it starts, the whole when done. With
        generation on, `spoken_answers` questions (`_answer_picks`) come back with Moshi's speech decoded."""
        device = next(model.parameters()).device
        clock = _Stopwatch(device, step)
        with _peak_memory(device) as peak, uncompiled(), sdpa_kernel(RECALL_ATTENTION), generation_lm(model) as lm, \
                ThreadPoolExecutor(max_workers=1) as background:
            with clock("gen", f"generation, {len(self.prepared)} answers"):
                generations = self._generate(lm) if self.cfg.generate else None
            picks = self._answer_picks(spoken_answers) if generations is not None else []
            speech = self._decode([generations[i] for i in picks]) if picks else None
            # pitch tracking is CPU work in worker processes: it runs while the GPU scores multiple choice
            voice = background.submit(self._voice, self._voice_clips(generations)) \
                if self.cfg.voice and generations is not None else None
            with clock("mc", f"multiple choice, {len(self.prepared)} questions and their controls"):  # one pass
                mc, control_mc = self._score(lm)
            weights_finite = _finite_weights(model)
            rows = [self._row(step, i, mc, generations, weights_finite) for i in range(len(self.prepared))]
            if self.controls is not None:
                for i, extra in self.controls.row_fields(control_mc, weights_finite).items():
                    rows[i].update(extra)
            metrics = run_summary.step_metrics(rows, self.baseline.predictions if self.baseline else None)
            if voice is not None:
                with clock("voice", "pitch of the generated speech"):  # what is left once multiple choice is done
                    metrics.update(voice.result())
        metrics.update(clock.figures() | peak)
        clock.log_total()
        if self.baseline is None:
            metrics["recall_time/setup_sec"] = self.setup_sec
        answers = [] if speech is None else [
            {**{k: rows[i][k] for k in ("qid", "tier", "question", "gold", "generated") if k in rows[i]},
             "audio": AudioClip(clip, int(self.mimi.sample_rate), rows[i]["qid"])} for i, clip in zip(picks, speech)]
        result = EvalResult(step, metrics, rows, answers)
        if self.baseline is None:
            self.baseline = result
        return result

    def _score(self, lm: LMModel) -> tuple[list[MCResult] | None, list[MCResult]]:
        """Multiple choice on the real questions and on their controls (the plan holds both)."""
        if self.mc_plan is None:
            return None, []
        results = score(lm, self.mc_plan)
        return results[:len(self.prepared)], results[len(self.prepared):]

    def _generate(self, lm: LMModel) -> list[Generation]:
        return generate(lm, [p.prompt for p in self.prepared], round(self.cfg.max_answer_sec * FRAME_RATE),
                        self.cfg.gen_batch_size, self.cfg.audio_temp, self.cfg.audio_top_k, self.cfg.seed)

    def _row(self, step: int, i: int, mc: list[MCResult] | None, generations: list[Generation] | None,
             weights_finite: bool) -> dict:
        """One question's prediction row: what it is, what Moshi answered and each registered metric's fields; with
        non-finite weights or scores every measure counts it wrong (the MC scores of its prompt are the text
        logits generation starts from)."""
        q = self.prepared[i].question
        finite = weights_finite and (mc is None or mc[i].finite)
        row: dict[str, Any] = {"step": step, "qid": q.id, "tier": q.tier, "cluster": q.cluster,
                               "question": q.text, "gold": q.gold, "aliases": q.aliases, "finite": finite,
                               "untrained_candidates": q.untrained_candidates, "balanced": q.balanced,
                               "spiked": q.spiked,
                               "chance": 1 / len(q.candidates)}
        if q.half is not None:
            row["half"] = q.half
        if mc is not None:
            row["candidates"] = [{"text": t, "score": s} for t, s in zip(q.candidates, mc[i].scores)]
        text = self.tokenizer.decode(generations[i].tokens) if generations is not None else None
        if text is not None:
            row["generated"] = text
        row.update(row_fields(Answer(q, finite, mc[i] if mc is not None else None, text, self.judge)))
        return row

    def _answer_picks(self, n: int) -> list[int]:
        """The `n` questions whose spoken answers are shown: each tier's in turn, the same at every step, so step 0
        and the end compare."""
        by_tier: dict[str, list[int]] = {}
        for i, prepared in enumerate(self.prepared):
            by_tier.setdefault(prepared.question.tier, []).append(i)
        return [i for turn in zip_longest(*by_tier.values()) for i in turn if i is not None][:n]

    def _voice_clips(self, generations: list[Generation]) -> np.ndarray:
        return self._decode(generations[:self.cfg.voice_max_clips])

    def _decode(self, generations: Sequence[Generation]) -> np.ndarray:
        """Moshi's generated speech, [clips, samples], decoded by Mimi (on its device, before the GPU moves on)."""
        clips = [g.audio for g in generations]
        with torch.no_grad():
            device = next(self.mimi.parameters()).device
            return self.mimi.decode(torch.stack(clips).to(device)).float().cpu().numpy()[:, 0]

    def _voice(self, audio: np.ndarray) -> dict[str, float]:
        """Median F0 of Moshi's generated speech, against the baseline's and the training voice's."""
        f0 = median_f0(audio, int(self.mimi.sample_rate))
        baseline = self.baseline.metrics.get(run_summary.F0) if self.baseline else f0
        return run_summary.voice_metrics(f0, baseline, self.train_voice_f0)


class _Stopwatch:
    """Seconds per named part of an evaluation, with the GPU's queue drained at both ends of each part. Each part
    is logged as it starts: a recall point takes a minute or more, and the training bar stands still meanwhile."""

    def __init__(self, device: torch.device, step: int) -> None:
        self.device, self.step, self.seconds = device, step, {}

    @contextlib.contextmanager
    def __call__(self, part: str, doing: str) -> Iterator[None]:
        log.info("recall at step %d: %s", self.step, doing)
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[part] = time.perf_counter() - start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def figures(self) -> dict[str, float]:
        out = {f"recall_time/{part}_sec": s for part, s in self.seconds.items()}
        return out | {"recall_time/total_sec": sum(self.seconds.values())}

    def log_total(self) -> None:
        parts = ", ".join(f"{part} {s:.1f} s" for part, s in self.seconds.items())
        log.info("recall at step %d: done in %.1f s (%s)", self.step, sum(self.seconds.values()), parts)


@contextlib.contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """The evaluation's own peak GPU memory; temporaries (KV caches, CUDA graphs) are freed on the way out.

    Peak statistics are reset before and after, so the training loop's peak (`memory/train_peak_gib`) never
    includes recall and this one never includes training.
    """
    figures: dict[str, float] = {}
    if device.type != "cuda":
        yield figures
        return
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield figures
    finally:
        figures["memory/recall_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        gc.collect()  # LMGen's streaming state and graphs sit in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _finite_weights(model: nn.Module) -> bool:
    """Whether every parameter is finite, checked on this process alone (recall runs on rank 0 only, so the
    all-reducing `train.distributed.all_finite` would wait forever for the other ranks)."""
    checks = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(checks).all()) if checks else True  # one device sync, not one per tensor
