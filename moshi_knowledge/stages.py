"""The stage registry: each stage names its inputs and the config it depends on, and runs through the cache.

A stage function takes the composed config, its inputs' output dirs and a fresh output dir. It knows nothing
about caching, Hydra or W&B; `run_stages` adds those.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from moshi_knowledge.cache import CacheEntry, build_or_reuse, cache_key, file_fingerprint
from moshi_knowledge.codes.encode import encode_dataset
from moshi_knowledge.dataset.build import build_dataset
from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_json, read_json
from moshi_knowledge.model.load import LoadedModel, LocalModel, load_codec, load_model
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.narration import is_narration_line
from moshi_knowledge.speech.script import answer_lines, question_lines
from moshi_knowledge.speech.synthesize import load_utterance, script_fingerprint, synthesize_script
from moshi_knowledge.world.schema import Story

log = logging.getLogger(__name__)

Inputs = dict[str, Path]


@dataclass(frozen=True)
class Stage:
    name: str
    version: str  # bump when the stage's output changes meaning, to invalidate old cache entries
    deps: tuple[str, ...]
    config_keys: tuple[str, ...]  # config nodes whose resolved value is part of the cache key
    run: Callable[[DictConfig, Inputs, Path], None]
    extra_key: Callable[[DictConfig, Inputs], str] | None = None  # key material read from the inputs
    ignore: tuple[str, ...] = ()  # config paths that do not change the output (e.g. where it runs)


def _story(cfg: DictConfig, inputs: Inputs, out: Path) -> None:
    instantiate(cfg.story).generate().save(out)


def _qa(cfg: DictConfig, inputs: Inputs, out: Path) -> None:
    instantiate(cfg.qa).build(Story.load(inputs["story"])).save(out)


def _script(cfg: DictConfig, inputs: Inputs):
    qa = QASet.load(inputs["qa"])
    extra = instantiate(cfg.layout).lines(qa, Story.load(inputs["story"]))
    lines = {line.id: line for line in [*question_lines(qa, cfg.tts.voices_per_fact), *answer_lines(qa), *extra]}
    return list(lines.values())


def _tts(cfg: DictConfig, inputs: Inputs, out: Path) -> None:
    synthesize_script(instantiate(cfg.tts), _script(cfg, inputs), out)


def _dataset(cfg: DictConfig, inputs: Inputs, out: Path) -> None:
    build_dataset(QASet.load(inputs["qa"]), Story.load(inputs["story"]), instantiate(cfg.layout),
                  instantiate(cfg.align), instantiate(cfg.dataset), inputs["tts"], out)


def _model_files_key(cfg: DictConfig, inputs: Inputs) -> str:
    """The files a `model=local` folder (`model.dir`) lends, by content: weights swapped inside the same folder
    rebuild what was built from them (a file named by its own setting is fingerprinted with the config)."""
    source = instantiate(cfg.model)
    files = source.files() if isinstance(source, LocalModel) else {}
    return json.dumps({k: file_fingerprint(path) for k, path in files.items() if path is not None}, sort_keys=True)


def _model(cfg: DictConfig, inputs: Inputs, out: Path) -> None:
    """Build the tiny checkpoint folder (tokenizer from the run's text, Mimi fitted to its training voices);
    Hub and local models are loaded where they are, so for them this stage only records the source."""
    source = instantiate(cfg.model)
    if not source.needs_build:
        atomic_write_json(out / "source.json", OmegaConf.to_container(cfg.model, resolve=True))
        return
    qa = QASet.load(inputs["qa"])
    text = "\n".join([Story.load(inputs["story"]).text, *(t for q in qa.all_items() for t in q.phrasings),
                      *(q.answer for q in qa.all_items())])
    # the Q/A speech alone (narration is the same Moshi voice): every regime builds the same model from one Q/A set
    trained_voices = [line["id"] for line in read_json(inputs["tts"] / "index.json")
                      if line["role"] != "heldout" and not is_narration_line(line["id"])]
    source.build(out, text, [load_utterance(inputs["tts"], i).samples for i in trained_voices])


def load_stage_model(cfg: DictConfig, model_dir: Path, device: Any = None) -> LoadedModel:
    """The run's model, from the model stage's output (a built folder, or the Hub/local files it names)."""
    source = instantiate(cfg.model)
    return load_model(source, model_dir if source.needs_build else None, device=device)


def _tokenize(cfg: DictConfig, inputs: Inputs, out: Path) -> None:
    """Only Mimi and the tokenizer: loading the LM would cost 15 GB and seconds for nothing."""
    source = instantiate(cfg.model)
    encode_dataset(load_codec(source, inputs["model"] if source.needs_build else None), inputs["dataset"], out)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("story", "1", (), ("story",), _story),
        Stage("qa", "9", ("story",), ("qa",), _qa),
        Stage("tts", "4", ("story", "qa"), ("tts",), _tts,
              extra_key=lambda cfg, inputs: script_fingerprint(_script(cfg, inputs))),
        Stage("dataset", "9", ("story", "qa", "tts"), ("layout", "align", "dataset"), _dataset,
              extra_key=lambda cfg, inputs: instantiate(cfg.dataset).identity()),
        Stage("model", "1", ("story", "qa", "tts"), ("model",), _model, extra_key=_model_files_key,
              ignore=("model.device", "model.dtype")),
        Stage("tokenize", "1", ("dataset", "model"), (), _tokenize),
    ]
}


# Stages that run in the run directory, uncached (experiment.py), after the cached stages they need.
RUN_STAGES: dict[str, tuple[str, ...]] = {"train": ("tokenize", "tts"), "eval": ("tokenize", "tts")}
# The config nodes each run stage reads (the cached stages name theirs in `Stage.config_keys`).
RUN_STAGE_KEYS: dict[str, tuple[str, ...]] = {"train": ("model", "lora", "train", "nan_guard"),
                                              "eval": ("model", "eval", "tts")}


def with_deps(names: list[str]) -> list[str]:
    """The requested cached stages plus every cached stage they (or the run stages) need, in registry order."""
    unknown = [n for n in names if n not in STAGES and n not in RUN_STAGES]
    if unknown:
        raise UserError(f"stages: unknown stage(s) {unknown}", f"choose from {[*STAGES, *RUN_STAGES]}")
    names = [dep for n in names for dep in (RUN_STAGES[n] if n in RUN_STAGES else (n,))]
    needed: set[str] = set()

    def visit(name: str) -> None:
        if name not in needed:
            needed.add(name)
            for dep in STAGES[name].deps:
                visit(dep)

    for name in names:
        visit(name)
    return [n for n in STAGES if n in needed]


def run_stages(cfg: DictConfig, run_dir: Path) -> dict[str, CacheEntry]:
    """Run (or reuse) each stage, link its output into `run_dir` and record what happened in stages.json."""
    cache_dir = Path(cfg.paths.cache_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, CacheEntry] = {}
    record = []
    for name in with_deps(list(cfg.stages)):
        stage = STAGES[name]
        inputs = {dep: done[dep].path for dep in stage.deps}
        config = _key_config(cfg, stage)
        extra = stage.extra_key(cfg, inputs) if stage.extra_key else ""
        key = cache_key(name, stage.version, config, {d: done[d].key for d in stage.deps}, extra)
        start = time.perf_counter()
        entry = build_or_reuse(cache_dir, name, key, {"config": config},
                               lambda out, stage=stage, inputs=inputs: stage.run(cfg, inputs, out))
        seconds = time.perf_counter() - start
        log.info("stage %-8s %s  %s (%.1f s)", name, "built " if entry.computed else "cached", entry.path, seconds)
        _link(run_dir / name, entry.path)
        done[name] = entry
        record.append({"stage": name, "key": key, "path": str(entry.path.resolve()),
                       "computed": entry.computed, "seconds": round(seconds, 3)})
    atomic_write_json(run_dir / "stages.json", record)
    return done


def _key_config(cfg: DictConfig, stage: Stage) -> dict:
    """The resolved config nodes that make up the stage's cache key, minus its `ignore` paths."""
    config = {k: OmegaConf.to_container(OmegaConf.select(cfg, k), resolve=True) for k in stage.config_keys}
    for path in stage.ignore:
        *parents, leaf = path.split(".")
        node = config
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return config


def _link(link: Path, target: Path) -> None:
    """Point `run_dir/<stage>` at the cache entry (replacing an older link atomically)."""
    tmp = link.with_name(f".{link.name}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(target.resolve(), tmp, target_is_directory=True)
    os.replace(tmp, link)
