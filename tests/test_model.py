"""load_model, decoder_layers, fingerprint and tiny_model on real (tiny) transformers models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

import steerheal as sh
from conftest import tiny
from steerheal.lm.blocks import DECODER_LAYER_PATHS


@pytest.mark.parametrize("arch", sh.TINY_ARCHS)
def test_decoder_layers_finds_every_block(arch):
    model, _ = tiny(arch)
    blocks = sh.decoder_layers(model)
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == model.config.num_hidden_layers == 4
    assert model.config.model_type in DECODER_LAYER_PATHS


def test_decoder_layers_under_peft_and_on_4bit(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = sh.tiny_model("llama", seed=3)
    blocks = list(sh.decoder_layers(model))
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert list(sh.decoder_layers(wrapped)) == blocks

    model, tok = sh.tiny_model("qwen3")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    quantised, _ = sh.load_model(tmp_path, quant="4bit")
    import bitsandbytes as bnb

    layers = sh.decoder_layers(quantised)
    assert len(layers) == 4
    assert isinstance(layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert sh.fingerprint(quantised).quantization == "4bit-nf4"


class _OddConfig(PretrainedConfig):
    model_type = "odd"

    def __init__(self, num_hidden_layers=3, hidden_size=8, vocab_size=16, **kw):
        super().__init__(num_hidden_layers=num_hidden_layers, hidden_size=hidden_size, vocab_size=vocab_size, **kw)


class _OddModel(PreTrainedModel):
    config_class = _OddConfig

    def __init__(self, config):
        super().__init__(config)
        self.stack = nn.ModuleList(nn.Linear(8, 8) for _ in range(config.num_hidden_layers))


def test_decoder_layers_unknown_layout_names_class_and_paths():
    with pytest.raises(sh.SteerhealError, match=r"_OddModel.*model_type='odd'.*tried \[.*transformer\.h"):
        sh.decoder_layers(_OddModel(_OddConfig()))


def test_decoder_layers_checked_fallback_for_unknown_type(logs):
    model, _ = sh.tiny_model("llama", seed=5)
    model.config.model_type = "llama_fork"
    assert len(sh.decoder_layers(model)) == 4
    assert any("llama_fork" in m and "model.layers" in m for m in logs)


def test_fingerprint_identity_and_precision(tmp_path):
    model, tok = tiny("gemma3")
    fp = sh.fingerprint(model)
    assert (fp.architecture, fp.hidden_size, fp.n_layers, fp.vocab_size) == (
        "Gemma3ForCausalLM",
        64,
        4,
        len(tok),
    )
    assert (fp.dtype, fp.quantization) == ("float32", None)
    model.save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    again, _ = sh.load_model(tmp_path / "gemma")
    four, _ = sh.load_model(tmp_path / "gemma", quant="4bit")
    fp2, fp4 = sh.fingerprint(again), sh.fingerprint(four)
    assert fp2.name == "gemma" and fp2.differences(fp4, "identity") == []
    assert fp2.differences(fp4, "precision") == ["quantization: None != '4bit-nf4'"]
    other = sh.fingerprint(tiny("llama")[0])
    assert "architecture: 'Gemma3ForCausalLM' != 'LlamaForCausalLM'" in fp2.differences(other, "identity")
    assert sh.Fingerprint.from_dict(fp.to_dict(), "x") == fp
    with pytest.raises(sh.SteerhealError, match="fingerprint lacks"):
        sh.Fingerprint.from_dict({"name_or_path": "x"}, "test file")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_model_save_load_round_trip(tmp_path, arch):
    model, tok = tiny(arch)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = sh.load_model(tmp_path)
    assert ltok.padding_side == "left" and ltok.pad_token == "<|pad|>"
    assert ltok.chat_template == tok.chat_template
    ids = torch.tensor([tok("The harbour at noon.").input_ids])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert not loaded.training


def test_load_model_sets_missing_pad_token_and_logs(tmp_path, logs):
    model, tok = sh.tiny_model("qwen2")
    tok.pad_token = None
    tok.padding_side = "right"
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded = sh.load_model(tmp_path)
    assert loaded.pad_token == loaded.eos_token == "<|end|>" and loaded.padding_side == "left"
    assert any("no pad token" in m for m in logs)


def test_load_model_8bit_on_cpu(tmp_path):
    model, tok = tiny("llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    eight, _ = sh.load_model(tmp_path, quant="8bit")
    assert sh.fingerprint(eight).quantization == "8bit"


def test_load_model_bad_input(tmp_path):
    with pytest.raises(sh.SteerhealError, match="quant='3bit'"):
        sh.load_model("anything", quant="3bit")
    with pytest.raises(sh.SteerhealError, match="could not load model .*local folder does not exist"):
        sh.load_model(tmp_path / "missing-model")
    with pytest.raises(sh.SteerhealError, match="could not load model 'no-such-org/no-such-model'.*not a local folder"):
        sh.load_model("no-such-org/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sh.SteerhealError, match="folder lacks config.json and a tokenizer file"):
        sh.load_model(tmp_path / "empty")
    model, _ = tiny("llama")
    model.save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(sh.SteerhealError, match="folder lacks a tokenizer file"):
        sh.load_model(tmp_path / "no-tokenizer")
    (tmp_path / "no-tokenizer" / "tokenizer.json").write_text("{not json")
    with pytest.raises(sh.SteerhealError, match="local folder exists but loading failed"):
        sh.load_model(tmp_path / "no-tokenizer")
    with pytest.raises(sh.SteerhealError, match="not a torch dtype"):
        sh.load_model("anything", dtype="float33")


def test_tiny_model_deterministic_and_validated():
    a, _ = sh.tiny_model("qwen3", seed=7)
    b, _ = sh.tiny_model("qwen3", seed=7)
    c, _ = sh.tiny_model("qwen3", seed=8)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    state = torch.random.get_rng_state()
    sh.tiny_model("llama", seed=1)
    assert torch.equal(state, torch.random.get_rng_state()), "tiny_model must not consume the global RNG"
    with pytest.raises(sh.SteerhealError, match="unknown arch 'bert'"):
        sh.tiny_model("bert")
    with pytest.raises(sh.SteerhealError, match="at least 4 blocks"):
        sh.tiny_model("llama", n_layers=2)


def test_tiny_tokenizer_chat_template_ends_on_assistant_tag():
    _, tok = tiny("llama")
    messages = [{"role": "system", "content": "Be calm."}, {"role": "user", "content": "Tell me a story."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|bos|><|system|>Be calm.<|end|><|user|>Tell me a story.<|end|><|assistant|>"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.convert_ids_to_tokens(ids[-1]) == "<|assistant|>"
    assert tok.decode(tok("The kettle began to hum.").input_ids, skip_special_tokens=True) == (
        "The kettle began to hum."
    )


def test_import_is_lazy_about_heavy_libraries():
    import subprocess
    import sys

    heavy = ("peft", "bitsandbytes", "steering_vectors", "sklearn", "sentence_transformers")
    code = f"import sys, steerheal; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


def _p95_kl_at(model, tok, multiple: float, init_texts: list[str]) -> float:
    """p95 of per-token KL(steered ‖ unsteered) with a mean_diff vector at `multiple` x the residual norm."""
    from steerheal.lm.texts import encode, left_pad
    from steerheal.read.capture import residual_norm
    from steerheal.read.vector import default_layers

    pos = [f"What a lovely {w}, I am so happy here." for w in ("garden", "kitchen", "harbour", "office")]
    neg = [f"What a dreadful {w}, I am so unhappy here." for w in ("garden", "kitchen", "harbour", "office")]
    layers = default_layers(model)
    v = sh.Vector.train(model, tok, pos, neg, layers=layers)
    norm = residual_norm(model, tok, init_texts, layers)
    batch = left_pad(encode(tok, init_texts, 512), tok.pad_token_id)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    with torch.no_grad():
        base = model(**kwargs).logits.float().log_softmax(-1)
        with v(model, C=multiple * norm):
            steered = model(**kwargs).logits.float().log_softmax(-1)
    kl = (steered.exp() * (steered - base)).sum(-1)[batch.attention_mask.bool()]
    return float(torch.quantile(kl, 0.95))


@pytest.mark.parametrize("arch", sh.TINY_ARCHS)
def test_tiny_models_can_be_steered_by_several_nats(arch):
    """The reason for TINY_INIT_RANGE (docs/tiny-models.md): measured >= 4.9 nats at 4x on every arch."""
    texts = ["The kettle began to hum a little before seven.", "At the harbour the boats knocked against the pier."]
    model, tok = tiny(arch)
    assert _p95_kl_at(model, tok, 4.0, texts) >= 3.0
    if arch == "llama":
        flat, flat_tok = sh.tiny_model(arch, init_range=0.02)
        assert _p95_kl_at(flat, flat_tok, 4.0, texts) < 0.1, "at transformers' default range nothing moves"


@pytest.mark.parametrize("arch", sh.TINY_ARCHS)
def test_broadcast_mask_attention_equals_transformers_sdpa(arch):
    """steerheal_sdpa (attention.py) builds the same masks as transformers' vmap builder: same logits."""
    from steerheal.lm.texts import encode, left_pad

    model, tok = sh.tiny_model(arch, seed=4)
    assert model.config._attn_implementation == "steerheal_sdpa"
    batch = left_pad(
        encode(tok, ["Rain.", "The harbour at noon, with gulls following the ferry."], 512), tok.pad_token_id
    )
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    with torch.no_grad():
        ours = model(**kwargs).logits
        model.set_attn_implementation("sdpa")
        theirs = model(**kwargs).logits
    mask = batch.attention_mask.bool()
    torch.testing.assert_close(ours[mask], theirs[mask], rtol=1e-5, atol=1e-5)
    model.set_attn_implementation("steerheal_sdpa")
    with torch.no_grad():  # no attention mask, position ids given: transformers' packed-sequence path
        single = batch.input_ids[1:]
        ours = model(input_ids=single, position_ids=torch.arange(single.shape[1])[None]).logits
        model.set_attn_implementation("sdpa")
        theirs = model(input_ids=single, position_ids=torch.arange(single.shape[1])[None]).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_without_grad_is_bit_for_bit_repeat_kv():
    """attention.py: without gradients a grouped-query model runs SDPA with enable_gqa instead of transformers'
    repeat_kv; exactly the same logits (prefill of a left-padded batch and a cached decoding step) as the
    repeat_kv path, which still runs with gradients."""
    from steerheal.lm.texts import encode, left_pad

    grouped = 0
    for arch in sh.TINY_ARCHS:
        model, tok = tiny(arch)
        config = model.config.get_text_config()
        if getattr(config, "num_key_value_heads", None) in (None, config.num_attention_heads):
            continue
        grouped += 1
        batch = left_pad(
            encode(tok, ["Rain.", "The harbour at noon, with gulls over the ferry."], 512), tok.pad_token_id
        )
        kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        step = dict(input_ids=batch.input_ids[:, -1:], position_ids=batch.position_ids[:, -1:] + 1)
        step["attention_mask"] = torch.cat([batch.attention_mask, torch.ones_like(batch.attention_mask[:, :1])], 1)
        outputs = []
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                first = model(**kwargs, use_cache=True)
                second = model(**step, past_key_values=first.past_key_values, use_cache=True)
            outputs.append((first.logits.detach(), second.logits.detach()))
        assert torch.equal(outputs[0][0], outputs[1][0]), arch
        assert torch.equal(outputs[0][1], outputs[1][1]), arch
    assert grouped >= 2, "the tiny architectures should include grouped-query models"


def test_mlp_write_directions_every_arch_and_4bit(tmp_path):
    """One row per MLP neuron: what it writes into the residual stream (the quality report's neuron check)."""
    from steerheal.lm.blocks import MLP_OUT_PATHS, mlp_write_directions

    for arch in sh.TINY_ARCHS:
        model, _ = tiny(arch)
        assert model.config.model_type in MLP_OUT_PATHS
        rows = mlp_write_directions(model, 2)
        block = sh.decoder_layers(model)[2]
        if arch == "gpt2":  # Conv1D stores [neurons, hidden]
            torch.testing.assert_close(rows, block.mlp.c_proj.weight, rtol=0, atol=0)
        else:
            out = block.mlp.dense_4h_to_h if arch == "gpt_neox" else block.mlp.down_proj
            torch.testing.assert_close(rows, out.weight.T, rtol=0, atol=0)
        assert rows.shape[1] == 64 and rows.dtype == torch.float32
    model, tok = tiny("qwen3")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    quantised, _ = sh.load_model(tmp_path, quant="4bit")
    four = mlp_write_directions(quantised, 1)
    full = mlp_write_directions(model, 1)
    # nf4 keeps each row's direction to within a few percent (measured min cosine 0.994)
    assert torch.nn.functional.cosine_similarity(four, full, dim=1).min() > 0.97
    eight = mlp_write_directions(sh.load_model(tmp_path, quant="8bit")[0], 1)
    # int8 with one scale per output row: measured min cosine 1.0000
    assert torch.nn.functional.cosine_similarity(eight, full, dim=1).min() > 0.999
