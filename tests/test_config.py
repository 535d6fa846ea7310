"""Every option of every config group composes, and schemas reject typos at composition time."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, compose_cfg
from moshi_knowledge.config_schema import SCHEMAS
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.qa.llm import GeminiQA, OpenAIQA
from moshi_knowledge.specs.lora import LoraSpec
from moshi_knowledge.specs.model import HubSpec, LocalSpec
from moshi_knowledge.specs.nan_guard import NanGuardSpec
from moshi_knowledge.specs.tiny import TinySpec
from moshi_knowledge.speech.schema import Voice
from moshi_knowledge.tracking.sinks import NullSink, WandbSink
from moshi_knowledge.world.llm import GeminiStory, OpenAIStory

GROUPS = ["story", "qa", "tts", "layout", "align", "dataset", "paths", "model", "lora", "train", "nan_guard", "eval",
          "logger", "sweep", "launcher"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_with_a_target(group: str, option: str) -> None:
    cfg = compose_cfg([f"{group}={option}"])
    if group in ("sweep", "launcher"):  # these configure Hydra itself (sweeper params, launcher)
        return
    node = cfg[group]
    if group not in ("paths", "logger"):
        assert node._target_.startswith("moshi_knowledge."), node
    assert OmegaConf.select(cfg, "stages")


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "experiments").glob("*.yaml")))
def test_every_experiment_composes(experiment: str) -> None:
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.stages


@pytest.mark.parametrize("group,name", sorted(SCHEMAS))
def test_schemas_are_not_options_of_their_group(group: str, name: str) -> None:
    """A schema only types a group's options; selected as one (`lora=lora_schema`) it would be a bare preset."""
    with pytest.raises(ConfigCompositionException, match=f"Could not find '{group}/{name}'"):
        compose_cfg([f"{group}={name}"])


def test_lora_and_tiny_presets_hold_only_what_differs_from_their_dataclasses() -> None:
    """LoraSpec and TinySpec give every default; a preset sets its own values and overrides still apply."""
    for preset in ("attn", "mlp", "attn_mlp", "all"):
        assert instantiate(compose_cfg([f"lora={preset}"]).lora) == LoraSpec(targets=preset)
    assert instantiate(compose_cfg(["lora=moshiko"]).lora) == LoraSpec("all", rank=64, alpha=128.0)
    assert instantiate(compose_cfg(["lora=attn", "lora.rank=4"]).lora) == LoraSpec("attn", rank=4)
    cfg = compose_cfg(["model=tiny", "seed=3", "model.dim=64"])
    assert OmegaConf.to_container(cfg.model, resolve=True) == {
        **asdict(TinySpec(dim=64, seed=3)), "_target_": "moshi_knowledge.model.tiny.TinyModel"}
    with pytest.raises(ConfigCompositionException, match="ranc"):
        compose_cfg(["lora=attn", "lora.ranc=4"])
    with pytest.raises(ConfigCompositionException, match="dimm"):
        compose_cfg(["model=tiny", "model.dimm=4"])


def test_a_schema_read_off_a_constructor_types_its_options() -> None:
    """layout=...'s schema is DialogueLayout's constructor: its defaults, its types, nothing else."""
    dialogue = instantiate(compose_cfg(["layout=dialogue", "layout.gap_sec=0.6"]).layout)
    assert (dialogue.gap_sec, dialogue.lead_sec, dialogue.max_turns) == (0.6, 0.3, None)
    assert instantiate(compose_cfg(["layout=mono_duplicate"]).layout).max_turns == 1
    with pytest.raises(ConfigCompositionException, match="gap_sek"):
        compose_cfg(["layout=dialogue", "layout.gap_sek=0.6"])
    with pytest.raises(ConfigCompositionException, match="max_turns"):
        compose_cfg(["layout=dialogue", "layout.max_turns=many"])


def test_nan_guard_and_model_presets_hold_only_what_differs_from_their_specs() -> None:
    """NanGuardSpec, HubSpec and LocalSpec give every default (no torch is imported to check it); typos fail."""
    for policy in ("off", "skip", "rollback", "halt"):
        node = compose_cfg([f"nan_guard={policy}"]).nan_guard
        assert OmegaConf.to_container(node) == {
            **asdict(NanGuardSpec(policy)), "_target_": "moshi_knowledge.train.nan_guard.NanGuard"}
    hub = compose_cfg(["model=moshika", "model.device=cpu"]).model
    assert OmegaConf.to_container(hub) == {**asdict(HubSpec(hf_repo="kyutai/moshika-pytorch-bf16", device="cpu")),
                                           "_target_": "moshi_knowledge.model.load.HubModel"}
    files = {"moshi_weights": "m.safetensors", "mimi_weights": "mimi.safetensors", "tokenizer": "t.model"}
    local = compose_cfg(["model=local", *(f"model.{k}={v}" for k, v in files.items())]).model
    assert OmegaConf.to_container(local) == {**asdict(LocalSpec(**files)),
                                             "_target_": "moshi_knowledge.model.load.LocalModel"}
    for overrides, typo in ((["nan_guard.polcy=x"], "polcy"), (["nan_guard.lr_factor=half"], "lr_factor"),
                            (["model=moshiko", "model.devise=cpu"], "devise")):
        with pytest.raises(ConfigCompositionException, match=typo):
            compose_cfg(overrides)


def test_tts_schemas_are_the_backends_constructors_with_voices() -> None:
    """tts=espeak builds with Voice objects (defaults from Voice); a mistyped voice or backend key fails."""
    espeak = instantiate(compose_cfg(["tts=espeak", "tts.moshi_voice.rate=180"]).tts)
    assert espeak.moshi_voice == Voice("en+m3", rate=180, pitch=25)
    assert espeak.user_voices[1] == Voice("en+f2", pitch=65)
    kokoro = compose_cfg(["tts=kokoro"]).tts  # its extra is optional, so composed, not built
    assert kokoro.moshi_voice == asdict(Voice("am_michael")) and kokoro.device == "cpu"
    for overrides, typo in ((["tts.moshi_voice.rat=3"], "rat"), (["tts.user_voices=[{nam: en}]"], "nam"),
                            (["tts=kokoro", "tts.repo=x"], "repo")):
        with pytest.raises(ConfigCompositionException, match=typo):
            compose_cfg(overrides)


def _llm_settings(backend: object) -> dict:
    """An LLM story or Q/A backend's own settings and its client's model, temperature and connection."""
    client = backend.client
    return {**{k: v for k, v in vars(backend).items() if k != "client"},
            "model": client.model, "temperature": client.temperature, "connection": client.connection}


def test_llm_story_and_qa_schemas_are_their_constructors(tmp_path) -> None:
    """story= and qa=openai|gemini: each preset names its model; everything else is the constructor's default."""
    cache = f"paths.cache_dir={tmp_path}"
    connection = Connection(cache_dir=f"{tmp_path}/llm")
    cfg = compose_cfg(["story=gemini", "qa=openai", "story.refine_passes=0", cache])
    assert _llm_settings(instantiate(cfg.story)) == _llm_settings(
        GeminiStory("gemini-2.5-pro", refine_passes=0, connection=connection))
    assert _llm_settings(instantiate(cfg.qa)) == _llm_settings(OpenAIQA("gpt-4.1", connection=connection))
    cfg = compose_cfg(["story=openai", "qa=gemini", cache])
    assert _llm_settings(instantiate(cfg.story)) == _llm_settings(OpenAIStory("gpt-4.1", connection=connection))
    assert _llm_settings(instantiate(cfg.qa)) == _llm_settings(
        GeminiQA("gemini-2.5-flash", "gemini-2.5-pro", connection=connection))
    for overrides, typo in ((["story=openai", "story.premis=x"], "premis"),
                            (["qa=gemini", "qa.connection.timeot_s=5"], "timeot_s")):
        with pytest.raises(ConfigCompositionException, match=typo):
            compose_cfg(overrides)


def test_logger_schemas_are_the_sinks_constructors() -> None:
    wandb = instantiate(compose_cfg(["logger=wandb", "logger.tags=[a,b]"]).logger)
    assert vars(wandb) == vars(WandbSink(tags=("a", "b")))
    assert isinstance(instantiate(compose_cfg(["logger=none"]).logger), NullSink)
    for overrides, typo in ((["logger.projct=x"], "projct"), (["logger.log_audio=many"], "log_audio"),
                            (["logger=none", "logger.project=x"], "project")):
        with pytest.raises(ConfigCompositionException, match=typo):
            compose_cfg(overrides)


def test_schema_rejects_a_mistyped_key() -> None:
    with pytest.raises(ConfigCompositionException, match="n_trian"):
        compose_cfg(["qa.n_trian=5"])


def test_schema_rejects_a_wrong_type() -> None:
    with pytest.raises(ConfigCompositionException, match="n_train"):
        compose_cfg(["qa.n_train=many"])


def test_defaults_are_the_offline_backends() -> None:
    cfg = compose_cfg()
    assert cfg.story._target_.endswith("ProceduralStory")
    assert cfg.qa._target_.endswith("FactsQA")
    assert cfg.tts._target_.endswith("EspeakTTS")
    assert cfg.layout._target_.endswith("DialogueLayout")
    assert cfg.qa.n_train == 100 and cfg.qa.n_eval == 20 and cfg.qa.paraphrases == 3


def test_one_root_seed_reaches_every_seeded_setting() -> None:
    cfg = compose_cfg(["seed=7"])
    seeds = {name: cfg[name].seed for name in ("story", "qa", "model", "train", "eval")}
    assert seeds == dict.fromkeys(seeds, 7)


@pytest.mark.parametrize("sweeper", ["sweep=optuna_recall", "hydra/sweeper=optuna"])
@pytest.mark.parametrize("mode, direction", [("max", "maximize"), ("min", "minimize")])
def test_optuna_direction_follows_objective_mode(sweeper: str, mode: str, direction: str) -> None:
    """The app's sweeper callback, before Hydra builds the sweeper: direction from objective.mode, failed trials
    tolerated; a direction given on the command line is kept."""
    from hydra import compose, initialize_config_module

    from moshi_knowledge.sweeper import SweeperDefaults

    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[sweeper, f"objective.mode={mode}"], return_hydra_config=True)
        given = compose(config_name="config", overrides=[sweeper, "hydra.sweeper.direction=minimize"],
                        return_hydra_config=True)
    assert cfg.hydra.sweeper.max_failure_rate == 0.0  # the plugin's default, which stops at a failed trial
    SweeperDefaults().on_multirun_start(cfg)
    assert cfg.hydra.sweeper.direction == direction and cfg.hydra.sweeper.max_failure_rate == 1.0
    SweeperDefaults().on_multirun_start(given)
    assert given.hydra.sweeper.direction == "minimize"
