"""Vector: training, steering (also under cached generate), projection, files, interop, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import steerheal as sh
from conftest import tiny
from steerheal.read.steering import steering_active
from steerheal.read.vector import default_layers

SETTINGS = ["garden", "kitchen", "harbour", "office", "library", "station"]
POS = [f"What a lovely {w}, I am so happy here." for w in SETTINGS]
NEG = [f"What a dreadful {w}, I am so unhappy here." for w in SETTINGS]
PROMPT = "The boats at the harbour"


def _vector(arch: str = "llama", **kw) -> tuple:
    model, tok = tiny(arch)
    return model, tok, sh.Vector.train(model, tok, POS, NEG, **kw)


def _logits(model, tok, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tok(text).input_ids])).logits


def _manual_shift(model, shifts: dict[int, torch.Tensor]) -> list:
    """Independent of steerheal: plain forward hooks that add a shift to block outputs."""
    handles = []
    for layer, shift in shifts.items():

        def hook(module, args, out, shift=shift):
            if isinstance(out, tuple):
                return (out[0] + shift, *out[1:])
            return out + shift

        handles.append(sh.decoder_layers(model)[layer].register_forward_hook(hook))
    return handles


def test_default_layers_are_the_middle_third():
    model, _ = tiny("llama")
    assert default_layers(model) == [1, 2]
    big, _ = sh.tiny_model("qwen2", n_layers=12, hidden_size=32)
    assert default_layers(big) == [4, 5, 6, 7]


@pytest.mark.parametrize("method", ["mean_diff", "pca", "logistic", "logistic_l1"])
def test_train_every_method_gives_unit_directions_and_positive_norms(method):
    model, tok, v = _vector("qwen3", method=method, layers=[0, 2, 3])
    assert v.layers == [0, 2, 3] and v.method == method and v.position == "last" and v.coeff is None
    for layer in v.layers:
        assert abs(float(v.directions[layer].norm()) - 1) < 1e-5 and v.norms[layer] > 0
    assert v.fingerprint == sh.fingerprint(model) and v.meta == {"n_pos": 6, "n_neg": 6}
    scores = v.project(model, tok, POS + NEG)
    assert scores.shape == (12, 3)
    assert (scores[:6].mean(0) > scores[6:].mean(0)).all(), "positives score higher than negatives"


def test_parity_with_steering_vectors_mean_aggregator():
    from steering_vectors import train_steering_vector

    model, tok, v = _vector("llama", method="mean_diff", position="last")
    sv = train_steering_vector(model, tok, list(zip(POS, NEG, strict=True)), layers=v.layers, read_token_index=-1)
    for layer in v.layers:
        theirs = sv.layer_activations[layer]
        cosine = torch.nn.functional.cosine_similarity(theirs, v.directions[layer], dim=0)
        assert cosine >= 0.9999
    round_trip = v.to_steering_vectors()
    assert round_trip.layer_type == "decoder_block"
    for layer in v.layers:
        torch.testing.assert_close(
            round_trip.layer_activations[layer], sv.layer_activations[layer], rtol=1e-4, atol=1e-4
        )
    back = sh.Vector.from_steering_vectors(sv)
    for layer in v.layers:
        torch.testing.assert_close(back.directions[layer], v.directions[layer], rtol=1e-4, atol=1e-5)
        assert back.norms[layer] == pytest.approx(v.norms[layer], rel=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "gpt2"])
def test_steering_under_cached_generate_matches_a_manual_shifted_forward(arch):
    model, tok, v = _vector(arch)
    C = 2.0 * max(v.norms.values())
    prompt = torch.tensor([tok(PROMPT).input_ids])
    kwargs = dict(
        max_new_tokens=6,
        do_sample=False,
        use_cache=True,
        output_hidden_states=True,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
    )
    with torch.no_grad(), v(model, C=C):
        steered = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    with torch.no_grad():
        plain = model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    generated = steered.sequences[0, prompt.shape[1] :]
    # step k >= 1 of a cached generate forwards only generated token k (1-based): step 5 carries token 5
    cached_hidden = steered.hidden_states[5][3][0, -1]  # hidden_states[3] = output of block 2
    cached_logits = steered.logits[5][0]
    full = torch.cat([prompt[0], generated[:5]])[None]
    handles = _manual_shift(model, {layer: C * d for layer, d in v.directions.items()})
    try:
        with torch.no_grad():
            manual = model(full, use_cache=False, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    scale = manual.hidden_states[3].abs().max().item()
    torch.testing.assert_close(cached_hidden, manual.hidden_states[3][0, -1], rtol=1e-5, atol=1e-5 * scale)
    torch.testing.assert_close(cached_logits, manual.logits[0, -1], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(steered.logits[5][0], plain.logits[5][0], atol=1e-2), "steering had no effect"


def test_model_is_restored_exactly_on_exit_and_on_exceptions():
    model, tok, v = _vector("gemma3")
    before = _logits(model, tok)
    blocks = sh.decoder_layers(model)
    hooks_before = [len(b._forward_hooks) for b in blocks]
    with v(model, C=50.0):
        assert steering_active(model)
        assert not torch.equal(_logits(model, tok), before)
    assert torch.equal(_logits(model, tok), before)
    with pytest.raises(RuntimeError, match="inside"), v(model, C=50.0):
        raise RuntimeError("inside")
    assert torch.equal(_logits(model, tok), before)
    assert [len(b._forward_hooks) for b in blocks] == hooks_before
    assert not steering_active(model)


def test_alpha_zero_is_bit_identical_and_negative_alpha_reverses():
    model, tok, v = _vector("qwen2")
    v.coeff = 3.0 * max(v.norms.values())
    base = _logits(model, tok)
    with v.steer(model, alpha=0.0):
        assert torch.equal(_logits(model, tok), base)
    texts = ["The kettle began to hum.", "The office had seven desks."]
    unsteered = v.project(model, tok, texts)
    with v.steer(model, alpha=1.0):
        up = v.project(model, tok, texts)
    with v.steer(model, alpha=-1.0):
        down = v.project(model, tok, texts)
    assert (up > unsteered).all() and (down < unsteered).all()
    # at the first steered layer the projection moves by exactly C (nothing upstream changed)
    first = 0
    torch.testing.assert_close(up[:, first] - unsteered[:, first], torch.full((2,), v.coeff), rtol=1e-4, atol=1e-3)


def test_steer_dose_rules():
    model, tok, v = _vector("llama")
    with pytest.raises(sh.SteerhealError, match="no dose"), v.steer(model):
        pass
    base = _logits(model, tok)
    with v.steer(model, alpha=2.0, coeff=5.0):
        a = _logits(model, tok)
    with v(model, C=10.0):
        b = _logits(model, tok)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, base)
    with pytest.raises(sh.SteerhealError, match="not finite"), v(model, C=float("nan")):
        pass


def test_steer_and_project_refuse_a_model_of_another_shape():
    _, _, v = _vector("llama")
    other, other_tok = sh.tiny_model("llama", hidden_size=96)
    with pytest.raises(sh.SteerhealError, match="hidden size 64 but the model has 96"), v(other, C=1.0):
        pass
    with pytest.raises(sh.SteerhealError, match="hidden size 64 but the model has 96"):
        v.project(other, other_tok, ["x"])


def test_save_load_round_trip(tmp_path):
    model, tok, v = _vector("qwen3", method="pca", position="mean")
    v.coeff = 4.5
    v.calibration = {"history": [[1.0, 0.2], [4.5, 1.0]], "n_evals": 2}
    v.save(tmp_path / "v")
    meta = json.loads((tmp_path / "v" / "vector.json").read_text())
    assert meta["format_version"] == 1 and meta["layers"] == [1, 2] and meta["method"] == "pca"
    assert meta["kind"] == "steerheal.vector"  # the file format's name, fixed since wave 1
    from safetensors import safe_open

    with safe_open(tmp_path / "v" / "vector.safetensors", "pt") as handle:
        assert handle.metadata()["format"] == "steerheal.vector"
    assert meta["fingerprint"]["architecture"] == "Qwen3ForCausalLM" and meta["steerheal_version"] == sh.__version__
    w = sh.Vector.load(tmp_path / "v", model=model)
    assert (w.layers, w.method, w.position, w.coeff, w.calibration) == (
        v.layers,
        "pca",
        "mean",
        4.5,
        v.calibration,
    )
    assert w.fingerprint == v.fingerprint and w.norms == v.norms and w.meta == v.meta
    for layer in v.layers:
        assert torch.equal(w.directions[layer], v.directions[layer])
    with v.steer(model):
        a = _logits(model, tok)
    with w.steer(model):
        assert torch.equal(_logits(model, tok), a)
    assert not list(tmp_path.joinpath("v").glob("*.tmp")), "no temporary files left behind"


def test_load_warns_on_another_model_identity(tmp_path, logs):
    _, _, v = _vector("llama")
    v.save(tmp_path / "v")
    other, _ = sh.tiny_model("mistral")  # same shapes, another model
    sh.Vector.load(tmp_path / "v", model=other)
    assert any("trained on another model" in m and "architecture" in m for m in logs)


def test_load_bad_files(tmp_path):
    _, _, v = _vector("llama")
    good = tmp_path / "good"
    v.save(good)

    def copy(name: str):
        target = tmp_path / name
        target.mkdir()
        for f in good.iterdir():
            (target / f.name).write_bytes(f.read_bytes())
        return target

    with pytest.raises(sh.SteerhealError, match="no such folder"):
        sh.Vector.load(tmp_path / "nowhere")
    missing = copy("missing")
    (missing / "vector.safetensors").unlink()
    with pytest.raises(sh.SteerhealError, match="vector.safetensors is missing"):
        sh.Vector.load(missing)
    no_json = copy("no_json")
    (no_json / "vector.json").unlink()
    with pytest.raises(sh.SteerhealError, match="vector.json does not exist"):
        sh.Vector.load(no_json)
    truncated = copy("truncated")
    data = (truncated / "vector.safetensors").read_bytes()
    (truncated / "vector.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(sh.SteerhealError, match="corrupted or truncated"):
        sh.Vector.load(truncated)
    garbage = copy("garbage")
    (garbage / "vector.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(sh.SteerhealError, match="corrupted or truncated"):
        sh.Vector.load(garbage)
    broken_json = copy("broken_json")
    (broken_json / "vector.json").write_text("{")
    with pytest.raises(sh.SteerhealError, match="not valid JSON"):
        sh.Vector.load(broken_json)
    future = copy("future")
    meta = json.loads((future / "vector.json").read_text())
    meta["format_version"] = 99
    (future / "vector.json").write_text(json.dumps(meta))
    with pytest.raises(sh.SteerhealError, match="format_version 99"):
        sh.Vector.load(future)
    nan = copy("nan")
    tensors = {f"layer_{layer}": d.clone() for layer, d in v.directions.items()}
    tensors["layer_1"][0] = float("nan")
    tensors["norms"] = torch.tensor(list(v.norms.values()))
    save_file(tensors, nan / "vector.safetensors")
    with pytest.raises(sh.SteerhealError, match="'layer_1' contains NaN or inf"):
        sh.Vector.load(nan)
    mismatch = copy("mismatch")
    meta = json.loads((mismatch / "vector.json").read_text())
    meta["layers"] = [1, 2, 3]
    (mismatch / "vector.json").write_text(json.dumps(meta))
    with pytest.raises(sh.SteerhealError, match="do not belong together"):
        sh.Vector.load(mismatch)
    wide, _ = sh.tiny_model("llama", hidden_size=96)
    with pytest.raises(sh.SteerhealError, match="hidden size 64 but the model has 96"):
        sh.Vector.load(good, model=wide)


def test_load_refuses_layers_the_model_lacks(tmp_path):
    deep, deep_tok = sh.tiny_model("llama", n_layers=8)
    v = sh.Vector.train(deep, deep_tok, POS, NEG, layers=[5, 6])
    v.save(tmp_path / "v")
    shallow, _ = tiny("llama")
    with pytest.raises(sh.SteerhealError, match="layer 5 is out of range for a model with 4 decoder blocks"):
        sh.Vector.load(tmp_path / "v", model=shallow)


def test_train_bad_input():
    model, tok = tiny("llama")
    with pytest.raises(sh.SteerhealError, match="got 0 pos, 6 neg"):
        sh.Vector.train(model, tok, [], NEG)
    with pytest.raises(sh.SteerhealError, match="got 6 pos, 0 neg"):
        sh.Vector.train(model, tok, POS, [])
    with pytest.raises(sh.SteerhealError, match=r"same length \(got 6 and 5\)"):
        sh.Vector.train(model, tok, POS, NEG[:5], method="pca")
    with pytest.raises(sh.SteerhealError, match="layer 9 is out of range"):
        sh.Vector.train(model, tok, POS, NEG, layers=[1, 9])
    with pytest.raises(sh.SteerhealError, match=r"pos\+neg\[7\] is empty"):
        sh.Vector.train(model, tok, POS, [NEG[0], ""])
    with pytest.raises(sh.SteerhealError, match="longer than the model's context"):
        sh.Vector.train(model, tok, POS, ["long " * 600, *NEG[1:]])
    with pytest.raises(sh.SteerhealError, match="position='all'"):
        sh.Vector.train(model, tok, POS, NEG, position="all")
    _, no_pad = sh.tiny_model("llama")
    no_pad.pad_token = None
    with pytest.raises(sh.SteerhealError, match="no pad token"):
        sh.Vector.train(model, no_pad, POS, NEG)


def test_vector_constructor_validates():
    unit = torch.nn.functional.normalize(torch.ones(8), dim=0)
    with pytest.raises(sh.SteerhealError, match="at least one layer"):
        sh.Vector({}, {}, "mean_diff", "last")
    with pytest.raises(sh.SteerhealError, match="expected unit"):
        sh.Vector({0: 2 * unit}, {0: 1.0}, "mean_diff", "last")
    with pytest.raises(sh.SteerhealError, match="norms at"):
        sh.Vector({0: unit}, {1: 1.0}, "mean_diff", "last")
    with pytest.raises(sh.SteerhealError, match="one hidden size"):
        sh.Vector({0: unit, 1: torch.nn.functional.normalize(torch.ones(4), dim=0)}, {0: 1.0, 1: 1.0}, "m", "last")
    with pytest.raises(sh.SteerhealError, match="NaN or inf"):
        sh.Vector({0: unit}, {0: float("inf")}, "mean_diff", "last")
