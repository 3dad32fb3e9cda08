"""Readout: one capture pass for every concept, methods, files, the per-token monitor, the quality report.

toyworld's corpus folder is the ground truth here: its four moods are known, so a readout must separate
them on held-out texts; tiny random models cover the file and validation paths.
"""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import steerheal as sh
from conftest import tiny
from steerheal.read.corpus_activations import CorpusActivations, read_corpus
from steerheal.toyworld import world
from steerheal.toyworld.load import chat_prompts


@cache
def _toyworld():
    model, tok = sh.toyworld.load()
    return model, tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return sh.Corpus.load(world.write_corpus(tmp_path_factory.mktemp("toyworld_corpus")))


@pytest.fixture(scope="module")
def toy_acts(corpus):
    """One capture pass (every token, layers 1-2) shared by the tests that fit several methods."""
    model, tok = _toyworld()
    return read_corpus(model, tok, corpus, [1, 2], "all")


def _count_forwarded_rows(model):
    rows: list[int] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, o: rows.append(o.shape[0]))
    return rows, handle


def test_one_capture_pass_serves_every_concept_and_equals_vector_train(corpus):
    model, tok = _toyworld()
    rows, handle = _count_forwarded_rows(model)
    try:
        ro = sh.Readout.train(model, tok, corpus)
    finally:
        handle.remove()
    assert sum(rows) == len(corpus.texts) == 100, "each unique text forwarded once for all four concepts"
    assert ro.concepts == ["anger", "calm", "fear", "joy"] and ro.layers == [1, 2]
    assert ro.method == "mean_diff" and ro.position == "mean" and ro.fingerprint == sh.fingerprint(model)
    for concept in ("joy", "fear"):
        v = ro[concept]
        assert isinstance(v, sh.Vector) and v.position == "mean"
        alone = sh.Vector.train(model, tok, corpus.positives(concept), corpus.negatives(concept), position="mean")
        for layer in ro.layers:
            # same texts, batched differently: fp32 rounding only (activation scale ~30, one ulp ~4e-6)
            assert float(v.directions[layer] @ alone.directions[layer]) > 1 - 1e-6
            assert v.norms[layer] == pytest.approx(alone.norms[layer], rel=1e-4)
    for layer in ro.layers:
        assert torch.allclose(ro.vectors[layer].norm(dim=1), torch.ones(4), atol=1e-5)
    scores = ro.score(model, tok, corpus.positives("joy")[:5] + corpus.positives("anger")[:5])
    assert scores.shape == (10, 2, 4)
    joy = ro.concepts.index("joy")
    assert (scores[:5, :, joy].min(0).values > scores[5:, :, joy].max(0).values).all()


@pytest.mark.parametrize("method", ["mean_diff", "pca", "logistic", "logistic_l1", "subspace"])
def test_every_method_reads_the_toyworld_moods_on_held_out_texts(corpus, toy_acts, method):
    from steerheal.read.quality import heldout_scores

    acts = toy_acts if method == "subspace" else CorpusActivations(toy_acts.texts, "mean", toy_acts.pooled)
    if method.startswith("logistic"):  # cross-validated fits on separable data are slow: two moods suffice
        corpus = corpus.subset(["fear", "joy"])
    ro = sh.Readout.fit(acts, corpus, method)
    assert ro.position == ("all" if method == "subspace" else "mean")
    assert (ro.spectra is not None) == (method == "subspace")
    for layer in ro.layers:
        assert torch.allclose(ro.vectors[layer].norm(dim=1), torch.ones(len(ro)), atol=1e-5)
        assert (ro.norms[layer] > 0).all()
    held = heldout_scores(ro, acts, corpus, 0.3, seed=0)
    # measured: every method reaches AUROC 1.0 and top-1 1.0 on every mood at layers 1 and 2
    for layer, per_concept in held.items():
        for concept, (auc, top1) in per_concept.items():
            assert auc >= 0.95 and top1 >= 0.8, (method, layer, concept, auc, top1)


def test_pca_on_a_corpus_pairs_round_robin_and_uses_every_text(corpus, toy_acts):
    from steerheal.read.aggregate import direction
    from steerheal.read.readout import _round_robin

    pos, neg = torch.arange(3.0)[:, None], torch.arange(10.0, 17.0)[:, None]
    paired_pos, paired_neg = _round_robin(pos, neg)
    assert paired_pos.squeeze(-1).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert paired_neg.squeeze(-1).tolist() == list(range(10, 17))
    acts = CorpusActivations(toy_acts.texts, "mean", toy_acts.pooled)
    ro = sh.Readout.fit(acts, corpus, "pca")
    x, labels = acts.pooled[1], corpus.labels
    want, _ = direction("pca", *_round_robin(x[labels[:, 0]], x[~labels[:, 0]]))
    assert abs(float(ro.vectors[1][0] @ want)) > 1 - 1e-6
    separation = float(x[labels[:, 0]].mean(0) @ ro.vectors[1][0] - x[~labels[:, 0]].mean(0) @ ro.vectors[1][0])
    assert ro.norms[1][0] == pytest.approx(separation, rel=1e-5)  # over the sets, not the repeated pairs


def test_quality_report_table_json_and_triage(corpus, toy_acts, tmp_path, capsys):
    model, tok = _toyworld()
    ro = sh.Readout.fit(toy_acts, corpus, "subspace", sh.fingerprint(model))
    report = ro.quality(model, tok, corpus, path=tmp_path / "quality.json")
    table = report.table
    assert table.height == 8 and set(table["concept"]) == set(ro.concepts) and set(table["layer"]) == {1, 2}
    for column in ("pc1_ratio", "align_mean", "ridge_r2", "heldout_auroc", "heldout_top1", "mlp_cos"):
        assert table[column].is_between(-1, 1).all(), column
    assert (table["heldout_auroc"] >= 0.95).all() and (table["pc1_ratio"] > 0.7).all()
    assert (table["pc1_null"] < table["pc1_ratio"] - 0.3).all(), "mood texts share a direction, random ones less"
    row = table.filter((table["concept"] == "joy") & (table["layer"] == 2)).to_dicts()[0]
    assert len(row["outliers"]) == 2 and row["outliers"][0].split(" ", 1)[1].startswith(("stories/", "paired/"))
    assert len(row["nearest"]) == 3 and not any(n.startswith("joy ") for n in row["nearest"])
    assert len(row["spectrum"]) == 8 and row["spectrum"][0] >= row["spectrum"][-1]
    assert row["spectrum"] == pytest.approx(ro.spectra[2][ro.concepts.index("joy")].tolist())
    assert row["verdict"] in {"clean", "mixed"} or "one-neuron" in row["verdict"]
    saved = json.loads((tmp_path / "quality.json").read_text())
    assert saved["summary"]["top1_chance"] == 0.25 and len(saved["concepts"]) == 8 and "git_commit" in saved
    printed = capsys.readouterr().out
    assert "readout quality: 4 concepts, method subspace" in printed and "layer 2:" in printed
    # the ridge figure: a concept that is a combination of others is redundant, independent ones are not
    from steerheal.read.quality import _ridge

    rows = ro.vectors[2]
    mixed = torch.nn.functional.normalize(rows[0] + rows[1], dim=0)
    assert _ridge(mixed, rows)[0] > 0.99 and _ridge(rows[3], rows[:3])[0] == pytest.approx(
        float(table.filter((table["concept"] == "joy") & (table["layer"] == 2))["ridge_r2"][0]), abs=1e-6
    )


def test_quality_refuses_a_corpus_with_other_concepts(corpus):
    model, tok = _toyworld()
    ro = sh.Readout.train(model, tok, corpus.subset(["joy", "fear"]), layers=[1])
    with pytest.raises(sh.SteerhealError, match="differ from the readout's"):
        ro.quality(model, tok, corpus)
    with pytest.raises(sh.SteerhealError, match="strictly between 0 and 1"):
        ro.quality(model, tok, corpus.subset(["joy", "fear"]), heldout=0)


# ---------------------------------------------------------------------- files
def _tiny_readout(arch="llama", method="mean_diff"):
    model, tok = tiny(arch)
    corpus = sh.Corpus.load(world.write_corpus(_tiny_corpus_dir(), n_stories=4, n_scenarios=2))
    return model, tok, corpus, sh.Readout.train(model, tok, corpus, layers=[0, 2], method=method)


@cache
def _tiny_corpus_dir():
    import tempfile

    return tempfile.mkdtemp(prefix="steerheal-corpus-")


def test_files_round_trip_and_format(tmp_path):
    model, _, _, ro = _tiny_readout("qwen3", "subspace")
    ro.save(tmp_path / "ro")
    meta = json.loads((tmp_path / "ro" / "readout.json").read_text())
    assert meta["concepts"] == ["anger", "calm", "fear", "joy"] and meta["layers"] == [0, 2]
    assert meta["hidden_size"] == 64 and meta["dtype"] == "float32" and meta["format_version"] == 1
    assert meta["kind"] == "steerheal.readout"  # the file format's name, fixed since wave 1
    assert meta["method"] == "subspace" and meta["position"] == "all" and meta["fingerprint"]["hidden_size"] == 64
    assert "git_commit" in meta and "steerheal_version" in meta
    with safe_open(str(tmp_path / "ro" / "readout.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("layer_2.vectors").shape == (4, 64) and f.get_tensor("layer_2.norms").shape == (4,)
    assert keys == {f"layer_{i}.{p}" for i in (0, 2) for p in ("vectors", "norms", "spectrum")}
    back = sh.Readout.load(tmp_path / "ro", model=model)
    assert back.concepts == ro.concepts and back.method == ro.method and back.position == ro.position
    for layer in ro.layers:
        assert torch.equal(back.vectors[layer], ro.vectors[layer]) and torch.equal(back.norms[layer], ro.norms[layer])
        assert torch.equal(back.spectra[layer], ro.spectra[layer])
    assert back.fingerprint == ro.fingerprint and back.meta == ro.meta
    # bfloat16 storage for a serving side that wants it: rows unit to bf16 precision
    ro.save(tmp_path / "bf16", dtype="bfloat16")
    assert load_file(tmp_path / "bf16" / "readout.safetensors")["layer_0.vectors"].dtype == torch.bfloat16
    half = sh.Readout.load(tmp_path / "bf16")
    assert (half.vectors[0] - ro.vectors[0]).abs().max() < 1e-2


def test_load_validates_the_two_files_and_the_model(tmp_path, logs):
    _, _, _, ro = _tiny_readout()
    folder = ro.save(tmp_path / "ro")
    meta_path, tensor_path = folder / "readout.json", folder / "readout.safetensors"
    meta, tensors = json.loads(meta_path.read_text()), load_file(tensor_path)

    def broken(meta_change=None, tensor_change=None):
        target = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        target.mkdir()
        m, t = json.loads(json.dumps(meta)), dict(tensors)
        (meta_change or (lambda m: None))(m)
        (tensor_change or (lambda t: None))(t)
        (target / "readout.json").write_text(json.dumps(m))
        save_file(t, str(target / "readout.safetensors"))
        return target

    cases = [
        (broken(lambda m: m.update(format_version=9)), "format_version 9"),
        (broken(lambda m: m.update(concepts=["anger", "calm", "fear"])), r"has shape \(4,.*lists 3 concepts"),
        (broken(lambda m: m.update(layers=[0, 1])), "do not belong together"),
        (broken(lambda m: m.update(dtype="float16")), "stored as torch.float32 but readout.json says float16"),
        (broken(lambda m: m.update(hidden_size=32)), "hidden size 32"),
        (broken(lambda m: m.pop("concepts")), "readout.json lacks 'concepts'"),
        (broken(tensor_change=lambda t: t.update({"layer_0.vectors": 2 * t["layer_0.vectors"]})), "not unit"),
        (broken(tensor_change=lambda t: t.pop("layer_2.norms")), "do not belong together"),
        (broken(lambda m: m.update(concepts=["anger", "calm", "fear", "anger"])), "unique plain identifiers"),
    ]
    for folder_, match in cases:
        with pytest.raises(sh.SteerhealError, match=match):
            sh.Readout.load(folder_)
    nan = broken(tensor_change=lambda t: t.update({"layer_0.norms": torch.full((4,), float("nan"))}))
    with pytest.raises(sh.SteerhealError, match="NaN or inf"):
        sh.Readout.load(nan)
    with pytest.raises(sh.SteerhealError, match="no such folder"):
        sh.Readout.load(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "readout.json").write_text(meta_path.read_text())
    with pytest.raises(sh.SteerhealError, match="readout.safetensors is missing"):
        sh.Readout.load(tmp_path / "half")
    (tmp_path / "half" / "readout.safetensors").write_bytes(tensor_path.read_bytes()[:100])
    with pytest.raises(sh.SteerhealError, match="corrupted or truncated"):
        sh.Readout.load(tmp_path / "half")
    wide, _ = sh.tiny_model("llama", hidden_size=96)
    with pytest.raises(sh.SteerhealError, match="hidden size 64 but the model has 96"):
        sh.Readout.load(folder, model=wide)
    other, _ = tiny("qwen2")
    sh.Readout.load(folder, model=other)
    assert any("trained on another model" in m and "architecture" in m for m in logs)


def test_readout_bad_input(corpus, tmp_path):
    model, tok = tiny("llama")
    with pytest.raises(sh.SteerhealError, match="method='cluster'"):
        sh.Readout.train(model, tok, corpus, method="cluster")
    with pytest.raises(sh.SteerhealError, match="subspace.*position='all'"):
        sh.Readout.train(model, tok, corpus, method="subspace", position="mean")
    with pytest.raises(sh.SteerhealError, match="position='all'"):
        sh.Readout.train(model, tok, corpus, position="all")
    with pytest.raises(sh.SteerhealError, match="layer 4 is out of range"):
        sh.Readout.train(model, tok, corpus, layers=[4])
    with pytest.raises((sh.SteerhealError, TypeError), match="Corpus"):  # beartype answers first under BEARTYPE=1
        sh.Readout.train(model, tok, ["a", "b"])
    small = sh.Corpus.load(world.write_corpus(tmp_path, n_stories=1, n_scenarios=1), min_positives=2)
    with pytest.raises(sh.SteerhealError, match="concept 'anger' has 2 positives"):
        sh.Readout.train(model, tok, small, method="logistic")
    _, _, _, ro = _tiny_readout()
    with pytest.raises(sh.SteerhealError, match="concept 'hope' is not in this readout"):
        ro["hope"]
    assert "joy" in ro and len(ro) == 4


# ---------------------------------------------------------------------- monitor
def _generate_monitored(ro, model, tok, prompts, new_tokens=8):
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with ro.monitor(model) as trace:
        out = model.generate(
            **enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return enc, out, trace


def _uncached_scores(ro, model, sequences, mask):
    """Reference: one plain forward over the whole sequences, hidden states dotted with the rows."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hs = model(input_ids=sequences, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    return torch.stack([hs.hidden_states[layer + 1] @ ro.vectors[layer].T for layer in ro.layers], dim=2)


def test_monitor_scores_every_position_under_cached_generate(corpus):
    model, tok = _toyworld()
    ro = sh.Readout.train(model, tok, corpus)
    users = ["tell me about the garden .", "describe the office .", "what happened at the station ?"]
    prompts = chat_prompts(tok, users)
    prompts[1] = chat_prompts(tok, users[1:2], system="you are joyful .")[0]  # longer: the others get left pads
    enc, out, trace = _generate_monitored(ro, model, tok, prompts)
    width = enc.input_ids.shape[1]
    assert out.shape == (3, width + 8)
    assert trace.scores.shape == (3, width + 8 - 1, 2, 4), "the last sampled token is never forwarded"
    mask = torch.cat([enc.attention_mask, torch.ones(3, 7, dtype=torch.long)], dim=1)
    assert torch.equal(trace.mask, mask.bool()) and not trace.mask[0, 0] and trace.mask[1].all()
    assert torch.equal(trace.tokens, out[:, :-1])
    assert trace.steps[0].tolist() == [0] * width + list(range(1, 8))
    want = _uncached_scores(ro, model, out[:, :-1], mask)
    real = mask.bool()
    # cached vs one uncached forward: fp32 rounding, scores ~30, tolerance 1e-4 of that scale
    assert (trace.scores[real] - want[real]).abs().max() < 1e-4 * want.abs().max()
    table = trace.table(tok)
    assert table.columns == ["sequence", "position", "step", "token", "text", "layer", "concept", "score"]
    assert table.height == int(mask.sum()) * 2 * 4
    first = table.filter((table["sequence"] == 0) & (table["position"] == 0))
    assert first["text"].unique().to_list() == ["<s>"] and first["step"].unique().to_list() == [0]
    row = table.filter(
        (table["sequence"] == 2) & (table["position"] == 3) & (table["layer"] == 2) & (table["concept"] == "joy")
    )
    column = int(real[2].nonzero()[3])
    assert row["score"][0] == pytest.approx(float(trace.scores[2, column, 1, 3]))
    assert all(len(b._forward_hooks) == 0 for b in sh.decoder_layers(model))
    assert len(model._forward_pre_hooks) == 0


def test_monitor_leaves_generation_unchanged_and_follows_steerheal_sample(corpus):
    model, tok = _toyworld()
    ro = sh.Readout.train(model, tok, corpus, layers=[2])
    prompts = chat_prompts(tok, ["describe the kettle .", "tell me about the pier ."])
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    plain = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    _, monitored, _ = _generate_monitored(ro, model, tok, prompts, new_tokens=6)
    assert torch.equal(plain, monitored)
    with ro.monitor(model) as trace:
        ids = sh.sample(model, tok, prompts, seed=0, max_new_tokens=5, batch_size=2)
        sh.sample(model, tok, prompts[:1], seed=1, max_new_tokens=3)  # a second segment
    assert trace.scores.shape[0] == 3, "two segments, their sequences one after the other"
    # sample batches prompts longest first and forwards a row that has stopped (masked out) until every row is
    # done; the last sampled token is not forwarded: prompt + completion - 1 real positions per row
    lengths = enc.attention_mask.sum(1).tolist()
    order = sorted(range(2), key=lambda i: -lengths[i])
    assert trace.mask[:2].sum(1).tolist() == [lengths[i] + len(ids[i]) - 1 for i in order]
    assert trace.mask[2].sum() < trace.mask[0].sum() and torch.isnan(trace.scores[2, ~trace.mask[2]]).all()


def test_monitor_sees_the_mood_a_persona_prompt_writes(corpus):
    """Ground truth: under "you are joyful ." the model writes joy words, under "you are afraid ." fear words,
    and the monitor's joy and fear scores on the generated tokens say so (no steering involved)."""
    model, tok = _toyworld()
    ro = sh.Readout.train(model, tok, corpus, layers=[2])
    users = world.neutral_prompts(8, seed=3)
    scores = {}
    for persona in ("joy", "fear"):
        prompts = chat_prompts(tok, users, system=world.PERSONAS[persona])
        _, out, trace = _generate_monitored(ro, model, tok, prompts, new_tokens=12)
        generated = trace.steps > 0
        scores[persona] = {c: float(trace.scores[:, :, 0, ro.concepts.index(c)][generated].mean()) for c in ro.concepts}
        texts = tok.batch_decode(out[:, -12:], skip_special_tokens=True)
        assert sh.toyworld.metrics.mood_rates(texts)[persona] > 0.3, texts
    assert scores["joy"]["joy"] > scores["fear"]["joy"] and scores["fear"]["fear"] > scores["joy"]["fear"]
