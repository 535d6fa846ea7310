"""train.exposures_per_fact: the steps it sets, the exposures every run measures, its errors; and the facts the
dataset stage records for each conversation."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import pytest
import torch

from conftest import TINY_RUN, run_app
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.dataset.facts import CONVERSATION_FACTS
from moshi_knowledge.errors import UserError
from moshi_knowledge.tracking.contract import EXPOSURES_PER_FACT, TRAINED_FACTS
from moshi_knowledge.tracking.files import read_metrics
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.train.exposures import FactIndex, resolve_steps, steps_for_exposures, training_stream
from moshi_knowledge.train.loop import train
from moshi_knowledge.train.nan_guard import NanGuard
from test_train_data import spoken_qa, tiny_lm

torch.set_num_threads(1)

TRAIN = spoken_qa(10, seed=1, turns=2)
EVAL = spoken_qa(3, seed=2)
# conversation i states two facts: f(i mod 4) and f(i+1 mod 4), so the four facts are stated 5 times per epoch each
FACTS = {c.id: [f"f{i % 4}", f"f{(i + 1) % 4}"] for i, c in enumerate(TRAIN)}


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=None, exposures_per_fact=3, batch_size=4, seq_sec=6.0, lr=3e-3, warmup_steps=0,
                eval_every=0, ckpt_every=0, precision="fp32", eval_at_start=False)
    return TrainConfig(**(base | overrides))


@pytest.fixture(scope="module")
def spec() -> StreamSpec:
    return StreamSpec.from_lm(tiny_lm())


def _measured(cfg: TrainConfig, spec: StreamSpec, steps: int) -> float:
    """The mean exposures after `steps` optimizer steps of the stream the loop would draw."""
    stream = training_stream(TRAIN, spec, cfg)
    for _ in range(steps):
        stream.next_rows(cfg.batch_size)
    return FactIndex.build(TRAIN, FACTS).figures(stream.drawn)[EXPOSURES_PER_FACT]


@pytest.mark.parametrize("dose", [0.5, 1, 3, 7.5])
def test_the_steps_are_the_fewest_that_reach_the_dose(spec: StreamSpec, dose: float) -> None:
    cfg = config(exposures_per_fact=dose)
    index = FactIndex.build(TRAIN, FACTS)
    assert index is not None and index.trained == 4 and index.per_epoch() == 5
    steps = steps_for_exposures(training_stream(TRAIN, spec, cfg), index, dose, cfg.batch_size)
    assert _measured(cfg, spec, steps) >= dose
    assert steps == 1 or _measured(cfg, spec, steps - 1) < dose


def test_replayed_counts_equal_the_counted_ones(spec: StreamSpec) -> None:
    stream = training_stream(TRAIN, spec, config())
    for n in (3, 5, 7, 2):  # across epoch ends
        stream.next_rows(n)
    assert stream.position[0] >= 1 and stream.replay_drawn() == stream.drawn


def test_a_run_trains_the_dose_and_records_what_it_measured(tmp_path: Path, spec: StreamSpec) -> None:
    cfg = config(exposures_per_fact=2)
    summary = train(tiny_lm(), TRAIN, EVAL, cfg, NanGuard("skip"), tmp_path, facts=FACTS)
    steps = steps_for_exposures(training_stream(TRAIN, spec, cfg), FactIndex.build(TRAIN, FACTS), 2, 4)
    assert summary["status"] == "completed" and summary["step"] == summary["max_steps"] == steps
    assert summary[TRAINED_FACTS] == 4 and summary[EXPOSURES_PER_FACT] == _measured(cfg, spec, steps) >= 2
    # a run of fixed length measures its dose too; one without the facts record measures nothing
    fixed = train(tiny_lm(), TRAIN, EVAL, config(max_steps=2, exposures_per_fact=None), NanGuard("skip"),
                  tmp_path / "fixed", facts=FACTS)
    assert fixed[EXPOSURES_PER_FACT] == _measured(cfg, spec, 2)
    unknown = train(tiny_lm(), TRAIN, EVAL, config(max_steps=1, exposures_per_fact=None), NanGuard("skip"),
                    tmp_path / "unknown")
    assert EXPOSURES_PER_FACT not in unknown and TRAINED_FACTS not in unknown


def test_a_resumed_run_keeps_counting_from_its_checkpoint(tmp_path: Path) -> None:
    """The counts travel in the checkpoint; a checkpoint written without them is replayed from its position."""
    cfg = config(exposures_per_fact=10, batch_size=2, ckpt_every=1, eval_every=1, keep_checkpoints=5)
    straight = train(tiny_lm(), TRAIN, EVAL, cfg, NanGuard("skip"), tmp_path / "straight", facts=FACTS)
    assert straight["step"] >= 3

    def crash_at_3(step: int, model) -> None:
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        train(tiny_lm(), TRAIN, EVAL, cfg, NanGuard("skip"), tmp_path / "kept", on_eval=crash_at_3, facts=FACTS)
    shutil.copytree(tmp_path / "kept", tmp_path / "old")
    for state in (tmp_path / "old" / "checkpoints").glob("*/state.json"):
        data = json.loads(state.read_text())
        del data["drawn"]
        state.write_text(json.dumps(data))
    resumed = TrainConfig(**{**vars(cfg), "resume": True})
    for name in ("kept", "old"):
        summary = train(tiny_lm(), TRAIN, EVAL, resumed, NanGuard("skip"), tmp_path / name, facts=FACTS)
        assert summary["step"] == straight["step"]
        assert summary[EXPOSURES_PER_FACT] == straight[EXPOSURES_PER_FACT], name


@pytest.mark.parametrize(("settings", "named"), [
    (dict(max_steps=5, exposures_per_fact=2), "train.max_steps=5 and train.exposures_per_fact=2"),
    (dict(exposures_per_fact=0), "train.exposures_per_fact=0"),
    (dict(exposures_per_fact=-3), "train.exposures_per_fact=-3"),
    (dict(exposures_per_fact=None), "train.max_steps and train.exposures_per_fact are both null"),
])
def test_a_length_set_twice_or_never_or_a_bad_dose_is_refused(settings: dict, named: str) -> None:
    with pytest.raises(UserError) as err:
        config(**settings)
    assert named in err.value.message and err.value.fix


def test_a_warmup_longer_than_the_dose_and_a_dataset_without_facts_are_refused(spec: StreamSpec) -> None:
    cfg = config(exposures_per_fact=1, warmup_steps=10)
    stream = training_stream(TRAIN, spec, cfg)
    with pytest.raises(UserError) as err:
        resolve_steps(cfg, stream, FactIndex.build(TRAIN, FACTS))
    assert "train.warmup_steps=10 is not below" in err.value.message and "train.warmup_steps below" in err.value.fix
    with pytest.raises(UserError) as err:
        resolve_steps(config(), stream, FactIndex.build(TRAIN, {"conv0": ["f0"]}))  # the others' facts unknown
    assert "does not record which facts" in err.value.message and "train.max_steps" in err.value.fix


# ---- the app, as a user runs it ---------------------------------------------------------------------------------

DOSE_RUN = [o for o in TINY_RUN if not o.startswith(("train.max_steps=", "train.warmup_steps="))]


@pytest.mark.slow
def test_a_tiny_run_with_a_dose_trains_it_and_says_so(tiny_cache: Path, tmp_path: Path) -> None:
    done = run_app([*DOSE_RUN, "train.exposures_per_fact=2", "train.max_steps=null", "train.warmup_steps=0",
                    "eval.generate=false", "logger=none", f"paths.cache_dir={tiny_cache}",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    facts = json.loads((tmp_path / "run" / "dataset" / CONVERSATION_FACTS).read_text())["conversations"]
    qa = json.loads((tmp_path / "run" / "qa" / "qa.json").read_text())
    # dialogue: each training item's fact is stated once per phrasing
    assert Counter(f for cid, stated in facts.items() if cid.startswith("train") for f in stated) == Counter(
        {item["fact_ids"][0]: len(item["phrasings"]) for item in qa["train"]})
    assert summary["status"] == "completed" and summary[TRAINED_FACTS] == len(qa["train"])
    # measured in the rows drawn, step by step: the dose is reached at the last step and not before
    doses = [r[EXPOSURES_PER_FACT] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/loss" in r]
    assert len(doses) == summary["step"] and doses == sorted(doses)
    assert summary[EXPOSURES_PER_FACT] == doses[-1] >= 2 and (len(doses) == 1 or doses[-2] < 2)
    log = (tmp_path / "run" / "moshi_knowledge.log").read_text()
    assert f"train.exposures_per_fact=2: {summary['step']} steps" in log


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "named"), [
    (["train.exposures_per_fact=2"], "train.max_steps=4 and train.exposures_per_fact=2"),
    (["train.exposures_per_fact=0", "train.max_steps=null"], "train.exposures_per_fact=0"),
    (["train.exposures_per_fact=2", "train.max_steps=null", "train.warmup_steps=50"], "train.warmup_steps=50"),
])
def test_a_bad_dose_exits_2_with_one_line_and_its_fix(tiny_cache: Path, tmp_path: Path, overrides: list[str],
                                                      named: str) -> None:
    done = run_app([*TINY_RUN, *overrides, "logger=none", f"paths.cache_dir={tiny_cache}",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 2 and named in errors[0] and "fix: " in errors[1], errors
    assert "Traceback" not in output
