"""The eval config group: the YAML composes against its schema and builds an EvalConfig; bad values say how to fix."""

from __future__ import annotations

import dataclasses

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from conftest import compose_cfg
from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.config import EvalConfig, EvalSchema
from moshi_knowledge.llm.connection import Connection


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
    assert isinstance(built.judge_connection, Connection)
    assert built.judge_connection.cache_dir == f"{tmp_path}/llm" and built.judge_connection.timeout_s == 60.0
    with pytest.raises(Exception, match="recall_evry"):
        compose_cfg([group, "eval.recall_evry=3"])


@pytest.mark.parametrize("kwargs, field", [({"judge": "claude"}, "eval.judge"),
                                           ({"max_answer_sec": 0}, "max_answer_sec"),
                                           ({"generate": False}, "eval.voice"), ({"tiers": []}, "eval.tiers")])
def test_bad_values_are_user_errors(kwargs: dict, field: str) -> None:
    with pytest.raises(UserError, match=field):
        EvalConfig(**kwargs)


def test_every_llm_caller_shares_one_connection_node(tmp_path) -> None:
    """story, qa and the judge name the same connection settings alike (they had drifted: the judge had no
    backoff), and a bad value is refused naming its own key before anything runs."""
    cfg = compose_cfg(["story=openai", "qa=gemini", "eval.judge=openai", f"paths.cache_dir={tmp_path}"])
    nodes = {"story": cfg.story.connection, "qa": cfg.qa.connection, "eval": cfg.eval.judge_connection}
    for node in nodes.values():
        assert set(node) == {f.name for f in dataclasses.fields(Connection)}
    with pytest.raises(UserError, match=r"eval\.judge_connection\.max_retries=-1") as info:
        EvalConfig(judge="openai", judge_connection=Connection(max_retries=-1))
    assert "set eval.judge_connection.max_retries to 0 or more" in info.value.fix
