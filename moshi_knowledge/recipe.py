"""One run's training and recall on one rank, in named phases (`RunRecipe`): set-up, fit, export, final recall,
finish. experiment.run_experiment runs it after the checks and the cached stages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from moshi_knowledge.codes.encode import load_split
from moshi_knowledge.dataset.facts import read_conversation_facts
from moshi_knowledge.dataset.format import META, read_meta
from moshi_knowledge.evaluation import run_summary
from moshi_knowledge.evaluation.judge import judge_from_config
from moshi_knowledge.evaluation.pitch import training_voice_f0
from moshi_knowledge.evaluation.questions import AnswerSpeech, load_questions
from moshi_knowledge.evaluation.recall import EvalResult, RecallEvaluator
from moshi_knowledge.io_utils import atomic_write_text
from moshi_knowledge.model.depformer_patch import patch_depformer
from moshi_knowledge.model.lora import apply_lora, count_parameters, export_adapter
from moshi_knowledge.stages import load_stage_model
from moshi_knowledge.tracking.contract import (
    COMPLETED,
    DIVERGED,
    INTERRUPTED,
    MESSAGE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    STATUS,
)
from moshi_knowledge.tracking.files import dumps, read_metrics
from moshi_knowledge.tracking.secrets import redact
from moshi_knowledge.tracking.tracker import Tracker
from moshi_knowledge.train.distributed import dist_info, parallel_mode
from moshi_knowledge.train.exposures import fix_length
from moshi_knowledge.train.loop import train
from moshi_knowledge.train.seed import seed_everything

log = logging.getLogger(__name__)

FINISH_ERRORS = "finish_errors"  # summary.json: finishing steps that failed after training, with their errors


class RecallHook:
    """The training loop's `on_eval`: recall at step 0, every `eval.recall_every` steps and at the last step.

    Prediction rows go to predictions.jsonl, strict JSON like metrics.jsonl (a NaN score is null), and each
    evaluation's rows to the tracker's `predictions` table, with a few spoken answers in its `answers` table, so
    step 0 and the end compare on the dashboard. On resume, rows logged after the checkpoint are dropped and the
    step-0 rows become the baseline again, so p-values still compare against the untrained model.
    """

    def __init__(self, evaluator: RecallEvaluator, every: int, last_step: int, path: Path,
                 tracker: Tracker | None = None) -> None:
        self.evaluator, self.every, self.last_step, self.path = evaluator, every, last_step, path
        self.tracker = tracker
        self.last_evaluated: int | None = None

    def __call__(self, step: int, model: Any) -> dict[str, float] | None:
        if not (step == 0 or step == self.last_step or (self.every > 0 and step % self.every == 0)):
            return None
        kept = [r for r in self.rows() if r["step"] < step]
        if self.evaluator.baseline is None and any(r["step"] == 0 for r in kept):
            self.evaluator.baseline = EvalResult(0, {}, [r for r in kept if r["step"] == 0])
        result = self.evaluator.evaluate(model, step, self.tracker.log_answers if self.tracker else 0)
        lines = [dumps(r) for r in [*kept, *result.predictions]]
        atomic_write_text(self.path, "".join(line + "\n" for line in lines))
        if self.tracker is not None:
            self.tracker.table("predictions", result.predictions, step)
            if result.answers:
                self.tracker.table("answers", result.answers, step)
        self.last_evaluated = step
        return result.metrics

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return read_metrics(self.path)


@dataclass(frozen=True)
class Choices:
    """What this rank does, decided once at set-up from the stages wanted, the rank and the parallel mode."""

    fit: bool  # "train" is among the stages; without it the loaded model's recall is measured as it is
    recall: bool  # rank 0 measures recall: "eval" wanted and the weights not sharded (an FSDP forward is collective)
    export: bool  # rank 0 writes the adapter after fitting (sharded weights stay in their checkpoint)


class RunRecipe:
    """One run on one rank, in named phases: set-up, fit, export, final recall, finish.

    `setup` builds the (LoRA-wrapped) model and makes the choices once; the phases after it only read them.
    Every phase after fitting is guarded (`_after_training`): a failure there is logged and named in
    summary.json, and never loses a finished run.
    """

    def __init__(self, cfg: DictConfig, entries: dict, run_dir: Path, wanted: list[str], device: Any,
                 tracker: Tracker | None) -> None:
        """`tracker` is rank 0's (None on the other ranks)."""
        self.cfg, self.entries, self.run_dir, self.wanted = cfg, entries, run_dir, wanted
        self.device, self.tracker = device, tracker

    def run(self) -> None:
        self.setup()
        outcome = self.fit()
        if outcome["status"] != INTERRUPTED:  # a preempted job has seconds left: its checkpoint is what counts
            self.export()
            self.final_recall(outcome)
        self.finish(outcome)

    def setup(self) -> None:
        cfg = self.cfg
        self.loaded = load_stage_model(cfg, self.entries["model"].path, device=self.device)
        self.train_cfg = instantiate(cfg.train)
        seed_everything(self.train_cfg.seed)  # peft draws lora_A from torch's global generator
        self.lora = instantiate(cfg.lora)
        self.model = apply_lora(self.loaded.lm, self.lora)
        patch_depformer(self.model)
        params = count_parameters(self.model)
        log.info("trainable parameters: %s of %s", f"{params.trainable:,}", f"{params.total:,}")
        fit = "train" in self.wanted
        sharded = fit and parallel_mode(self.model, dist_info(), self.train_cfg.distributed) == "fsdp"
        if sharded:
            log.warning("recall is not measured during FSDP training; the trained weights are in the sharded "
                        "checkpoint under %s", self.run_dir / "checkpoints")
        main = self.tracker is not None
        self.choices = Choices(fit=fit, recall=main and not sharded and "eval" in self.wanted,
                               export=fit and main and not sharded)
        if self.tracker is not None:
            self.tracker.summary({"params/trainable": params.trainable, "params/total": params.total})
        # the steps are known before the recall hook needs the last one (train.exposures_per_fact sets them)
        self.train_samples = load_split(self.entries["tokenize"].path, "train") if fit else []
        self.facts = read_conversation_facts(self.entries["dataset"].path)
        if fit:
            self.train_cfg = fix_length(self.train_cfg, self.train_samples, self.facts, self.model)
        self.hook = (_recall_hook(cfg, self.entries, self.loaded, self.run_dir,
                                  self.train_cfg.max_steps if fit else 0, self.tracker)
                     if self.choices.recall else None)

    def fit(self) -> dict[str, Any]:
        """Train with the recall hook; the training summary (status, step and final figures)."""
        if not self.choices.fit:
            return {"status": COMPLETED, "step": 0}
        return train(self.model, self.train_samples, load_split(self.entries["tokenize"].path, "eval"), self.train_cfg,
                     instantiate(self.cfg.nan_guard), self.run_dir,
                     tracker=_HeldStatus(self.tracker) if self.tracker is not None else None, on_eval=self.hook,
                     inject_nonfinite_at=list(self.cfg.debug.inject_nonfinite_at), facts=self.facts)

    def export(self) -> None:
        if self.choices.export:
            _after_training(self.tracker, "export", self._export)

    def final_recall(self, outcome: dict[str, Any]) -> None:
        """Recall at the step training ended on, unless the hook measured it there, in this attempt or in the one
        that wrote the checkpoint this run resumed from (a run that stopped early, e.g. diverged, still gets its
        final recall)."""
        hook = self.hook
        if hook is None or hook.last_evaluated == outcome["step"]:
            return
        if any(r["step"] == outcome["step"] for r in hook.rows()):
            return
        tracker = self._main

        def measure() -> None:
            self.model.eval()
            tracker.log({"step": outcome["step"], **(hook(outcome["step"], self.model) or {})})

        _after_training(tracker, "final recall", measure)

    def finish(self, outcome: dict[str, Any]) -> None:
        """Recall summary (baseline, final, best, delta, p-value per tier), the final predictions and a few clips.

        The training status goes into summary.json first; each later step is guarded on its own. A run whose
        final recall came from non-finite weights or scores (an eval-only run of a broken checkpoint) ends as
        diverged, like training that left non-finite weights: its recall figures are not results.
        """
        hook = self.hook
        if self.tracker is None:
            return
        tracker = self._main
        status = {STATUS: outcome["status"], MESSAGE: outcome.get(MESSAGE, "")}
        tracker.summary(status)  # held back by _HeldStatus until now: the export and final recall are published
        if hook is None:
            return
        recall: dict[str, Any] = {}

        def summarise() -> None:
            rows = hook.rows()
            recall.update(run_summary.summarize(rows, read_metrics(tracker.run_dir / METRICS_FILE)))
            final_step, final = _final_rows(rows)
            if status[STATUS] == COMPLETED and not all(r.get("finite", True) for r in final):
                status.update({STATUS: DIVERGED, MESSAGE: f"the recall at step {final_step} was measured on "
                                                          "non-finite weights or scores"})
            tracker.summary({**recall, **status})

        def audio() -> None:
            for wav in sorted((self.entries["dataset"].path / "conv").glob("train-*.wav"))[:tracker.log_audio]:
                tracker.audio(f"dataset/{wav.stem}", wav)

        _after_training(tracker, "recall summary", summarise)
        _after_training(tracker, "audio logging", audio)
        _after_training(tracker, "recall table",
                        lambda: log.info("final recall\n%s\nstatus: %s\n", run_summary.recall_table(recall),
                                         status[STATUS]))

    @property
    def _main(self) -> Tracker:
        """Rank 0's tracker, for the phases the choices give to rank 0 alone (recall, export)."""
        if self.tracker is None:
            raise RuntimeError("a rank-0 phase ran on another rank")
        return self.tracker

    def _export(self) -> None:
        """Rank 0 writes the adapter (peft + moshi formats)."""
        target = self.run_dir / "adapter"
        export = export_adapter(self.model, target, self.loaded.base_config, self.loaded.checkpoint.mimi_config,
                                getattr(self.lora, "export_merged", False))
        log.info("adapter written to %s (%s)", target, export.kind)
        if self._main.log_adapter:
            self._main.artifact(target, "adapter")


class _HeldStatus:
    """The tracker as the training loop sees it, less the status: the loop's `completed` would say so before the
    export and the final recall are published. `finish` writes the status once they are; until then summary.json
    says `running`, true at every instant. An interrupted run has nothing left to publish: its status goes through.
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def log(self, row: Mapping[str, Any]) -> None:
        self.tracker.log(row)

    def keep_until(self, step: int) -> None:
        self.tracker.keep_until(step)

    def summary(self, values: Mapping[str, Any]) -> None:
        if values.get(STATUS) == INTERRUPTED:
            self.tracker.summary(values)
        else:
            self.tracker.summary({k: v for k, v in values.items() if k not in (STATUS, MESSAGE)})


def _after_training(tracker: Tracker | None, name: str, step: Callable[[], None]) -> None:
    """Run one step that comes after training; a failure is logged and listed in summary.json's
    `finish_errors`, never raised: a finished run keeps its status, figures, checkpoints and whatever the other
    finishing steps write."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - every finishing step must run, whatever broke the one before
        log.exception("%s failed after training; the run's results are kept", name)
        if tracker is not None:
            errors = list(tracker.values.get(FINISH_ERRORS) or [])
            tracker.summary({FINISH_ERRORS: [*errors, redact(f"{name}: {type(err).__name__}: {err}")]})


def _recall_hook(cfg: DictConfig, entries: dict, loaded: Any, run_dir: Path, last_step: int,
                 tracker: Tracker | None) -> RecallHook:
    eval_cfg = instantiate(cfg.eval)
    dataset_dir = entries["dataset"].path
    questions = load_questions(dataset_dir, eval_cfg.tiers, eval_cfg.max_per_tier, eval_cfg.seed)
    evaluator = RecallEvaluator(questions, loaded.lm, loaded.mimi, loaded.tokenizer,
                                AnswerSpeech(entries["tts"].path, instantiate(cfg.tts)), eval_cfg,
                                read_meta(dataset_dir / META),
                                training_voice_f0(dataset_dir) if eval_cfg.voice else None,
                                judge_from_config(eval_cfg))
    return RecallHook(evaluator, eval_cfg.recall_every, last_step, run_dir / PREDICTIONS_FILE, tracker)


def _final_rows(rows: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """The last evaluation's step and its prediction rows."""
    final_step = max((r["step"] for r in rows), default=0)
    return final_step, [r for r in rows if r["step"] == final_step]
