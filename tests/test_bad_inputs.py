"""Bad input at the public boundary and in hand-edited files (issue 15): every case ends in a SteerhealError
that names the input (the argument, down to the item, or the file), what is wrong and the fix; none is silent,
none is a raw traceback from inside torch. One table per kind of input; the models are the cached tiny ones.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import steerheal as sh
from conftest import tiny
from steerheal.adapter.gated import GatedLoRA
from steerheal.read.aggregate import NOISE_SEPARATION, direction, subspace
from steerheal.read.corpus_activations import CorpusActivations
from steerheal.toyworld import world

SETTINGS = ["garden", "kitchen", "harbour", "office", "library", "station"]
POS = [f"What a lovely {w}, I am so happy here." for w in SETTINGS]
NEG = [f"What a dreadful {w}, I am so unhappy here." for w in SETTINGS]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    """A vector (two layers), a readout (four concepts) and a GatedLoRA, saved by the current code."""
    root = tmp_path_factory.mktemp("saved")
    model, tok = tiny("llama")
    v = sh.Vector.train(model, tok, POS, NEG, layers=[1, 2])
    v.coeff = 2.0
    corpus = sh.Corpus.load(world.write_corpus(root / "corpus", n_stories=4, n_scenarios=2))
    ro = sh.Readout.train(model, tok, corpus, layers=[0, 2])
    adapter = GatedLoRA.attach(copy.deepcopy(model), r=4)
    return {
        "model": model,
        "tok": tok,
        "vector": v,
        "readout": ro,
        "corpus": corpus,
        "vector_dir": v.save(root / "vector"),
        "readout_dir": ro.save(root / "readout"),
        "gated_dir": adapter.save(root / "gated"),
    }


# ---------------------------------------------------------------------- typed arguments
def _argument_cases(s: dict) -> list[tuple[str, object, str]]:
    m, t, v, ro = s["model"], s["tok"], s["vector"], s["readout"]
    return [
        # a bare string where a list of texts is expected trained on its characters before
        ("str for pos", lambda: sh.Vector.train(m, t, "happy", "sad"), r"'pos'.*single str 'happy'.*\['happy'\]"),
        ("None as a text", lambda: sh.Vector.train(m, t, [*POS[:2], None], NEG), r"'pos'.*pos\[2\] is None"),
        ("3-tuple as a text", lambda: sh.Vector.train(m, t, POS, [("a", "b", "c")]), r"neg\[0\] is tuple"),
        ("pair of non-str", lambda: sh.Vector.train(m, t, POS, [("a", 3)]), r"neg\[0\]\[1\] is int 3"),
        ("int for layers", lambda: sh.Vector.train(m, t, POS, NEG, layers=1), r"'layers'.*wrap it in a list: \[1\]"),
        ("str in layers", lambda: sh.Vector.train(m, t, POS, NEG, layers=[1, "2"]), r"layers\[1\] is str '2'"),
        ("str batch_size", lambda: sh.Vector.train(m, t, POS, NEG, batch_size="8"), r"'batch_size' must be int"),
        ("None method", lambda: sh.Vector.train(m, t, POS, NEG, method=None), r"'method' must be str"),
        ("str for tok", lambda: sh.Vector.train(m, "gpt2", POS, NEG), r"'tok' must be PreTrainedTokenizerBase"),
        ("tok for model", lambda: sh.Vector.train(t, t, POS, NEG), r"'model' must be Module"),
        ("misspelt keyword", lambda: sh.Vector.train(m, t, POS, NEG, layer=[1]), r"unexpected keyword.*'layer'"),
        ("str target_kl", lambda: v.calibrate(m, t, POS, target_kl="1.0"), r"'target_kl' must be float"),
        ("str C", lambda: v(m, C="2"), r"Vector.__call__\(\): argument 'C' must be float, but C is str '2'"),
        ("bool C", lambda: v(m, C=True), r"'C' must be float, but C is bool"),
        ("None alpha", lambda: v.steer(m, alpha=None), r"'alpha' must be float"),
        ("str texts to project", lambda: v.project(m, t, "a text"), r"'texts'.*single str"),
        ("int folder", lambda: sh.Vector.load(3), r"'directory' must be str \| Path"),
        ("str norms", lambda: sh.Vector(v.directions, {1: "1", 2: 1.0}, "mean_diff", "last"), r"norms\[1\] is str"),
        ("str texts to capture", lambda: sh.capture(m, t, "abc", [0]), r"capture\(\): argument 'texts'.*single str"),
        ("int layers to capture", lambda: sh.capture(m, t, POS, 0), r"'layers'.*\[0\]"),
        ("str layers to tokens", lambda: sh.capture_tokens(m, t, POS, "0"), r"'layers'.*single str"),
        ("str prompts to sample", lambda: sh.sample(m, t, "hello"), r"sample\(\): argument 'prompts'.*single str"),
        ("str temperature", lambda: sh.sample(m, t, ["hello"], temperature="0"), r"'temperature' must be float"),
        ("float max_new_tokens", lambda: sh.sample(m, t, ["hi"], max_new_tokens=4.0), r"'max_new_tokens' must be int"),
        ("list for corpus", lambda: sh.Readout.train(m, t, POS), r"'corpus' must be Corpus"),
        ("str texts to score", lambda: ro.score(m, t, "a text"), r"'texts'.*single str"),
        ("int concept", lambda: ro[0], r"'concept' must be str, but concept is int 0"),
        ("str model to monitor", lambda: ro.monitor("llama"), r"'model' must be Module"),
        ("str dtype", lambda: ro.save("x", dtype=None), r"'dtype' must be str"),
        ("str concepts", lambda: sh.Readout("anger", ro.vectors, ro.norms, "mean_diff", "mean"), r"'concepts'"),
        ("str model to load", lambda: GatedLoRA.load("llama", "x"), r"GatedLoRA.load\(\): argument 'model'"),
    ]


def test_wrong_argument_types_are_named(saved):
    """Each case names the function, the argument (and item), what it got and what it expects."""
    for name, call, match in _argument_cases(saved):
        with pytest.raises(sh.SteerhealError, match=match) as err:
            call()
        message = str(err.value)
        fix = "pass " in message or "wrap it" in message or "its arguments are" in message
        assert message.startswith(message.split("(")[0]) and fix, (name, message)


def test_public_functions_check_their_arguments(saved):
    """Every public function of `steerheal.__all__`, and every public method (constructors of the small configs
    included) of its public classes, carries `@checked`."""
    # records, not calls; and Sampler, an interface (a Protocol) whose implementations are checked
    unchecked_classes = {"Fingerprint", "PreferencePair", "HealResult", "RunConfig", "Sampler"}
    missing = []
    for name in sh.__all__:
        obj = getattr(sh, name)
        if isinstance(obj, type):
            if name in unchecked_classes or issubclass(obj, Exception):
                continue
            for attr, member in vars(obj).items():
                function = getattr(member, "__func__", member)
                public = not attr.startswith("_") or attr in ("__call__", "__getitem__")
                skipped = attr in ("to_steering_vectors", "to_dict", "loosened")
                if public and callable(function) and not skipped and not getattr(function, "__steerheal_checked__", 0):
                    missing.append(f"{name}.{attr}")
        elif callable(obj) and not isinstance(obj, type) and not getattr(obj, "__steerheal_checked__", False):
            missing.append(name)
    assert missing == [], missing
    for config in (sh.HealConfig, sh.FilterConfig, sh.SamplingConfig, sh.DoseConfig):
        assert getattr(config.__init__, "__steerheal_checked__", False), config.__name__
    with pytest.raises(sh.SteerhealError, match=r"HealConfig.__init__\(\).*lr"):
        sh.HealConfig(lr="fast")
    m, t, v = saved["model"], saved["tok"], saved["vector"]
    with pytest.raises(sh.SteerhealError, match=r"dose_walk\(\).*prompts.*wrap it in a list"):
        sh.dose_walk(m, t, v, "a prompt")
    with pytest.raises(sh.SteerhealError, match=r"make_pairs\(\).*alpha"):
        sh.make_pairs(m, t, v, ["a prompt"], alpha="strong")


def test_valid_calls_still_pass(saved):
    m, t, v = saved["model"], saved["tok"], saved["vector"]
    assert v.project(m, t, (POS[0], ("a prompt", "a completion"))).shape == (2, 2)  # a tuple of texts
    with v(m, C=3):  # an int passes for a float
        pass
    assert sh.capture(m, t, POS[:2], range(2))[1].shape == (2, 64)  # any sequence of ints


# ---------------------------------------------------------------------- degenerate directions
def test_a_noise_direction_is_refused_and_a_weak_real_one_passes(saved):
    m, t = saved["model"], saved["tok"]
    # the same texts in another order: the mean difference is float rounding (~1e-7 of the activations)
    with pytest.raises(sh.SteerhealError, match="not separated.*same texts, perhaps in another order"):
        sh.Vector.train(m, t, POS, POS[::-1])
    with pytest.raises(sh.SteerhealError, match="no direction"):  # the same order: exactly zero
        sh.Vector.train(m, t, POS, POS)
    # a weak but real contrast: one word in one text of six
    weak = [*POS[:5], POS[5].replace("happy", "glad")]
    v = sh.Vector.train(m, t, POS, weak, layers=[1])
    assert v.norms[1] > 0

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 64, generator=gen) * 10
    unit = torch.nn.functional.normalize(torch.randn(64, generator=gen), dim=0)
    scale = float(x.norm(dim=-1).median())
    for method in ("mean_diff", "pca", "logistic"):
        with pytest.raises(sh.SteerhealError, match="not separated|no direction"):
            direction(method, x, x.flip(0))
        # a shift of 10x the threshold, relative to the activations, is a direction, found as such
        got, separation = direction(method, x + 10 * NOISE_SEPARATION * scale * unit, x)
        assert float(got @ unit) > 0.99 and separation == pytest.approx(10 * NOISE_SEPARATION * scale, rel=0.05)
    bases = [torch.linalg.qr(torch.randn(64, 4, generator=gen))[0] for _ in range(4)]
    with pytest.raises(sh.SteerhealError, match="not separated|no eigenvalue"):
        subspace(bases[:2], bases[:2], x[:2], x[:2].flip(0))


def test_a_readout_concept_without_contrast_is_refused_by_name(saved):
    corpus = saved["corpus"]
    base = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 10
    noise = torch.randn(len(corpus.texts), 64, generator=torch.Generator().manual_seed(2)) * 1e-6
    acts = CorpusActivations(corpus.texts, "mean", {0: base + noise})
    with pytest.raises(sh.SteerhealError, match=rf"concept '{corpus.concepts[0]}' at layer 0: .*not separated"):
        sh.Readout.fit(acts, corpus, "mean_diff")


# ---------------------------------------------------------------------- hand-edited metadata
def _edited(source: Path, target: Path, change) -> Path:
    shutil.copytree(source, target)
    meta_file = next(p for p in target.iterdir() if p.suffix == ".json")
    meta = json.loads(meta_file.read_text())
    change(meta)
    meta_file.write_text(json.dumps(meta))
    return target


def _file_cases(s: dict) -> list[tuple[str, object, object, str]]:
    vector, readout, gated = s["vector_dir"], s["readout_dir"], s["gated_dir"]
    fresh = copy.deepcopy(s["model"])
    load_v, load_r = sh.Vector.load, sh.Readout.load

    def load_g(folder: Path) -> object:
        return GatedLoRA.load(fresh, folder)

    return [
        ("vector method missing", vector, lambda m: m.pop("method"), load_v, r"vector.json lacks 'method'"),
        ("vector method unknown", vector, lambda m: m.update(method="median"), load_v, r"method='median' is not one"),
        ("vector position unknown", vector, lambda m: m.update(position="first"), load_v, r"position='first'"),
        ("vector coeff str", vector, lambda m: m.update(coeff="2.0"), load_v, r"vector.json, 'coeff' must be float"),
        ("vector layers str", vector, lambda m: m.update(layers=["1", "2"]), load_v, r"layers\[0\] is str"),
        ("vector layers swapped", vector, lambda m: m.update(layers=[2, 1]), load_v, r"norms would go to the wrong"),
        ("vector hidden str", vector, lambda m: m.update(hidden_size="64"), load_v, r"'hidden_size' must be int"),
        ("vector meta list", vector, lambda m: m.update(meta=[]), load_v, r"'meta' must be dict"),
        ("readout concepts swapped", readout, lambda m: m["concepts"].reverse(), load_r, r"read under other names"),
        ("readout concept renamed", readout, lambda m: m["concepts"].__setitem__(0, "hope"), load_r, r"other names"),
        ("readout method unknown", readout, lambda m: m.update(method="median"), load_r, r"readout.json, method="),
        ("readout position wrong", readout, lambda m: m.update(position="all"), load_r, r"position='all' is not"),
        ("readout spectrum str", readout, lambda m: m.update(spectrum="yes"), load_r, r"'spectrum' must be bool"),
        ("readout layers missing", readout, lambda m: m.pop("layers"), load_r, r"readout.json lacks 'layers'"),
        ("gated r missing", gated, lambda m: m.pop("r"), load_g, r"gated.json lacks 'r' \(int\)"),
        ("gated alpha str", gated, lambda m: m.update(alpha="16"), load_g, r"gated.json, 'alpha' must be float"),
        ("gated flag str", gated, lambda m: m.update(fan_in_fan_out="false"), load_g, r"'fan_in_fan_out' must be"),
        ("gated names str", gated, lambda m: m.update(target_names="q_proj"), load_g, r"'target_names'.*single str"),
        ("gated seed float", gated, lambda m: m.update(seed=0.5), load_g, r"'seed' must be int"),
        ("gated band str", gated, lambda m: m.update(depth_band="0.2-0.8"), load_g, r"'depth_band'"),
    ]


def test_edited_metadata_is_refused_naming_the_file(saved, tmp_path):
    for i, (name, source, change, load, match) in enumerate(_file_cases(saved)):
        folder = _edited(source, tmp_path / f"case{i}", change)
        with pytest.raises(sh.SteerhealError, match=match) as err:
            load(folder)
        assert str(folder) in str(err.value) and "restore" in str(err.value), (name, str(err.value))


def test_files_of_the_current_and_earlier_code_still_load(saved, tmp_path):
    v, ro = saved["vector"], saved["readout"]
    loaded = sh.Vector.load(saved["vector_dir"])
    assert loaded.norms == v.norms and loaded.coeff == 2.0
    assert sh.Readout.load(saved["readout_dir"]).concepts == ro.concepts
    # wave-1 files: no header in the safetensors file, fewer optional keys in the JSON
    for source, tensor_file, dropped in (
        (saved["vector_dir"], "vector.safetensors", ("coeff", "calibration", "meta")),
        (saved["readout_dir"], "readout.safetensors", ("spectrum", "meta")),
    ):
        old = _edited(source, tmp_path / source.name, lambda m, dropped=dropped: [m.pop(k) for k in dropped])
        save_file(load_file(old / tensor_file), str(old / tensor_file))
    assert sh.Vector.load(tmp_path / "vector").norms == v.norms
    assert sh.Readout.load(tmp_path / "readout").concepts == ro.concepts


# ---------------------------------------------------------------------- the monitor
def test_monitor_refuses_a_prompt_longer_than_the_context():
    model, tok = sh.toyworld.load()
    row = torch.nn.functional.normalize(torch.ones(1, 128), dim=-1)
    ro = sh.Readout(["a"], {1: row}, {1: torch.ones(1)}, "mean_diff", "mean")
    ids = torch.full((1, 140), 5)
    with (
        pytest.raises(sh.SteerhealError, match="reaches 140 positions.*context is 128; shorten the prompt"),
        ro.monitor(model),
    ):
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, pad_token_id=tok.pad_token_id)
