"""train.fp8: the frozen base layers under LoRA train in float8 (torchao, emulated on CPU), recall stays bf16.

On CPU torchao emulates the float8 GEMMs (the same casts and scales, high-precision products), which is enough to
check what is swapped, that every swapped layer runs, what compiling keeps of the backward, and that recall is
untouched. Speed and the loss curve against bf16's spread need FP8 tensor cores: benchmarks/compile_equivalence.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from functorch.compile import make_boxed_func
from torch import nn
from torch._functorch.aot_autograd import aot_module_simplified
from torchao.float8.float8_linear import Float8Linear

from conftest import refused_in_process
from moshi_knowledge.model.lora import generation_lm
from moshi_knowledge.train.compile import set_layer_compile
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.train.fp8 import frozen_base_layers, to_fp8_training
from test_train_compile import _lora, _relative_errors, _step_gradients
from test_train_data import tiny_lm

CFG = TrainConfig(batch_size=2, seq_sec=8.0, precision="fp32", gradient_checkpointing=True, seed=3, compile=False)


def test_every_frozen_base_layer_is_swapped_runs_in_the_step_and_only_the_adapters_learn(tmp_path: Path) -> None:
    model = _lora(tiny_lm(), 4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    _, bf16 = _step_gradients(model, CFG, tmp_path / "before")
    bases = frozen_base_layers(model)
    assert to_fp8_training(model, emulate=True) == len(bases) == 57  # every Linear of the tiny LM has an adapter
    assert to_fp8_training(model, emulate=True) == 0
    swapped = [m for m in model.modules() if isinstance(m, Float8Linear)]
    assert len(swapped) == 57 and all(not m.weight.requires_grad for m in swapped)
    assert all(type(m.lora_A["default"]) is nn.Linear for m in model.modules() if hasattr(m, "lora_A"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    ran: set[int] = set()
    for m in swapped:
        m.register_forward_hook(lambda module, args, out: ran.add(id(module)))
    _, fp8 = _step_gradients(model, CFG, tmp_path / "after")
    assert ran == {id(m) for m in swapped}  # none is read around its forward (as moshi's FFN kernel would)
    assert fp8.keys() == bf16.keys() and all("lora" in name for name in fp8)
    errors = _relative_errors(bf16, fp8)
    assert all(0 < e < 0.2 for e in errors.values()), errors  # float8 moved them, and not far


def test_compiled_a_frozen_fp8_layer_runs_no_weight_gradient_gemm() -> None:
    """torchao's backward computes the weight's gradient even for a frozen weight; compiled, it is dropped, so a
    frozen layer's backward is the input gradient's GEMM alone (and a trained layer's keeps both)."""
    gemms: dict[bool, int] = {}
    for frozen in (True, False):
        layer = nn.Sequential(nn.Linear(64, 128, bias=False))
        layer[0].weight.requires_grad_(not frozen)
        model = _lora_free(layer)
        graphs: list[torch.fx.GraphModule] = []

        def backend(gm: torch.fx.GraphModule, inputs: list, graphs: list = graphs) -> object:
            def keep(g: torch.fx.GraphModule, _: list) -> object:
                graphs.append(g)
                return make_boxed_func(g.forward)
            return aot_module_simplified(gm, inputs, fw_compiler=lambda g, _: make_boxed_func(g.forward),
                                         bw_compiler=keep)

        torch.compile(model, backend=backend)(torch.randn(32, 64, requires_grad=True)).sum().backward()
        gemms[frozen] = sum(n.op == "call_function" and n.target == torch.ops.aten.mm.default
                            for n in graphs[-1].graph.nodes)
    assert gemms == {True: 1, False: 2}


def _lora_free(layer: nn.Sequential) -> nn.Sequential:
    """`layer` with its Linear swapped as to_fp8_training swaps a base layer (here without an adapter around it)."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = replace(Float8LinearConfig.from_recipe_name("rowwise"), emulate=True)
    return convert_to_float8_training(layer, config=config)


def test_each_compiled_layer_traces_whole_with_its_fp8_layers() -> None:
    model = _lora(tiny_lm(), 4)
    to_fp8_training(model, emulate=True)
    set_layer_compile(model, True)
    layers = [m for m in model.modules() if m.__class__.__name__ == "StreamingTransformerLayer"]
    for layer in layers:
        explained = torch._dynamo.explain(layer.forward)(torch.randn(2, 6, layer.norm1.alpha.shape[-1]))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    set_layer_compile(model, False)


def test_recall_reads_the_same_weights_in_bf16_whatever_train_fp8() -> None:
    """The instrument does not change with the setting: recall's view multiplies the base weights itself."""
    codes = torch.randint(0, 16, (2, 17, 12))
    outputs = []
    for fp8 in (False, True):
        model = _lora(tiny_lm(), 4)
        if fp8:
            to_fp8_training(model, emulate=True)
        with torch.no_grad(), generation_lm(model) as lm:
            outputs.append(lm.forward_text(codes.clamp(max=lm.card - 1))[1])
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize(("overrides", "said"), [
    ([], "needs FP8 tensor cores (compute capability 8.9 or more"),  # this machine's CPU
    (["lora=full"], "lora=full trains every weight"),
    (["lora.use_dora=true"], "lora.use_dora=true rescales them"),
    (["train.compile=false"], "only the compiled step fuses the float8 casts"),
])
def test_train_fp8_where_it_cannot_gain_exits_2_before_any_stage(overrides: list[str], said: str, tmp_path, monkeypatch,
                                                                   capsys, caplog) -> None:
    if overrides:  # past the device check, as on an H100
        monkeypatch.setattr("moshi_knowledge.preflight.fp8_capable", lambda device: True)
    output = refused_in_process(["train.fp8=true", *overrides], tmp_path, monkeypatch, capsys, caplog)
    assert said in output and "train.fp8=false" in output
