"""Recall-evaluation options, as one dataclass: `conf/eval/default.yaml` instantiates it, tests build it directly.

Its schema, registered from here, is the dataclass itself plus the target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, get_args

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.qa.schema import Tier

JUDGES = ("openai", "gemini")


@dataclass
class EvalConfig:
    """Every knob of the recall evaluation (multiple choice, generation, voice drift, optional LLM judge)."""

    recall_every: int = 50  # optimizer steps between recall evaluations (also at step 0 and at the end)
    # retain: qa.retain; qa=facts also asks unseen_facts (facts never trained, the null every tier is compared
    # with), unseen_voice, unseen_wording, shifted (trained facts with one thing changed) and, with
    # qa.heldout_share, heldout_facts (facts whose Q/A is never trained; the narration layouts narrate them)
    tiers: list[str] = field(default_factory=lambda: ["train", "paraphrase", "eval", "unseen_facts", "unseen_voice",
                                                      "unseen_wording", "shifted", "retain", "heldout_facts"])
    max_per_tier: Optional[int] = None  # score a fixed random subset of each tier (None: all questions)
    seed: int = 0  # subset choice, the shuffled-question control and audio sampling
    shuffles: int = 3  # derangements the shuffled control is scored under and averaged over (controls.py)
    mc: bool = True
    candidate_audio: bool = False  # each candidate with its own Moshi-voice audio (default: no answer audio at all)
    mc_batch_size: int = 64  # candidate rows per pass (each question's shared prefix runs once, see mc.MCPlan)
    generate: bool = True
    max_answer_sec: float = 4.0  # how long Moshi may speak after the question
    gen_batch_size: int = 32  # questions streamed together through LMGen
    audio_temp: float = 0.8  # Moshi's audio sampling (its text is greedy)
    audio_top_k: int = 250
    voice: bool = True  # median F0 of the generated speech (needs generate)
    voice_max_clips: int = 32  # answers pitch-tracked per evaluation (pYIN costs ~0.1 s per second of audio)
    judge: Optional[str] = None  # openai | gemini: an LLM decides whether the generated answer is right
    judge_model: Optional[str] = None  # None: the provider's default in judge.py
    # the judge's server, timeouts, retries and reply cache; one verdict is short, so it times out sooner
    judge_connection: Connection = field(default_factory=lambda: Connection(timeout_s=60.0))

    def __post_init__(self) -> None:
        self.tiers = list(self.tiers)
        checks = [
            ("recall_every", self.recall_every >= 0, "0 (start and end only) or a positive number of steps"),
            ("shuffles", self.shuffles >= 1, "1 or more derangements (3 by default)"),
            ("tiers", bool(self.tiers), "a non-empty list of tiers, e.g. [train, paraphrase, eval]"),
            ("tiers", set(self.tiers) <= set(get_args(Tier)), f"a list of tiers among {', '.join(get_args(Tier))}"),
            ("tiers", len(set(self.tiers)) == len(self.tiers),  # a repeat would score every question twice
             f"a list without repeats, e.g. [{','.join(dict.fromkeys(self.tiers))}]"),
            ("max_per_tier", self.max_per_tier is None or self.max_per_tier >= 1, "null or at least 1"),
            ("mc_batch_size", self.mc_batch_size >= 1, "at least 1"),
            ("max_answer_sec", self.max_answer_sec > 0, "a positive number of seconds"),
            ("gen_batch_size", self.gen_batch_size >= 1, "at least 1"),
            ("audio_top_k", self.audio_top_k >= 1, "at least 1"),
            ("voice_max_clips", self.voice_max_clips >= 1, "at least 1"),
            ("judge", self.judge is None or self.judge in JUDGES, f"null or one of {', '.join(JUDGES)}"),
            ("voice", not (self.voice and not self.generate), "false, or set eval.generate=true (voice needs it)"),
            ("judge", not (self.judge and not self.generate), "null, or set eval.generate=true (it judges answers)"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise UserError(f"eval.{name}={getattr(self, name)!r} is invalid", f"set eval.{name} to {want}")
        self.judge_connection.check("eval.judge_connection")


@dataclass
class EvalSchema(EvalConfig):
    _target_: str = "moshi_knowledge.evaluation.config.EvalConfig"
    _convert_: str = "object"  # eval.judge_connection reaches EvalConfig as a Connection


SCHEMAS = {("eval", "default_schema"): EvalSchema}
