"""train.compile: compiled transformer layers give the eager step's gradients.

On CPU, the tiny LM (inductor's C++ kernels; attention keeps the dense mask there). On a GPU (skipped without
CUDA), the full-size moshiko architecture with random fp32 weights, where attention runs through FlexAttention.
Both compare one step's gradients of every parameter group, fp32 against fp32, on packed rows with gradient
checkpointing and LoRA on every Linear. bf16 loss curves are compared in benchmarks/compile_equivalence.py.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from moshi.models import loaders
from moshi.models.lm import LMModel
from torch import nn
from torch._dynamo.utils import counters

from moshi_knowledge.model.depformer_patch import patch_depformer
from moshi_knowledge.model.lora import apply_lora
from moshi_knowledge.specs.lora import LoraSpec
from moshi_knowledge.train.compile import compile_wanted, set_layer_compile
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.train.loop import Trainer
from moshi_knowledge.train.nan_guard import NanGuard
from test_train_data import spoken_qa, tiny_lm

GROUPS = {"depformer": r"depformer", "main transformer": r"\.transformer\.", "heads and inputs": r"."}


def _group(name: str) -> str:
    return next(group for group, pattern in GROUPS.items() if re.search(pattern, name))


def _lora(lm: LMModel, rank: int) -> nn.Module:
    """LoRA on every Linear, B moved off its zero start (else every gradient of A is exactly 0)."""
    model = apply_lora(lm, LoraSpec(targets="all", rank=rank, alpha=2.0 * rank))
    patch_depformer(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


def _step_gradients(model: nn.Module, cfg: TrainConfig, tmp_path: Path) -> tuple[Trainer, dict[str, torch.Tensor]]:
    """The gradients of the loop's first step (its own batching, mask, loss and backward), before any update."""
    model.zero_grad(set_to_none=True)
    trainer = Trainer(model, spoken_qa(30, seed=5, turns=3), [], cfg, NanGuard("skip"), tmp_path)
    rows = trainer.stream.next_rows(cfg.batch_size)
    trainer._backward(trainer._micro_batches(rows), inject=False)
    grads = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return trainer, grads


def _relative_errors(eager: dict[str, torch.Tensor], compiled: dict[str, torch.Tensor]) -> dict[str, float]:
    """||compiled - eager|| / ||eager|| over each parameter group's gradients."""
    assert eager.keys() == compiled.keys()
    diff: dict[str, float] = {}
    norm: dict[str, float] = {}
    for name, g in eager.items():
        group = _group(name)
        diff[group] = diff.get(group, 0.0) + float((compiled[name] - g).pow(2).sum())
        norm[group] = norm.get(group, 0.0) + float(g.pow(2).sum())
    return {group: (diff[group] / norm[group]) ** 0.5 for group in diff if norm[group] > 0}


def _compare(lm: LMModel, rank: int, cfg: TrainConfig, tmp_path: Path) -> tuple[Trainer, dict[str, float]]:
    """Eager, then compiled, on the same model and rows (the same seed gives the same stream)."""
    model = _lora(lm, rank)
    _, eager = _step_gradients(model, replace(cfg, compile=False), tmp_path / "eager")
    graphs = counters["stats"]["unique_graphs"]
    trainer, compiled = _step_gradients(model, replace(cfg, compile=True), tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] > graphs, "nothing was compiled"
    return trainer, _relative_errors(eager, compiled)


def test_auto_compiles_on_a_gpu_unless_sharded() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert (compile_wanted(None, cpu, False), compile_wanted(None, gpu, False), compile_wanted(None, gpu, True)) \
        == (False, True, False)
    assert compile_wanted(True, cpu, False) and not compile_wanted(False, gpu, False)


def test_compiled_layers_give_the_eager_gradients_on_cpu(tmp_path: Path) -> None:
    cfg = TrainConfig(batch_size=2, seq_sec=8.0, precision="fp32", gradient_checkpointing=True, seed=3)
    trainer, errors = _compare(tiny_lm(), 4, cfg, tmp_path)
    assert trainer.compiled_layers == 3 and not trainer.flex  # 2 main layers and 1 depformer layer
    assert set(errors) == set(GROUPS)
    assert max(errors.values()) <= 1e-4, errors
    # the same model under compile=false trains eagerly again: its layers drop the compiled call
    again = Trainer(trainer.model, spoken_qa(4), [], TrainConfig(batch_size=2, seq_sec=8.0, compile=False),
                    NanGuard("skip"), tmp_path / "again")
    assert again.compiled_layers == 0
    assert all(m._compiled_call_impl is None for m in trainer.model.modules())


def test_the_installed_torch_compiles_each_layer_whole() -> None:
    """A graph break splits a compiled layer into graphs inductor cannot fuse across (torch 2.9 broke at moshi's
    `ExitStack`, attention and FFN compiling apart): each layer, LoRA included, traces as one graph."""
    model = _lora(tiny_lm(), 4)
    assert set_layer_compile(model, True) == 3
    layers = [m for m in model.modules() if m.__class__.__name__ == "StreamingTransformerLayer"]
    for layer in layers:
        width = layer.norm1.alpha.shape[-1]
        explained = torch._dynamo.explain(layer.forward)(torch.randn(2, 6, width))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
            [r.reason.splitlines()[0] for r in explained.break_reasons]
    set_layer_compile(model, False)
    assert all("forward" not in vars(layer) for layer in layers)  # moshi's own forward again


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the full-size model and FlexAttention's GPU kernels")
def test_compiled_layers_give_the_eager_gradients_at_full_size(tmp_path: Path) -> None:
    device = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products on both sides
    torch.manual_seed(0)
    with torch.device(device):
        lm = LMModel(**loaders._lm_kwargs, device=device, dtype=torch.float32)
    cfg = TrainConfig(batch_size=2, seq_sec=24.0, precision="fp32", gradient_checkpointing=True, seed=3)
    trainer, errors = _compare(lm, 16, cfg, tmp_path)
    assert trainer.compiled_layers == 32 + 6 and trainer.flex
    assert set(errors) == set(GROUPS)
    assert max(errors.values()) <= 1e-4, errors
