"""LoRA presets, frozen weights, merged copies, and exports that moshi's own loader reads back with the same outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from moshi.models import loaders
from moshi.models.lm import LMGen, LMModel
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

from moshi_knowledge.model.load import LocalModel, load_model
from moshi_knowledge.model.lora import (
    apply_lora,
    base_lm,
    count_parameters,
    export_adapter,
    generation_lm,
    merged_copy,
)
from moshi_knowledge.model.tiny import TinyModel, build_tiny_checkpoint
from moshi_knowledge.specs.lora import FullFinetune, LoraSpec

torch.set_num_threads(1)
# fp32 rounding of merged weights (W + s*B@A) moves logits of size ~10 by up to ~2e-5; the adapter moves them by ~10
CLOSE = {"rtol": 1e-4, "atol": 1e-4}
TEXT = "\n".join(f"line {i} of a story about the river Vel and king Oran" for i in range(200))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    rng = np.random.default_rng(0)
    noise = [(0.1 * rng.standard_normal(3 * 24000)).astype(np.float32) for _ in range(2)]
    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", TEXT, noise, seed=1)
    return folder, load_model(TinyModel(), folder)


@pytest.fixture
def lm(tiny) -> LMModel:
    return copy.deepcopy(tiny[1].lm)  # apply_lora injects in place; every test gets its own base model


@pytest.fixture(scope="module")
def codes(tiny) -> torch.Tensor:
    lm = tiny[1].lm
    g = torch.Generator().manual_seed(0)
    out = torch.randint(0, lm.card, (2, lm.num_codebooks, 20), generator=g)
    out[:, 0] = torch.randint(0, lm.text_card, (2, 20), generator=g)
    return out


def _logits(model: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(codes)
    return torch.cat([out.logits[out.mask].flatten(), out.text_logits[out.text_mask].flatten()])


def _loss(model: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    out = model(codes)
    audio = nn.functional.cross_entropy(out.logits[out.mask], codes[:, 1:9][out.mask])
    text = nn.functional.cross_entropy(out.text_logits[out.text_mask], codes[:, :1][out.text_mask])
    return audio + text


def _perturb(model: nn.Module, seed: int = 0) -> None:
    """Stand-in for training: every trainable tensor gets a random, non-zero change."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _linear_names(lm: LMModel) -> set[str]:
    return {n for n, m in lm.named_modules() if isinstance(m, nn.Linear)}


def _lora_names(model: nn.Module) -> set[str]:
    return {n for n, m in base_lm(model).named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize(
    "targets,expected",
    [
        ("attn", {f"transformer.layers.{i}.self_attn.{p}_projs.0" for i in (0, 1) for p in ("in", "out")}),
        ("mlp", {f"transformer.layers.{i}.gating.linear_{p}" for i in (0, 1) for p in ("in", "out")}),
        ("attn_mlp", None),
        ("all", None),
    ],
)
def test_presets_target_the_expected_linears(lm, targets: str, expected: set[str] | None) -> None:
    all_linears = _linear_names(lm)
    main = {n for n in all_linears if n.startswith("transformer.")}
    got = _lora_names(apply_lora(lm, LoraSpec(targets=targets)))
    if targets == "attn_mlp":
        expected = main
    if targets == "all":
        expected = all_linears  # moshi's own LoRA set; includes all 8 depformer steps
        assert "depformer.layers.1.gating.7.linear_out" in got and "depformer.layers.0.self_attn.in_projs.7" in got
    assert got == expected


@pytest.mark.parametrize(
    "spec",
    [LoraSpec("attn_mlp"), LoraSpec("all", use_rslora=True, train_embeddings=True), LoraSpec("all", use_dora=True)],
)
def test_loss_at_init_equals_the_base_loss(lm, codes, spec: LoraSpec) -> None:
    # frozen like under peft: torch.matmul picks its kernel by requires_grad, which moves results by ~1e-6
    base = _logits(lm.requires_grad_(False), codes)
    got = _logits(apply_lora(lm, spec), codes)
    if spec.use_dora:  # DoRA divides by the weight norm it multiplied by: equal up to rounding
        torch.testing.assert_close(got, base, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, base)


def test_frozen_weights_are_byte_identical_after_optimizer_steps(lm, codes) -> None:
    model = apply_lora(lm, LoraSpec("all", rank=4, train_embeddings=True))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "modules_to_save" in n for n in trainable)
    count = count_parameters(model)
    assert count.trainable == sum(t.numel() for t in trainable.values()) and count.total > count.trainable
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        _loss(model, codes).backward()
        optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], before) for n, before in frozen.items())
    assert all(not torch.equal(after[n], before) for n, before in trainable.items())


def test_full_finetuning_trains_everything(lm) -> None:
    model = apply_lora(lm, FullFinetune())
    assert model is lm
    count = count_parameters(model)
    assert count.trainable == count.total == sum(p.numel() for p in lm.parameters())


def test_merged_copy_matches_and_runs_in_lmgen(lm, codes) -> None:
    model = apply_lora(lm, LoraSpec("all", rank=4, train_embeddings=True))
    _perturb(model)
    merged = merged_copy(model)
    assert type(merged) is LMModel and not _lora_names(merged)
    assert not any(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(_logits(merged, codes), _logits(model, codes), **CLOSE)
    assert isinstance(model, PeftModel) and _lora_names(model)  # the trained model is untouched
    gen = LMGen(merged, top_k=5, top_k_text=5)
    with gen.streaming(batch_size=1):
        outputs = [gen.step(codes[:1, 9:, t : t + 1]) for t in range(4)]
    assert outputs[0] is None and outputs[-1].shape == (1, 9, 1)


def _storages(module: nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters()}


def test_generation_view_computes_the_adapter_without_copying_a_weight(lm, codes) -> None:
    """LMGen needs plain Linears; the view gives it them without the 15 GB copy a merge costs at full size."""
    model = apply_lora(lm, LoraSpec("all", rank=4))
    _perturb(model)
    model.eval()
    expected = _logits(model, codes)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    layers = _lora_names(model)
    with generation_lm(model) as view:
        assert type(view) is LMModel and not _lora_names(view)
        assert _storages(view) <= _storages(model), "the view allocates no parameter of its own"
        torch.testing.assert_close(_logits(view, codes), expected, rtol=0, atol=1e-6)
        gen = LMGen(view, top_k=5, top_k_text=5)
        with gen.streaming(batch_size=2):
            outputs = [gen.step(codes[:, 9:, t : t + 1]) for t in range(4)]
        assert outputs[-1].shape == (2, 9, 1)
    assert layers and _lora_names(model) == layers, "the peft layers are back"
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters()), "weights untouched"
    torch.testing.assert_close(_logits(model, codes), expected, rtol=0, atol=0)


def test_generation_view_of_dora_is_a_merged_copy(lm, codes) -> None:
    model = apply_lora(lm, LoraSpec("attn", rank=4, use_dora=True))
    _perturb(model)
    with generation_lm(model) as view:
        assert type(view) is LMModel and not _lora_names(view)
        assert not _storages(view) & _storages(model)
        torch.testing.assert_close(_logits(view, codes), _logits(model, codes), **CLOSE)
    assert _lora_names(model)


def _reload_with_moshi(folder, export) -> LocalModel:
    """The export as moshi's loader sees it: the base folder's files, with the exported config (and LoRA)."""
    base = LocalModel.from_folder(folder)
    base.config_path = str(export.moshi_config)
    if export.kind == "lora":
        base.lora_weights = str(export.moshi_weights)
    else:
        base.moshi_weights = str(export.moshi_weights)
    return base


@pytest.mark.parametrize("spec", [LoraSpec("attn", rank=4), LoraSpec("all", rank=4, train_embeddings=True)])
def test_moshi_loader_accepts_the_lora_export_with_the_same_outputs(tiny, lm, codes, spec, tmp_path) -> None:
    folder, loaded = tiny
    model = apply_lora(lm, spec)
    _perturb(model)
    expected = _logits(model, codes)
    assert (expected - _logits(loaded.lm, codes)).abs().max() > 0.1  # the adapter matters at this tolerance
    export = export_adapter(model, tmp_path / "adapter", loaded.base_config, loaded.checkpoint.mimi_config)
    assert export.kind == "lora" and export.moshi_weights.name == "lora.safetensors"
    info = _reload_with_moshi(folder, export).checkpoint_info()
    assert info.lm_config["lora"] is True and info.lm_config["lora_rank"] == 4
    for fuse in (False, True):  # moshi.server fuses by default
        moshi_lm = info.get_moshi(dtype=torch.float32, fuse_lora=fuse)
        torch.testing.assert_close(_logits(moshi_lm, codes), expected, **CLOSE)
    peft_again = PeftModel.from_pretrained(copy.deepcopy(loaded.lm), str(export.peft_dir))
    torch.testing.assert_close(_logits(peft_again, codes), expected, **CLOSE)


@pytest.mark.parametrize("spec", [FullFinetune(), LoraSpec("attn_mlp", rank=4, use_dora=True)])
def test_full_and_dora_export_merged_weights_moshi_loads(tiny, lm, codes, spec, tmp_path) -> None:
    folder, loaded = tiny
    model = apply_lora(lm, spec)
    _perturb(model)
    export = export_adapter(model, tmp_path / "adapter", loaded.base_config, loaded.checkpoint.mimi_config)
    assert export.kind == "merged" and (export.peft_dir is not None) == isinstance(spec, LoraSpec)
    moshi_lm = load_model(_reload_with_moshi(folder, export)).lm
    torch.testing.assert_close(_logits(moshi_lm, codes), _logits(model, codes), **CLOSE)


@pytest.mark.parametrize("spec", [LoraSpec("all", rank=4), FullFinetune()])
def test_moshi_server_loads_every_export_offline_from_local_paths(tiny, lm, codes, spec, tmp_path,
                                                                  monkeypatch) -> None:
    """moshi.server's own loading call (strings from its command line, no Mimi config argument) on an export of a
    base with its own Mimi config: it must never reach the Hub, and it gives the trained model's outputs."""
    folder, loaded = tiny
    model = apply_lora(lm, spec)
    _perturb(model)
    export = export_adapter(model, tmp_path / "adapter", loaded.base_config, loaded.checkpoint.mimi_config,
                            also_merged=True)

    def no_hub(*args, **kwargs):
        raise AssertionError(f"moshi asked the Hub for {args} {kwargs}")

    monkeypatch.setattr(loaders, "hf_hub_download", no_hub)
    lora = str(export.moshi_weights) if export.kind == "lora" else None
    weights = str(export.moshi_weights) if export.kind == "merged" else str(folder / "model.safetensors")
    info = loaders.CheckpointInfo.from_hf_repo(loaders.DEFAULT_REPO, weights, str(folder / "mimi.safetensors"),
                                               str(folder / "tokenizer.model"), lora_weights=lora,
                                               config_path=str(export.moshi_config))
    assert info.mimi_config == loaded.checkpoint.mimi_config
    mimi = info.get_mimi(device="cpu")
    assert mimi.sample_rate == loaded.mimi.sample_rate
    expected = _logits(model, codes)
    torch.testing.assert_close(_logits(info.get_moshi(dtype=torch.float32), codes), expected, **CLOSE)
    if export.kind == "lora":  # lora.export_merged: the merged folder serves the same model
        merged = export.merged_weights
        info = loaders.CheckpointInfo.from_hf_repo(loaders.DEFAULT_REPO, str(merged), str(folder / "mimi.safetensors"),
                                                   str(folder / "tokenizer.model"),
                                                   config_path=str(merged.parent / "config.json"))
        assert "lora" not in info.lm_config
        torch.testing.assert_close(_logits(info.get_moshi(dtype=torch.float32), codes), expected, **CLOSE)
    else:
        assert export.merged_weights is None
