"""GatedLoRA on real tiny models with real peft and bitsandbytes: gates, exactness, files, export, bake.

Adapters are given seeded random factors instead of being trained (fast, and every round then moves the
logits by a few nats, so an exactness check that passes is not passing on a no-op).
"""

from __future__ import annotations

import copy
import json
import math
from functools import cache

import pytest
import torch
from transformers import AutoModelForCausalLM

import steerheal as sh
from conftest import logits as _logits
from conftest import randomise, tiny
from steerheal.adapter.gated import GatedLoRA
from steerheal.read.steering import add_to_residual


def _randomise(adapter, seed: int, scale: float = 0.04) -> None:
    randomise(adapter, seed, scale)


ARCHS = ["llama", "qwen3", "gemma3", "gpt2", "toyworld"]
# float32 rounding of differently ordered sums: the logits of these models reach about |10| (one ulp ~1e-6),
# and reordering the LoRA matmuls over 4 blocks moves them by at most 6.3e-6 here (docs/adapter.md). The
# margin is thin by the choice of 1e-5; larger adapters (these move logits by 0.75-2.7) round more.
EXPORT_ATOL = 1e-5
BAKE_ATOL = 1e-4
# 4-bit base: the baked model multiplies by the float32 de-quantised weight (with the delta added) where the
# student runs bitsandbytes' 4-bit matmul plus the LoRA branch: the same float32 numbers, summed in another
# order. Measured max |Δlogit| 6.4e-6 on tiny qwen3 (docs/adapter.md); asserted at 1e-4, the float32 bound.
BAKE_4BIT_ATOL = 1e-4


@cache
def _toyworld():
    return sh.toyworld.load()


def _fresh(arch: str):
    """A private copy of a cached model (attach changes a model in place) and its tokenizer."""
    model, tok = _toyworld() if arch == "toyworld" else tiny(arch)
    return copy.deepcopy(model), tok


def _ids(model, n: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    vocab = sh.fingerprint(model).vocab_size
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def _two_rounds(arch: str, r: int = 4):
    """(model, pristine copy, ids, base logits, adapter with one trained history round and a trained current)."""
    model, _ = _fresh(arch)
    pristine = copy.deepcopy(model)
    ids = _ids(model)
    base = _logits(model, ids)
    adapter = GatedLoRA.attach(model, r=r)
    assert torch.equal(_logits(model, ids), base), "a fresh round (B = 0) must not change the model"
    _randomise(adapter, 1)
    adapter.fold()
    _randomise(adapter, 2)
    return model, pristine, ids, base, adapter


@pytest.mark.parametrize("arch", ARCHS)
def test_gates_export_bake_and_cat_collapse_are_exact(arch, tmp_path):
    from peft import PeftModel

    model, pristine, ids, base, adapter = _two_rounds(arch)
    student = _logits(model, ids)
    assert (student - base).abs().max() > 0.5, "the random rounds must move the logits, or nothing is tested"

    # gate 0 is the base, bit for bit
    with adapter.gates(history=0.0, current=0.0):
        assert torch.equal(_logits(model, ids), base)
    with torch.no_grad(), adapter.reference("base"):
        assert torch.equal(_logits(model, ids), base)
    with adapter.reference("prev"):
        prev = _logits(model, ids)
    with adapter.gates(history=1.0, current=0.0):
        assert torch.equal(_logits(model, ids), prev)
    assert not torch.equal(prev, base) and not torch.equal(prev, student)
    assert torch.equal(_logits(model, ids), student), "gates come back after the block"
    with pytest.raises(RuntimeError, match="inside"), adapter.gates(history=[0.5], current=2.0):
        assert not torch.equal(_logits(model, ids), student)
        raise RuntimeError("inside")
    assert torch.equal(_logits(model, ids), student), "gates come back after an exception too"
    assert [r.gate for r in adapter.rounds] == [1.0, 1.0]

    # export: one plain peft adapter equal to the student (at the default and at other gates)
    adapter.export_peft(tmp_path / "export")
    assert {p.name for p in (tmp_path / "export").iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "steerheal_export.json",
    }
    config = json.loads((tmp_path / "export" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 8 and config["peft_type"] == "LORA"
    plain = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path / "export")
    assert (_logits(plain, ids) - student).abs().max() <= EXPORT_ATOL
    with adapter.gates(history=[0.5], current=-1.5):
        gated = _logits(model, ids)
    adapter.export_peft(tmp_path / "export_gated", history=[0.5], current=-1.5)
    plain = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path / "export_gated")
    assert (_logits(plain, ids) - gated).abs().max() <= EXPORT_ATOL

    # bake: a dense model equal to the student, saved and loaded by transformers alone
    dense = adapter.bake()
    assert type(dense) is type(pristine) and not any("lora" in n for n, _ in dense.named_parameters())
    assert (_logits(dense, ids) - student).abs().max() <= BAKE_ATOL
    dense.save_pretrained(tmp_path / "baked")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked")
    assert torch.equal(_logits(reloaded, ids), _logits(dense, ids))
    assert torch.equal(_logits(model, ids), student), "baking leaves the student as it was"

    # cat collapse of two history rounds: same logits, rank = the sum
    adapter.fold()
    _randomise(adapter, 3)
    before = _logits(model, ids)
    report = adapter.collapse_history("cat")
    assert (
        report["rank"] == 8
        and report["into"] == "round_0_to_1"
        and [r.name for r in adapter.history] == ["round_0_to_1"]
    )
    assert (_logits(model, ids) - before).abs().max() <= EXPORT_ATOL
    assert {id(p) for p in adapter.trainable_parameters()} == {id(p) for p in model.parameters() if p.requires_grad}


def test_steering_hooks_work_on_the_adapted_model():
    model, tok = _fresh("llama")
    ids = _ids(model)
    v = sh.Vector.train(model, tok, ["I love the garden.", "What joy."], ["I hate the garden.", "What misery."])
    with v(model, C=3.0):
        steered_base = _logits(model, ids)
    adapter = GatedLoRA.attach(model, r=4)
    _randomise(adapter, 1)
    with adapter.reference("base"), v(adapter.peft_model, C=3.0):
        assert torch.equal(_logits(adapter.peft_model, ids), steered_base)
    student = _logits(model, ids)
    with add_to_residual(model, {1: torch.ones(64)}):
        assert not torch.equal(_logits(model, ids), student)
    assert torch.equal(_logits(model, ids), student)


def test_only_the_current_round_trains_and_a_step_after_fold_changes_only_it():
    model, _, ids, _, adapter = _two_rounds("llama")
    assert [r.name for r in adapter.history] == ["round_0"] and adapter.current.name == "round_1"
    trainable = adapter.trainable_parameters()
    assert len(trainable) == 2 * len(adapter.target_names)
    assert {id(p) for p in trainable} == {id(p) for p in model.parameters() if p.requires_grad}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(".round_1." in names[id(p)] for p in trainable)
    assert all(p.dtype == torch.float32 for p in trainable)

    adapter.fold()  # round_1 joins the history; round_2 starts at B = 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(adapter.trainable_parameters(), lr=1e-2)
    model.train()
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in adapter.trainable_parameters()]
    optimizer.zero_grad()
    loss = model(ids, labels=ids).loss
    with torch.no_grad(), adapter.reference("prev"):  # a heal step takes its KL reference mid-step
        model(ids)
    loss.backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(adapter.trainable_parameters(), plain, strict=True))
    optimizer.step()
    model.eval()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "the step must change something"
    assert all(".round_2." in n for n in changed), sorted(changed)[:5]
    assert any(".lora_B.round_2." in n for n in changed)


def test_svd_collapse_reports_the_error_it_makes(logs):
    model, _, ids, _, adapter = _two_rounds("qwen3")
    adapter.fold()
    _randomise(adapter, 3)
    adapter.set_gates(history=[0.7, 1.3], current=1.0)
    history_before = adapter.deltas(history=[0.7, 1.3], current=0.0)
    report = adapter.collapse_history("svd", rank=4)
    assert report["rank"] == 4 and adapter.history[0].rank == 4 and adapter.history[0].gate == 1.0
    after = adapter.deltas(current=0.0)
    cut = sum(float((after[m] - history_before[m]).norm()) ** 2 for m in after)
    total = sum(float(history_before[m].norm()) ** 2 for m in after)
    measured = (cut / total) ** 0.5
    assert 0.05 < report["relative_error"] < 1 and abs(measured - report["relative_error"]) < 1e-4
    assert report["worst_relative_error"] >= report["relative_error"]
    assert any("svd, rank 4" in m and "relative error" in m for m in logs)

    # rank at least the sum of the ranks cuts nothing: logits stay within float rounding
    model, _, ids, _, adapter = _two_rounds("qwen3")
    adapter.fold()
    _randomise(adapter, 3)
    before = _logits(model, ids)
    report = adapter.collapse_history("svd", rank=12)
    assert report["relative_error"] < 1e-6 and (_logits(model, ids) - before).abs().max() <= EXPORT_ATOL


def test_save_load_reproduces_logits_exactly(tmp_path, logs):
    from peft import PeftModel

    model, pristine, ids, _, adapter = _two_rounds("gemma3")
    adapter.fold()
    _randomise(adapter, 3)
    adapter.collapse_history("cat")  # history of rank 8, current of rank 4
    adapter.set_gates(history=[0.75], current=1.25)
    student = _logits(model, ids)
    adapter.save(tmp_path / "gated")
    meta = json.loads((tmp_path / "gated" / "gated.json").read_text())
    assert meta["format_version"] == 1 and meta["depth_band"] == [0.2, 0.8] and meta["r"] == 4
    assert [r["name"] for r in meta["history"]] == ["round_0_to_1"] and meta["current"]["name"] == "round_2"
    assert meta["fingerprint"] == sh.fingerprint(pristine).to_dict()

    copy_for_load = copy.deepcopy(pristine)
    loaded = GatedLoRA.load(copy_for_load, tmp_path / "gated")
    assert torch.equal(_logits(copy_for_load, ids), student)
    assert [(r.name, r.rank, r.gate) for r in loaded.rounds] == [("round_0_to_1", 8, 0.75), ("round_2", 4, 1.25)]
    assert {id(p) for p in loaded.trainable_parameters()} == {
        id(p) for p in copy_for_load.parameters() if p.requires_grad
    }
    # each round is a plain peft adapter
    plain = PeftModel.from_pretrained(copy.deepcopy(pristine), tmp_path / "gated" / "round_2")
    with adapter.gates(history=0.0, current=1.0):
        assert (_logits(plain, ids) - _logits(model, ids)).abs().max() <= EXPORT_ATOL

    # re-saving over an earlier save drops round folders that are no longer rounds
    adapter.fold()
    adapter.collapse_history("svd", rank=4)
    adapter.save(tmp_path / "gated")
    assert sorted(p.name for p in (tmp_path / "gated").iterdir()) == ["gated.json", "round_0_to_2", "round_3"]


def test_4bit_base_gate0_bake_and_precision_warning(tmp_path, logs):
    original, tok = tiny("qwen3")
    original.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    model, _ = sh.load_model(tmp_path / "base", quant="4bit")
    fp32, _ = sh.load_model(tmp_path / "base")
    ids = _ids(model)
    base = _logits(model, ids)
    adapter = GatedLoRA.attach(model, r=4)
    assert all(p.dtype == torch.float32 for p in adapter.trainable_parameters())
    _randomise(adapter, 1)
    adapter.fold()
    _randomise(adapter, 2)
    with adapter.reference("base"):
        assert torch.equal(_logits(model, ids), base)
    student = _logits(model, ids)
    assert (student - base).abs().max() > 0.5

    loss = model(ids, labels=ids).loss  # QLoRA: gradients reach the current round, nothing else
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".round_1." in n for n in with_grad)
    model.zero_grad(set_to_none=True)

    # rounds trained on the 4-bit base load onto a float32 base with a warning, not an error; onto the float32
    # base whose weights are the 4-bit ones de-quantised they give the exact float32 student (unmerged LoRA)
    adapter.save(tmp_path / "gated")
    dequantised = _dequantised_copy(fp32, model)
    GatedLoRA.load(dequantised, tmp_path / "gated")
    assert any("another precision" in m and "quantization: '4bit-nf4' != None" in m for m in logs)
    exact = _logits(dequantised, ids)

    dense = adapter.bake()
    assert dense.dtype == torch.float32 and getattr(dense.config, "quantization_config", None) is None
    error = float((_logits(dense, ids) - exact).abs().max())
    assert error <= BAKE_4BIT_ATOL, error  # the bake is the exact float32 merge, up to summation order
    # bitsandbytes' own 4-bit forward: float32 on most CPUs (then within float32 rounding of the exact student),
    # bfloat16 on CPUs with AVX512-BF16 and on GPUs (then about 0.04 per linear layer): measured, not asserted
    # (docs/adapter.md, "Bake")
    forward_rounding = float((student - exact).abs().max())
    assert math.isfinite(forward_rounding)
    print(f"4-bit: bake vs exact float32 {error:.2g}, 4-bit forward vs exact float32 {forward_rounding:.2g}")
    dense.save_pretrained(tmp_path / "baked")
    assert "quantization_config" not in json.loads((tmp_path / "baked" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "baked")
    assert torch.equal(_logits(reloaded, ids), _logits(dense, ids))

    # why steerheal de-quantises itself: peft's own merge keeps the 4-bit layers and re-quantises
    with pytest.warns(UserWarning, match="rounding errors"):
        merged = adapter.peft_model.merge_and_unload()
    assert (_logits(merged, ids) - exact).abs().max() > 100 * max(error, 1e-6)


def _dequantised_copy(fp32, quantised):
    """`fp32` with every bitsandbytes 4-bit linear weight of `quantised` (adapted or not) replaced by its float32
    de-quantisation: the base whose exact float32 arithmetic a bake of rounds trained on the 4-bit base must
    reproduce."""
    from steerheal.lm.dequant import dense_weight

    with torch.no_grad():
        for name, module in quantised.named_modules():
            weight = getattr(module, "weight", None)
            if type(weight).__name__ == "Params4bit":
                fp32.get_submodule(name.replace(".base_layer", "")).weight.copy_(dense_weight(weight, name))
    return fp32


def test_cpu_packed_4bit_layout_is_read_with_its_bf16_scales(tmp_path):
    import bitsandbytes.functional as bnbf

    from steerheal.lm.dequant import _dequantize_cpu_packed

    original, tok = tiny("llama")
    original.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, _ = sh.load_model(tmp_path, quant="4bit")
    weight = model.model.layers[1].mlp.up_proj.weight  # [128, 64]
    state = copy.deepcopy(weight.quant_state)
    absmax = bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset if state.nested else state.absmax
    packed, packed_state = bnbf._convert_weight_packed_for_cpu(weight.data.clone(), copy.deepcopy(state))
    rounded = bnbf.QuantState(  # the standard layout with the packed layout's bfloat16 block scales
        absmax=absmax.float().bfloat16().float(),
        shape=state.shape,
        code=state.code,
        blocksize=state.blocksize,
        quant_type="nf4",
        dtype=torch.bfloat16,
    )
    expected = bnbf.dequantize_4bit(weight.data, rounded).float()
    got = _dequantize_cpu_packed(packed, packed_state)
    assert torch.equal(got, expected)
    standard = bnbf.dequantize_4bit(weight.data, state)
    assert 0 < float((got - standard).abs().max()) < 0.01 * float(standard.abs().max())


def test_targets_depth_band_patterns_and_bf16_base():
    model, _ = _fresh("toyworld")  # 4 blocks: centres 0.125, 0.375, 0.625, 0.875
    adapter = GatedLoRA.attach(model)
    blocks = sorted({int(n.split(".")[2]) for n in adapter.target_names})
    assert blocks == [1, 2] and len(adapter.target_names) == 14  # 7 linear layers per llama block

    rng = torch.random.get_rng_state()
    again = GatedLoRA.attach(_fresh("toyworld")[0])
    assert torch.equal(torch.random.get_rng_state(), rng), "attach must not consume the global RNG"
    a0, a1 = (a.trainable_parameters()[0] for a in (adapter, again))
    assert torch.equal(a0, a1) and a0.abs().sum() > 0, "same seed, same random A factor"

    model, _ = _fresh("llama")
    adapter = GatedLoRA.attach(model, target_modules=["q_proj", r"mlp\..*"], depth_band=(0.0, 1.0))
    assert len(adapter.target_names) == 4 * 4
    assert all(n.endswith(("q_proj", "gate_proj", "up_proj", "down_proj")) for n in adapter.target_names)

    model, _ = _fresh("qwen3")
    model = model.to(torch.bfloat16)
    ids = _ids(model)
    base = _logits(model, ids)
    adapter = GatedLoRA.attach(model, target_modules="v_proj", depth_band=(0.5, 1.0))
    assert adapter.target_names == ["model.layers.2.self_attn.v_proj", "model.layers.3.self_attn.v_proj"]
    assert all(p.dtype == torch.float32 for p in adapter.trainable_parameters())
    _randomise(adapter, 1)
    assert not torch.equal(_logits(model, ids), base)
    with adapter.reference("base"):
        assert torch.equal(_logits(model, ids), base)


def test_bake_to_bfloat16_reports_its_rounding(logs):
    *_, adapter = _two_rounds("llama")
    dense = adapter.bake(dtype=torch.bfloat16)
    report = adapter.last_bake_report
    assert dense.dtype == torch.bfloat16 and report["dtype"] == "bfloat16"
    assert 0 < report["relative_error_of_delta"] < 1 and report["worst_module"] in adapter.target_names
    assert any("bake to bfloat16" in m and "of the adapters' own delta" in m for m in logs)
    adapter.bake()
    assert adapter.last_bake_report["relative_error_of_delta"] == 0.0


def test_bad_input(tmp_path):
    model, _ = _fresh("llama")
    with pytest.raises(sh.SteerhealError, match="r=0: a LoRA rank is a positive integer"):
        GatedLoRA.attach(model, r=0)
    with pytest.raises(sh.SteerhealError, match=r"depth_band=\(0.4, 0.45\) selects none of the 4 decoder blocks"):
        GatedLoRA.attach(model, depth_band=(0.4, 0.45))
    with pytest.raises(sh.SteerhealError, match="not a band"):
        GatedLoRA.attach(model, depth_band=(0.8, 0.2))
    with pytest.raises(sh.SteerhealError, match=r"pattern\(s\) \['qproj'\] match no linear layer.*self_attn.q_proj"):
        GatedLoRA.attach(model, target_modules=["q_proj", "qproj"])
    with pytest.raises(sh.SteerhealError, match="not a regular expression"):
        GatedLoRA.attach(model, target_modules=["q_proj("])
    with pytest.raises(sh.SteerhealError, match="alpha=0"):
        GatedLoRA.attach(model, alpha=0)
    assert not any("lora" in n for n, _ in model.named_parameters()), "bad input must be refused before model work"

    adapter = GatedLoRA.attach(model, r=4)
    with pytest.raises(sh.SteerhealError, match="already carries peft adapters"):
        GatedLoRA.attach(model)
    with pytest.raises(sh.SteerhealError, match="no rounds to export"):
        adapter.export_peft(tmp_path / "none")
    assert not (tmp_path / "none").exists()
    with pytest.raises(sh.SteerhealError, match="no history to collapse"):
        adapter.collapse_history()
    _randomise(adapter, 1)
    adapter.fold()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(sh.SteerhealError, match="gates: current=.* is not finite"), adapter.gates(current=bad):
            pass
        with pytest.raises(sh.SteerhealError, match=r"history\[0\]=.* is not finite"):
            adapter.export_peft(tmp_path / "x", history=[bad])
    with pytest.raises(sh.SteerhealError, match=r"history has 2 gates but there are 1 history rounds \['round_0'\]"):
        adapter.set_gates(history=[1.0, 1.0])
    with pytest.raises(sh.SteerhealError, match="no rounds to export"):
        adapter.export_peft(tmp_path / "x", history=0.0)
    with pytest.raises(sh.SteerhealError, match="reference 'teacher' is unknown"), adapter.reference("teacher"):
        pass
    with pytest.raises(sh.SteerhealError, match="collapse method 'mean' is unknown"):
        adapter.collapse_history("mean")
    with pytest.raises(sh.SteerhealError, match="rank= is for 'svd'"):
        adapter.collapse_history("cat", rank=4)
    with pytest.raises(sh.SteerhealError, match="rank=-1"):
        adapter.collapse_history("svd", rank=-1)
    with pytest.raises(sh.SteerhealError, match="not a floating-point dtype"):
        adapter.bake(dtype=torch.int8)
    assert [r.gate for r in adapter.rounds] == [1.0, 1.0]

    adapter.save(tmp_path / "gated")
    other, _ = _fresh("qwen3")
    with pytest.raises(sh.SteerhealError, match="trained on another model.*architecture: 'LlamaForCausalLM'"):
        GatedLoRA.load(other, tmp_path / "gated")
    assert not any("lora" in n for n, _ in other.named_parameters())
    with pytest.raises(sh.SteerhealError, match="gated.json does not exist"):
        GatedLoRA.load(other, tmp_path / "missing")
    (tmp_path / "gated" / "round_1" / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(sh.SteerhealError, match="round_1.*corrupted or truncated"):
        GatedLoRA.load(_fresh("llama")[0], tmp_path / "gated")
