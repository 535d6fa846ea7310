"""The tiny checkpoint folder: built, loaded back through moshi's CheckpointInfo (the model=local path), reproducible,
and with a Mimi whose codes tell different audio apart. Also the Hub and local error paths, and the model configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from safetensors import SafetensorError
from scipy.signal import lfilter

from conftest import compose_cfg
from moshi_knowledge.errors import UserError
from moshi_knowledge.model.load import HubModel, LocalModel, load_codec, load_model
from moshi_knowledge.model.mimi_fit import fit_mimi_codebooks
from moshi_knowledge.model.tiny import NAMES, TinyModel, build_tiny_checkpoint, tiny_lm, tiny_lm_config, tiny_mimi
from moshi_knowledge.specs.tiny import TinySizes

torch.set_num_threads(1)
SR = 24000
SEED = 3


def _vowel(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A voiced segment: a glottal pulse train with vibrato through three formant resonators."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(80, 250) * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    y = (np.diff(np.floor(np.cumsum(f0) / SR), prepend=0) > 0).astype(float)
    for formant in (rng.uniform(300, 900), rng.uniform(900, 2500), rng.uniform(2500, 3500)):
        r = np.exp(-np.pi * 80 / SR)
        y = lfilter([1.0], [1.0, -2 * r * np.cos(2 * np.pi * formant / SR), r * r], y)
    return y * np.minimum(1.0, np.minimum(t, seconds - t) * 20) / (np.abs(y).max() + 1e-9)


def speechlike(seed: int, seconds: float) -> np.ndarray:
    """Syllable-like alternation of vowels and noise bursts (fricatives), different for every seed."""
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * SR:
        if rng.random() < 0.3:
            part = 0.15 * rng.standard_normal(int(rng.uniform(0.05, 0.15) * SR))
        else:
            part = _vowel(rng, rng.uniform(0.1, 0.3))
        parts.append(part)
        total += len(part)
    return (0.3 * np.concatenate(parts)[: int(seconds * SR)]).astype(np.float32)


def story_text(n_lines: int = 300) -> str:
    rng = np.random.default_rng(0)
    words = "the river Vel king Oran built a bridge of stone in year castle Merrow north sea hundred".split()
    return "\n".join(" ".join(rng.choice(words, size=rng.integers(5, 12))) + "." for _ in range(n_lines))


@pytest.fixture(scope="module")
def fit_audio() -> list[np.ndarray]:
    return [speechlike(seed, 4.0) for seed in range(12)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, fit_audio: list[np.ndarray]):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", story_text(), fit_audio, seed=SEED)


@pytest.fixture(scope="module")
def loaded(folder):
    return load_model(TinyModel(seed=SEED), folder)


def _codes(lm, batch: int = 2, steps: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, lm.card, (batch, lm.num_codebooks, steps), generator=g)
    codes[:, 0] = torch.randint(0, lm.text_card, (batch, steps), generator=g)
    return codes


def _valid_logits(lm, codes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = lm(codes)
    return torch.cat([out.logits[out.mask].flatten(), out.text_logits[out.text_mask].flatten()])


def test_folder_is_a_moshi_checkpoint_with_our_tokenizer_ids(folder, loaded) -> None:
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors", "mimi.safetensors", "mimi_config.json", "tokenizer.model", "config.json"
    }
    info, lm, tok = loaded.checkpoint, loaded.lm, loaded.tokenizer
    assert info.mimi_config is not None and info.mimi_config["quantizer"]["bins"] == lm.card == 1024
    assert lm.num_codebooks == 17 and lm.dep_q == 8
    assert lm.delays == [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert lm.text_card == tok.vocab_size()
    assert [tok.unk_id(), tok.bos_id(), tok.eos_id(), tok.pad_id()] == [0, 1, 2, 3]
    assert lm.text_padding_token_id == 3 and lm.end_of_text_padding_id == 0
    assert "\n" in [tok.id_to_piece(i) for i in tok.encode("river\nking")]
    assert 0 not in tok.encode("Ωμέγα")  # byte fallback instead of unk
    assert (loaded.frame_rate, loaded.sample_rate) == (12.5, 24000)


def test_loading_back_gives_the_built_models_outputs(loaded, fit_audio) -> None:
    reference = tiny_lm(tiny_lm_config(TinySizes(), loaded.lm.text_card), SEED)
    codes = _codes(loaded.lm)
    assert torch.equal(_valid_logits(loaded.lm, codes), _valid_logits(reference, codes))

    mimi, _ = tiny_mimi(TinySizes(), SEED)
    fit_mimi_codebooks(mimi, fit_audio, SEED)
    clip = torch.from_numpy(speechlike(99, 2.0))[None, None]
    with torch.no_grad():
        assert torch.equal(loaded.mimi.encode(clip), mimi.encode(clip))


def test_the_same_inputs_rebuild_byte_identical_files(folder, fit_audio, tmp_path) -> None:
    again = build_tiny_checkpoint(tmp_path / "again", story_text(), fit_audio, seed=SEED)
    for path in folder.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_different_audio_gives_many_distinct_codes(loaded) -> None:
    clips = [torch.from_numpy(speechlike(1000 + i, 3.0))[None, None] for i in range(6)]
    with torch.no_grad():
        per_clip = [loaded.mimi.encode(c)[0] for c in clips]  # [8, frames]
        assert torch.equal(loaded.mimi.encode(clips[0])[0], per_clip[0])  # deterministic
    codes = torch.cat(per_clip, dim=1)
    assert codes.shape[0] == 8 and codes.shape[1] == 6 * 38
    assert int(codes.min()) >= 0 and int(codes.max()) < loaded.lm.card
    distinct = [len(set(row.tolist())) for row in codes]
    assert min(distinct) >= 40, distinct  # a fresh Mimi gives 1 code per codebook
    assert len({tuple(c[0].tolist()) for c in per_clip}) == len(per_clip)


def test_hub_model_without_network_is_a_user_error(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 does; no retries
    source = instantiate(compose_cfg(["model=moshiko"]).model)
    assert isinstance(source, HubModel) and source.hf_repo == "kyutai/moshiko-pytorch-bf16"
    with pytest.raises(UserError, match="moshiko-pytorch-bf16") as err:
        load_model(source)
    assert "model=local" in err.value.fix


def test_local_model_names_the_missing_file(folder, tmp_path) -> None:
    source = LocalModel.from_folder(folder)
    source.tokenizer = str(tmp_path / "nope.model")
    with pytest.raises(UserError, match="model.tokenizer=.*nope.model"):
        load_model(source)


def test_local_model_refuses_a_config_naming_a_mimi_config_it_was_not_given(folder) -> None:
    source = LocalModel.from_folder(folder)
    source.mimi_config_path = None
    with pytest.raises(UserError, match="mimi_config_path"):
        load_model(source)


def test_tiny_needs_its_folder_and_enough_speech(tmp_path) -> None:
    with pytest.raises(UserError, match="model stage"):
        load_model(TinyModel())
    with pytest.raises(UserError, match="speech"):
        TinyModel().build(tmp_path / "t", story_text(20), [speechlike(0, 0.5)])


def test_model_configs_instantiate_to_loadable_sources(folder) -> None:
    tiny = instantiate(compose_cfg(["model=tiny", "seed=5"]).model)
    assert isinstance(tiny, TinyModel) and tiny.seed == 5 and tiny.sizes == TinySizes()
    assert (tiny.device, tiny.dtype) == ("auto", "auto")
    assert instantiate(compose_cfg(["model=moshika"]).model).hf_repo == "kyutai/moshika-pytorch-bf16"
    files = LocalModel.from_folder(folder)
    overrides = [f"model.{k}={getattr(files, k)}" for k in ("moshi_weights", "mimi_weights", "tokenizer")]
    overrides += [f"model.config_path={files.config_path}", f"model.mimi_config_path={files.mimi_config_path}"]
    local = instantiate(compose_cfg(["model=local", *overrides]).model)
    assert isinstance(local, LocalModel) and local.lora_weights is None
    assert load_model(local).lm.text_card == files.checkpoint_info().lm_config["text_card"]


def test_the_codec_loads_without_the_lm(folder, loaded, tmp_path) -> None:
    """tokenize needs Mimi and the tokenizer: a folder whose LM weights are garbage still gives the codec."""
    broken = tmp_path / "ckpt"
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    source = LocalModel.from_folder(broken)
    codec = load_codec(source, device="cpu")
    assert (codec.text_padding_id, codec.end_of_padding_id) == (loaded.lm.text_padding_token_id,
                                                                loaded.lm.end_of_text_padding_id)
    assert codec.tokenizer.vocab_size() == loaded.lm.text_card
    wave = torch.from_numpy(speechlike(5, 2.0))[None, None]
    with torch.no_grad():
        assert torch.equal(codec.mimi.encode(wave), loaded.mimi.encode(wave))
    with pytest.raises(UserError, match=r"model.moshi_weights: .*model.safetensors cannot be loaded") as err:
        load_model(source, device="cpu")
    assert isinstance(err.value.__cause__, SafetensorError)


def test_moshi_imported_before_the_project_still_never_compiles_on_cpu(tmp_path) -> None:
    """moshi reads NO_TORCH_COMPILE when its modules are imported: one imported before moshi_knowledge.model
    (as an evaluation module's import once did) must still run eagerly on a CPU, compiling no graph."""
    import os
    import subprocess
    import sys

    code = (
        "import os; os.environ.pop('NO_TORCH_COMPILE', None)\n"
        "import torch\n"
        "from moshi.modules import transformer\n"  # compiled wrappers made while compile was still on
        "import moshi_knowledge.model\n"
        "from torch._dynamo.utils import counters\n"
        "x = torch.randn(2, 3, 8)\n"
        "transformer._rms_norm(x, torch.ones(8), torch.float32, 1e-5)\n"
        "print('graphs', counters['stats']['unique_graphs'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_TORCH_COMPILE"} | {"CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "graphs 0" in done.stdout


def test_model_dir_finds_the_files_of_a_folder_laid_out_as_the_hub_repo(folder) -> None:
    """model=local model.dir=PATH: the folder's config.json names its files, as in a Hub repo."""
    local = instantiate(compose_cfg(["model=local", f"model.dir={folder}"]).model)
    assert local.files() == {"moshi_weights": folder / NAMES["moshi_name"], "mimi_weights": folder / NAMES["mimi_name"],
                             "tokenizer": folder / NAMES["tokenizer_name"], "config_path": folder / "config.json",
                             "mimi_config_path": folder / NAMES["mimi_config_name"], "lora_weights": None}
    assert load_model(local, device="cpu").lm.text_card == local.checkpoint_info().lm_config["text_card"]


def test_model_dir_without_config_json_uses_moshis_file_names(tmp_path) -> None:
    from moshi.models import loaders

    for name in (loaders.MOSHI_NAME, loaders.MIMI_NAME, loaders.TEXT_TOKENIZER_NAME):
        (tmp_path / name).write_bytes(b"x")
    files = LocalModel(dir=str(tmp_path)).files()
    assert (files["moshi_weights"].name, files["mimi_weights"].name, files["tokenizer"].name) == (
        loaders.MOSHI_NAME, loaders.MIMI_NAME, loaders.TEXT_TOKENIZER_NAME)
    assert files["config_path"] is None
    (tmp_path / loaders.MIMI_NAME).unlink()
    with pytest.raises(UserError, match=f"model.dir={tmp_path}: mimi weights .*{loaders.MIMI_NAME}: file not found"):
        LocalModel(dir=str(tmp_path)).check_files()


def test_a_given_path_overrides_the_folders_file(folder, tmp_path) -> None:
    tokenizer = tmp_path / "mine.model"
    tokenizer.write_bytes((folder / "tokenizer.model").read_bytes())
    assert LocalModel(dir=str(folder), tokenizer=str(tokenizer)).files()["tokenizer"] == tokenizer
    with pytest.raises(UserError, match="model.tokenizer=.*nope.model: file not found"):
        LocalModel(dir=str(folder), tokenizer=str(tmp_path / "nope.model")).check_files()
    with pytest.raises(UserError, match="model.moshi_weights: no value, and no model.dir") as err:
        LocalModel().check_files()
    assert "model.dir=PATH" in err.value.fix


def _hub_cache(root: Path, repo: str, names: list[str]) -> None:
    """The Hugging Face cache's layout for one snapshot of `repo` holding `names`."""
    entry = root / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text("abc123")
    snapshot = entry / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in names:
        (snapshot / name).write_bytes(b"x")


def test_hub_model_files_are_checked_in_the_cache_offline(monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants
    from moshi.models import loaders

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    source = instantiate(compose_cfg(["model=moshiko"]).model)
    _hub_cache(tmp_path, source.hf_repo, [loaders.MOSHI_NAME, loaders.TEXT_TOKENIZER_NAME])
    with pytest.raises(UserError, match=f"{loaders.MIMI_NAME} .* not in the Hugging Face cache {tmp_path}") as err:
        source.check_files()
    assert f"hf download {source.hf_repo}" in err.value.fix and "model=local model.dir=PATH" in err.value.fix
    (tmp_path / f"models--kyutai--moshiko-pytorch-bf16/snapshots/abc123/{loaders.MIMI_NAME}").write_bytes(b"x")
    source.check_files()


def test_weights_swapped_inside_model_dir_rebuild_the_model_stage(folder, tmp_path) -> None:
    """The model stage's key holds model.dir's files by content: the same folder with other weights is another
    model, so its tokenize stage is not reused."""
    import shutil

    from moshi_knowledge.stages import STAGES

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    cfg = compose_cfg(["model=local", f"model.dir={copy}"])
    key = STAGES["model"].extra_key
    before = key(cfg, {})
    weights = copy / NAMES["moshi_name"]
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert key(cfg, {}) != before
    assert key(compose_cfg(), {}) == "{}"  # the tiny model is built from the run's data: no folder to read
