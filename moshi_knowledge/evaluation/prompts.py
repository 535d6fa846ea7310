"""From question audio to model inputs: the multiple-choice rows and the generation prompt of each question.

A question is laid out as the dialogue layout lays out a training turn: `lead_sec` of silence, the question
on the user's (right) channel, `gap_sec` of silence, then Moshi's answer window; both silences are the ones the
dataset was built with (its meta.json). Both channels go through Mimi as whole waveforms, as the tokenize stage
encodes conversations, so the codes around the question match training's. Mimi is causal, so zeros appended to
batch waveforms of different lengths change no code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from moshi.models.compression import MimiModel

from moshi_knowledge.evaluation.generate import Prompt
from moshi_knowledge.evaluation.mc import Candidate, MCQuestion, answer_mask
from moshi_knowledge.evaluation.questions import EvalQuestion
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE, SpeakerWord, Utterance
from moshi_knowledge.train.batches import StreamSpec
from moshi_knowledge.train.encode import SAMPLES_PER_FRAME, mimi_encode
from moshi_knowledge.train.samples import FRAME_RATE, MOSHI_AUDIO, N_STREAMS, USER_AUDIO, ZERO_TOKEN
from moshi_knowledge.train.text_stream import Tokenize, text_stream


@dataclass
class PreparedQuestion:
    question: EvalQuestion
    mc: MCQuestion
    prompt: Prompt


@dataclass(frozen=True)
class Timing:
    """Where a prompt's parts sit: the dataset's lead and gap silences, then the answer window."""

    lead_sec: float
    gap_sec: float
    max_answer_sec: float


@dataclass
class _Plan:
    """A question's user-channel waveform and where things sit in it (samples), before Mimi."""

    question: EvalQuestion
    right: np.ndarray
    question_end: int
    answer_at: int
    streams: list[torch.Tensor]  # each candidate's text stream


def prepare(questions: Sequence[EvalQuestion], mimi: MimiModel, tokenize: Tokenize, spec: StreamSpec,
            speech: Callable[[str], Utterance], timing: Timing, candidate_audio: bool) -> list[PreparedQuestion]:
    """Encode every question once; the result serves every later evaluation of the run."""
    plans = [_plan(q, tokenize, spec, speech, timing) for q in questions]
    user_codes = mimi_encode(mimi, [p.right for p in plans])
    silence = mimi_encode(mimi, [np.zeros(max(len(p.right) for p in plans), np.float32)])[0]
    audio_codes = _candidate_audio(mimi, plans, speech) if candidate_audio else None
    prepared = []
    for i, plan in enumerate(plans):
        n_frames = user_codes[i].shape[1]
        context = torch.full((N_STREAMS, n_frames), spec.pad_id, dtype=torch.long)
        context[MOSHI_AUDIO] = silence[:, :n_frames]
        context[MOSHI_AUDIO, plan.answer_at // SAMPLES_PER_FRAME:] = ZERO_TOKEN  # fairness: no answer audio
        context[USER_AUDIO] = user_codes[i]
        candidates = [Candidate(text, stream, None if audio_codes is None else audio_codes[i][k])
                      for k, (text, stream) in enumerate(zip(plan.question.candidates, plan.streams))]
        prompt = Prompt(user_codes[i], plan.question_end // SAMPLES_PER_FRAME, context[MOSHI_AUDIO])
        prepared.append(PreparedQuestion(plan.question, MCQuestion(plan.question.id, context, candidates), prompt))
    return prepared


def _plan(q: EvalQuestion, tokenize: Tokenize, spec: StreamSpec, speech: Callable[[str], Utterance],
          timing: Timing) -> _Plan:
    audio = q.samples()
    question_end = round(timing.lead_sec * SAMPLE_RATE) + len(audio)
    answer_at = question_end + round(timing.gap_sec * SAMPLE_RATE)
    streams = [_candidate_stream(speech(text), answer_at / SAMPLE_RATE, tokenize, spec) for text in q.candidates]
    length = max(question_end + round(timing.max_answer_sec * SAMPLE_RATE),
                 max(len(s) for s in streams) * SAMPLES_PER_FRAME)
    right = np.zeros(length, np.float32)
    right[question_end - len(audio):question_end] = audio
    return _Plan(q, right, question_end, answer_at, streams)


def _candidate_stream(utterance: Utterance, answer_sec: float, tokenize: Tokenize, spec: StreamSpec) -> torch.Tensor:
    """Moshi's text stream for a row whose answer (this candidate) starts at `answer_sec`, cut after its last token."""
    words = [SpeakerWord(w.word, answer_sec + w.start, answer_sec + w.end, MOSHI_SPEAKER) for w in utterance.words]
    n_tokens = sum(len(tokenize(w.word)) for w in words)
    n_frames = math.ceil((answer_sec + utterance.duration) * FRAME_RATE) + n_tokens + 1
    stream = text_stream(words, tokenize, n_frames, spec.pad_id, spec.end_pad_id)
    used = answer_mask(stream, spec.pad_id, spec.end_pad_id).nonzero()
    return stream[:int(used.max()) + 1] if len(used) else stream


def _candidate_audio(mimi: MimiModel, plans: Sequence[_Plan],
                     speech: Callable[[str], Utterance]) -> list[list[torch.Tensor]]:
    """Moshi's channel with each candidate's own speech in the answer window, encoded: [question][candidate]."""
    waves = []
    for plan in plans:
        for text in plan.question.candidates:
            clip = speech(text).samples[:len(plan.right) - plan.answer_at]
            left = np.zeros(len(plan.right), np.float32)
            left[plan.answer_at:plan.answer_at + len(clip)] = clip
            waves.append(left)
    codes = iter(mimi_encode(mimi, waves))
    return [[next(codes) for _ in plan.question.candidates] for plan in plans]
