"""The depformer patch: every per-step module gets a contiguous input, outputs stay identical to moshi's (training
forward, backward and LMGen streaming), and it is scoped to the model it was applied to."""

from __future__ import annotations

import copy

import pytest
import torch
from moshi.models.lm import LMGen, LMModel
from torch import nn

from moshi_knowledge.model.depformer_patch import is_patched, patch_depformer
from moshi_knowledge.model.lora import apply_lora, base_lm, merged_copy
from moshi_knowledge.model.tiny import tiny_lm, tiny_lm_config
from moshi_knowledge.specs.lora import LoraSpec
from moshi_knowledge.specs.tiny import TinySizes

torch.set_num_threads(1)
STEPS_PER_LAYER = 3 * 8  # in_projs, out_projs and gating, one per codebook


@pytest.fixture(scope="module")
def reference() -> LMModel:
    return tiny_lm(tiny_lm_config(TinySizes(), text_card=300), seed=0)


@pytest.fixture
def pair(reference) -> tuple[LMModel, LMModel]:
    """(unpatched, patched) copies with the same weights."""
    patched = copy.deepcopy(reference)
    assert patch_depformer(patched) == STEPS_PER_LAYER * TinySizes().depformer_num_layers
    return copy.deepcopy(reference), patched


@pytest.fixture(scope="module")
def codes() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 300, (2, 17, 24), generator=g)


def pair_items(pair: tuple[LMModel, LMModel]) -> list[tuple[str, LMModel]]:
    return [("plain", pair[0]), ("patched", pair[1])]


def _record_contiguity(module: nn.Module) -> list[bool]:
    """Registered after the patch's hook, so it sees what the module itself receives."""
    seen: list[bool] = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))
    return seen


def test_per_step_modules_receive_contiguous_inputs(pair, codes) -> None:
    plain, patched = pair
    seen = {name: _record_contiguity(lm.depformer.layers[1].self_attn.in_projs[5]) for name, lm in pair_items(pair)}
    with torch.no_grad():
        plain(codes)
        patched(codes)
    assert seen == {"plain": [False], "patched": [True]}  # moshi hands step 5 a strided view x[:, 5:6]
    assert not is_patched(plain) and is_patched(patched)


def test_forward_and_backward_are_identical_when_weights_train(pair, codes) -> None:
    """With trainable weights torch.matmul already copies the strided view and runs one GEMM: bit-identical."""
    results = {}
    for name, lm in pair_items(pair):
        out = lm(codes)
        loss = out.logits[out.mask].logsumexp(-1).mean() + out.text_logits[out.text_mask].logsumexp(-1).mean()
        loss.backward()
        grads = {n: p.grad for n, p in lm.named_parameters()}
        results[name] = (out.logits[out.mask], out.text_logits[out.text_mask], grads)
    (logits_a, text_a, grads_a), (logits_b, text_b, grads_b) = results["plain"], results["patched"]
    assert torch.equal(logits_a, logits_b) and torch.equal(text_a, text_b)
    for name, grad in grads_a.items():  # gradients sum over B*T in another order: equal up to fp32 rounding
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-6)


def test_forward_with_frozen_weights_matches_to_rounding(pair, codes) -> None:
    """Frozen weights (the base under LoRA, eval): moshi's path is a broadcast bmm, the patched one a GEMM; they
    sum in another order, so logits agree to fp32 rounding (~1e-6), not bit for bit."""
    logits = []
    for _, lm in pair_items(pair):
        lm.requires_grad_(False)
        out = lm(codes)
        logits.append(out.logits[out.mask])
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)


def test_lmgen_streaming_is_identical(pair, codes) -> None:
    """LMGen feeds the depformer one codebook at a time, so its per-step inputs are already contiguous."""
    streams = {}
    for name, lm in pair_items(pair):
        lm.eval()
        text_logits: list[torch.Tensor] = []
        gen = LMGen(lm, temp=0.8, temp_text=0.7, on_text_logits_hook=text_logits.append)
        torch.manual_seed(0)
        with gen.streaming(batch_size=2):
            tokens = [gen.step(codes[:, 9:, t : t + 1]) for t in range(10)]
        streams[name] = (torch.cat([t for t in tokens if t is not None], -1), torch.cat(text_logits))
    assert torch.equal(streams["plain"][0], streams["patched"][0])
    assert torch.equal(streams["plain"][1], streams["patched"][1])


def test_patch_is_idempotent_and_scoped_to_its_model(reference) -> None:
    lm = copy.deepcopy(reference)
    patch_depformer(lm)
    assert patch_depformer(lm) == 0
    assert not is_patched(reference)
    assert is_patched(copy.deepcopy(lm))  # hooks travel with deepcopy


def test_lora_layers_and_merged_copies_keep_the_patch(reference, codes) -> None:
    lm = copy.deepcopy(reference)
    patch_depformer(lm)
    model = apply_lora(lm, LoraSpec("all", rank=4))  # peft swaps every per-step Linear for its wrapper
    lora_a = base_lm(model).depformer.layers[0].self_attn.out_projs[6].lora_A["default"]
    seen = _record_contiguity(lora_a)
    with torch.no_grad():
        model(codes)
    assert seen == [True]  # the LoRA branch gets the contiguous input too, not only the frozen base Linear
    assert is_patched(merged_copy(model))
