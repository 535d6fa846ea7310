"""The eval config group: the YAML composes against its schema and builds an EvalConfig; bad values say how to fix."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from conftest import compose_cfg
from moshi_knowledge.config_schema import EvalSchema
from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.config import EvalConfig


def test_schema_is_the_config_class_and_checks_types_at_composition() -> None:
    assert issubclass(EvalSchema, EvalConfig)  # one list of eval knobs
    with pytest.raises(ConfigCompositionException, match="max_answer_sec"):
        compose_cfg(["eval.max_answer_sec=long"])
    with pytest.raises(ConfigCompositionException, match="recal_every"):
        compose_cfg(["eval.recal_every=5"])


def test_composed_eval_group_builds_the_config(tmp_path) -> None:
    group = "eval=default"
    cfg = compose_cfg([group, "eval.judge=openai", "eval.max_per_tier=5", f"paths.cache_dir={tmp_path}"])
    built = instantiate(cfg.eval)
    assert isinstance(built, EvalConfig)
    assert built.judge == "openai" and built.max_per_tier == 5
    assert built.judge_cache_dir == f"{tmp_path}/llm"
    with pytest.raises(Exception, match="recall_evry"):
        compose_cfg([group, "eval.recall_evry=3"])


@pytest.mark.parametrize("kwargs, field", [({"judge": "claude"}, "eval.judge"),
                                           ({"max_answer_sec": 0}, "max_answer_sec"),
                                           ({"generate": False}, "eval.voice"), ({"tiers": []}, "eval.tiers")])
def test_bad_values_are_user_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(UserError, match=field):
        EvalConfig(**kwargs)
