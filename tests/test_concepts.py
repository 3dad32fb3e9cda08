"""The concept sources corpus, readout and vector (issue 20): runs on a tiny model, the sources on toyworld,
re-extraction on and off, checks before any model loads, the foreign readout fixture, wave-1 config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import steerheal as sh
from conftest import tiny
from steerheal.cli import main
from steerheal.errors import SteerhealError
from steerheal.lm.fingerprint import fingerprint
from steerheal.loop.checks import validate
from steerheal.loop.concepts import build_concept, round_teacher
from steerheal.loop.runconfig import RunConfig, compared, preset
from steerheal.loop.sources import corpus_contrast
from steerheal.read.readout_open import open_readout
from steerheal.toyworld import world

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FOREIGN = FIXTURES / "foreign_readout"  # tiny:llama, layers 1-2, anger/fear/joy; tests/fixtures/make_foreign_readout.py
WAVE1 = FIXTURES / "wave1"


@pytest.fixture(scope="module")
def moods(tmp_path_factory) -> Path:
    """toyworld's mood corpus (anger, calm, fear, joy), small."""
    return world.write_corpus(tmp_path_factory.mktemp("moods") / "corpus", n_stories=6, n_scenarios=4)


def _config(tmp: Path, model: str = "tiny:llama", rounds: int = 1, **concept) -> RunConfig:
    base = preset("fast-dev-run")
    return dataclasses.replace(
        base,
        runs_dir=tmp,
        name="run",
        model=model,
        concept=dataclasses.replace(base.concept, **concept),
        stop=dataclasses.replace(base.stop, max_rounds=rounds),
        verify=dataclasses.replace(base.verify, readout=False),
    )


def _round_vector(root: Path, k: int) -> sh.Vector:
    return sh.Vector.load(root / f"round_{k:02d}")


def _metrics(root: Path, k: int) -> dict:
    return json.loads((root / f"round_{k:02d}" / "metrics.json").read_text())


def test_each_source_runs_on_a_tiny_model(tmp_path, moods):
    # corpus, through the command line: the flags tyro makes from ConceptConfig
    flags = ["run", "--preset", "fast-dev-run", "--model", "tiny:llama", "--stop.max-rounds", "1"]
    main(
        [
            *flags,
            "--runs-dir",
            str(tmp_path),
            "--name",
            "c",
            "--verify.no-readout",
            "--concept.source",
            "corpus",
            "--concept.corpus",
            str(moods),
            "--concept.name",
            "joy",
        ]
    )
    started = [json.loads(line) for line in (tmp_path / "c" / "events.jsonl").read_text().splitlines()]
    assert any(e.get("concept", "").startswith("corpus joy (off-target ") for e in started)
    assert _metrics(tmp_path / "c", 0)["direction"]["cos_to_round0_mean"] is not None

    # readout (the foreign fixture), two rounds: round 0 steers with its row, round 1 re-reads it from the corpus
    rows, _ = open_readout(FOREIGN)
    result = sh.run(_config(tmp_path, rounds=2, source="readout", readout=FOREIGN, name="joy", corpus=moods))
    assert result.rounds == [0, 1]
    v0, v1 = _round_vector(result.root, 0), _round_vector(result.root, 1)
    for layer in (1, 2):
        assert torch.equal(v0.directions[layer], rows.vectors[layer][rows.concepts.index("joy")])
        assert float(v0.directions[layer] @ v1.directions[layer]) < 0.9999  # re-extracted on the student
    assert v0.meta["saved_method"] == "unknown" and v0.method == "mean_diff"

    # vector without texts: every round steers with the saved direction, the wander is not measured
    saved = sh.Vector.load(WAVE1 / "vector")
    result = sh.run(
        dataclasses.replace(_config(tmp_path, source="vector", vector=WAVE1 / "vector", reextract=False), name="v")
    )
    assert torch.equal(_round_vector(result.root, 0).directions[1], saved.directions[1])
    direction = _metrics(result.root, 0)["direction"]
    assert direction["cos_to_round0_mean"] is None and direction["noise_ceiling"] == {}


def test_round_teacher_reextracts_only_when_asked(tmp_path, moods):
    model, tok = tiny("llama")
    rows, _ = open_readout(FOREIGN)
    joy = rows.vectors[1][rows.concepts.index("joy")]
    on = build_concept(_config(tmp_path, source="readout", readout=FOREIGN, name="joy", corpus=moods), tok, model=model)
    assert torch.equal(round_teacher(on, model, tok, _config(tmp_path), 0).directions[1], joy)
    again = round_teacher(on, model, tok, _config(tmp_path), 1)
    contrast = corpus_contrast(sh.Corpus.load(moods), "joy", 8)
    read = sh.Vector.train(model, tok, contrast.pos, contrast.neg, [1, 2], "mean_diff", "mean")
    assert on.teacher == contrast and torch.equal(again.directions[1], read.directions[1])
    off = build_concept(
        _config(tmp_path, source="readout", readout=FOREIGN, name="joy", corpus=moods, reextract=False), tok
    )
    assert not off.reextract and torch.equal(round_teacher(off, model, tok, _config(tmp_path), 3).directions[1], joy)


def test_each_source_on_toyworld(tmp_path, moods, logs):
    model, tok = sh.toyworld.load()
    corpus = sh.Corpus.load(moods)
    sh.Readout.train(model, tok, corpus).save(tmp_path / "ro")  # records its corpus: later rounds re-read from it
    joy = corpus_contrast(corpus, "joy", 8)
    sh.Vector.train(model, tok, joy.pos, joy.neg, position="mean").save(tmp_path / "vec")
    sources = {
        "corpus": {"corpus": moods},
        "readout": {"readout": tmp_path / "ro"},
        "vector": {"vector": tmp_path / "vec", "corpus": moods},
    }
    for source, options in sources.items():
        config = _config(tmp_path, model="toyworld", source=source, name="joy", **options)
        validate(config)
        concept = build_concept(config, tok, model=model)
        assert concept.teacher == joy and concept.reextract
        assert concept.eval_users == world.neutral_prompts(config.verify.n_prompts, 0, "eval")  # toyworld's prompts
        assert concept.judge is not None and set(concept.judge(["x"])) >= {"mood_rate", "grammar_ok"}
        if source != "corpus":
            assert concept.initial is not None
            teacher = round_teacher(concept, model, tok, config, 0)
            saved = sh.Readout.load(tmp_path / "ro")["joy"] if source == "readout" else sh.Vector.load(tmp_path / "vec")
            assert all(torch.equal(teacher.directions[k], saved.directions[k]) for k in saved.layers)
    # one round end to end, judged by toyworld's truth
    result = sh.run(_config(tmp_path, model="toyworld", source="corpus", corpus=moods, name="joy"))
    assert set(_metrics(result.root, 0)["truth"]["student"]) == {"mood_rate", "off_target_mood_rate", "grammar_ok"}
    # made for another model: the foreign tiny:llama readout (hidden 64), a vector whose fingerprint is another's
    with pytest.raises(SteerhealError, match="hidden size 64 but toyworld has 128"):
        validate(_config(tmp_path, model="toyworld", source="readout", readout=FOREIGN, name="joy", corpus=moods))
    other = sh.Vector.load(tmp_path / "vec")
    other.fingerprint = dataclasses.replace(fingerprint(model), architecture="GPT2LMHeadModel")
    other.save(tmp_path / "other")
    with pytest.raises(SteerhealError, match="made for another model .*architecture"):
        validate(_config(tmp_path, model="toyworld", source="vector", vector=tmp_path / "other", reextract=False))


@pytest.mark.parametrize(
    ("concept", "message"),
    [
        ({"source": "corpus", "name": "joy"}, "needs --concept.corpus"),
        ({"source": "corpus", "corpus": "MOODS", "name": "jooy"}, r"not a concept of .*\['anger', 'calm', 'fear'"),
        ({"source": "corpus", "corpus": "MOODS", "name": "joy", "off_target_name": "joy"}, "must differ"),
        (
            {"source": "corpus", "corpus": "MOODS", "name": "joy", "readout": FOREIGN},
            "read by --concept.source readout",
        ),
        ({"source": "readout", "readout": FOREIGN, "name": "love"}, r"it has \['anger', 'fear', 'joy'\]"),
        ({"source": "readout", "readout": FOREIGN, "name": "joy"}, "records no corpus.*--concept.no-reextract"),
        ({"source": "readout", "readout": FOREIGN, "name": "joy", "reextract": False, "layers": (3,)}, r"at \[3\]"),
        ({"source": "readout", "readout": FOREIGN / "nope", "name": "joy"}, "--concept.readout .*no such folder"),
        ({"source": "vector", "vector": WAVE1 / "vector"}, "does not store the texts"),
        ({"source": "vector", "vector": WAVE1 / "vector", "corpus": "MOODS"}, "needs --concept.name"),
    ],
)
def test_sources_are_checked_before_any_model_loads(tmp_path, moods, concept, message):
    concept = {k: moods if v == "MOODS" else v for k, v in concept.items()}
    with pytest.raises(SteerhealError, match=message):
        validate(_config(tmp_path, **concept))


def test_a_foreign_readout_is_accepted_with_a_warning(tmp_path, logs):
    readout, foreign = open_readout(FOREIGN)
    assert foreign and readout.method == "unknown" and readout.hidden_size == 64 and readout.layers == [1, 2]
    _, steerheals = open_readout(WAVE1 / "readout")
    assert not steerheals
    validate(_config(tmp_path, source="readout", readout=FOREIGN, name="joy", reextract=False))
    assert any("no steerheal fingerprint" in m and "its hidden size and layers" in m for m in logs)


def test_a_wave1_config_json_loads_and_its_run_resumes(tmp_path):
    stored = json.loads((WAVE1 / "config.json").read_text())
    assert "reextract" not in stored["concept"] and "threads" not in stored  # written by the wave-1 code
    config = RunConfig.from_dict(stored)
    assert config.concept.source == "builtin" and config.concept.corpus is None and config.concept.reextract
    assert compared(stored) == compared(config.to_dict())
    # a wave-1 run killed before its first round completed: resumed by today's code with the same options
    stored["runs_dir"], stored["stop"]["max_rounds"] = str(tmp_path), 1
    (tmp_path / "wave1").mkdir()
    (tmp_path / "wave1" / "config.json").write_text(json.dumps(stored))
    result = sh.run(RunConfig.from_dict(stored), resume=True)
    assert result.rounds == [0] and (tmp_path / "wave1" / "steerheal-run.json").is_file()
