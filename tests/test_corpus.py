"""Corpus folders: layout, positives and negatives, de-duplication, subset and split, validation, personas."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import steerheal as sh
from conftest import tiny
from steerheal.toyworld import world


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


SMALL = {
    "stories/joy.txt": "Joy story one.\n\nJoy story two,\nstill the same paragraph.\n",
    "stories/fear.txt": "Fear story one.\n\n\n\nFear story two.",
    "paired/porch/baseline.txt": "The porch at noon.",
    "paired/porch/joy.txt": "The porch at noon, and she laughed.",
    "paired/porch/fear.txt": "The porch at noon, and she froze.",
    "direct/joy.txt": "Joy direct.",
    "direct/anger.txt": "Anger one.\n\nAnger two.\n\nAnger three.",
    "direct/_neutral.txt": "A neutral line.\n\nAnother neutral line.",
    "README.md": "notes are not read",
}


def test_layout_positives_and_negatives(tmp_path):
    corpus = sh.Corpus.load(_write(tmp_path, SMALL), min_positives=3)
    assert corpus.concepts == ("anger", "fear", "joy")
    assert corpus.positives("joy") == [
        "Joy story one.",
        "Joy story two,\nstill the same paragraph.",
        "The porch at noon, and she laughed.",
        "Joy direct.",
    ]
    assert corpus.positives("fear") == ["Fear story one.", "Fear story two.", "The porch at noon, and she froze."]
    negatives = corpus.negatives("joy")
    # other concepts, the scenario's baseline and the neutral pool; never a joy text
    assert set(negatives) == set(corpus.texts) - set(corpus.positives("joy"))
    assert "The porch at noon." in negatives and "A neutral line." in negatives and "Anger two." in negatives
    assert len(corpus) == 13 and corpus.counts() == {"anger": 3, "fear": 3, "joy": 4}
    labels = corpus.labels
    assert labels.shape == (13, 3) and labels.sum() == 10
    baseline = corpus.texts.index("The porch at noon.")
    assert not labels[baseline].any()
    assert [str(s) for s in corpus.sources[baseline]] == ["paired/porch/baseline.txt (text 1)"]
    assert {s.kind for group in corpus.sources for s in group} == {"stories", "paired", "direct", "baseline", "pool"}


def test_toyworld_corpus_folder_loads():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        corpus = sh.Corpus.load(world.write_corpus(d, n_stories=5, n_scenarios=3))
    assert corpus.concepts == tuple(sorted(world.MOODS))
    assert corpus.counts() == {m: 5 + 3 for m in world.MOODS}
    assert len(corpus.texts) == len(set(corpus.texts)) == 4 * 8 + 3 + 5


def test_duplicate_texts_are_forwarded_once_and_warned_with_both_paths(tmp_path, logs):
    files = dict(SMALL)
    files["direct/anger.txt"] += "\n\nJoy direct."  # the same text as a joy text
    corpus = sh.Corpus.load(_write(tmp_path, files))
    assert corpus.texts.count("Joy direct.") == 1
    assert "Joy direct." in corpus.positives("joy") and "Joy direct." in corpus.positives("anger")
    assert "Joy direct." not in corpus.negatives("anger")
    warning = next(m for m in logs if "same text" in m)
    assert "direct/anger.txt (text 4)" in warning and "direct/joy.txt (text 1)" in warning
    assert "['anger', 'joy']" in warning


def test_subset_keeps_only_the_named_concepts(tmp_path):
    corpus = sh.Corpus.load(_write(tmp_path, SMALL))
    sub = corpus.subset(["joy", "fear"])
    assert sub.concepts == ("fear", "joy")
    assert "Anger one." not in sub.texts  # a dropped concept's texts leave the corpus
    assert "A neutral line." in sub.texts and "The porch at noon." in sub.texts
    assert sub.positives("joy") == corpus.positives("joy")
    with pytest.raises(sh.SteerhealError, match="concept 'hope' is not in this corpus"):
        corpus.subset(["hope"])
    with pytest.raises(sh.SteerhealError, match=r"names is a single str 'joy'.*wrap it in a list"):
        corpus.subset("joy")  # the typed boundary names the argument (it said "non-empty list" before)
    with pytest.raises(sh.SteerhealError, match="non-empty list"):
        corpus.subset([])


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    corpus = sh.Corpus.load(world.write_corpus(tmp_path))
    train, test = corpus.split(0.3, seed=1)
    assert set(train.texts).isdisjoint(test.texts) and set(train.texts) | set(test.texts) == set(corpus.texts)
    assert test.counts() == {m: 6 for m in world.MOODS}  # round(0.3 * 20) of each mood
    assert train.counts() == {m: 14 for m in world.MOODS}
    neutral = [t for t in test.texts if not any(t in corpus.positives(m) for m in world.MOODS)]
    assert len(neutral) == 6  # round(0.3 * 20) of the baselines and pool
    again, other = corpus.split(0.3, seed=1), corpus.split(0.3, seed=2)
    assert again[1].texts == test.texts and other[1].texts != test.texts
    # the split is wave 1's, so every documented held-out figure reproduces (its seed string once moved with a
    # module rename; this digest of the held-out texts, taken on wave 1's code, catches that)
    digest = hashlib.sha256("\n".join(sorted(test.texts)).encode()).hexdigest()
    assert digest == "4de6fafb919b13620a43dc9617a61f24ac1918f9ec8bd5382e534982d3041777"
    small = sh.Corpus.load(_write(tmp_path / "small", SMALL))
    _, held = small.split(0.1)
    assert all(n >= 1 for n in held.counts().values())  # at least one held out per concept
    with pytest.raises(sh.SteerhealError, match="strictly between 0 and 1"):
        corpus.split(1.0)


def test_stats_table(tmp_path):
    corpus = sh.Corpus.load(_write(tmp_path, SMALL))
    _, tok = tiny("llama")
    stats = corpus.stats(tok)
    joy = stats.filter(stats["concept"] == "joy").to_dicts()[0]
    assert (joy["texts"], joy["stories"], joy["paired"], joy["direct"], joy["negatives"]) == (4, 2, 1, 1, 9)
    neutral = stats.filter(stats["concept"] == "(neutral)").to_dicts()[0]
    assert (neutral["texts"], neutral["baseline"], neutral["pool"]) == (3, 1, 2)
    assert joy["tokens_max"] >= joy["words_max"] and stats.height == 4


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"stories/joy.txt": "  \n\n "}, r"stories/joy.txt is empty"),
        ({"stories/joy.txt": "one\n\ntwo"}, r"fewer than min_positives=3 texts: joy \(2\)"),
        ({"stories/joy-ful.txt": "a\n\nb\n\nc"}, r"named 'joy-ful', not a plain identifier"),
        ({"paired/my scene/baseline.txt": "b", "paired/my scene/joy.txt": "j"}, r"'my scene', not a plain"),
        ({"paired/porch/joy.txt": "a"}, r"paired/porch/ has no baseline.txt"),
        ({"paired/porch/baseline.txt": "a"}, r"has only a baseline"),
        ({"direct/_neutral.txt": "a\n\nb"}, r"has no concepts"),
        ({"README.md": "x"}, r"has no concepts"),
        ({"story/joy.txt": "a"}, r"unexpected folder story/"),
        ({"stories/joy.md": "a"}, r"unexpected stories/joy.md"),
        ({"notes.txt": "a"}, r"unexpected file notes.txt at the top level"),
        ({"stories/_joy.txt": "a"}, r"starts with '_'"),
        ({"stories/baseline.txt": "a"}, r"'baseline' is reserved"),
    ],
)
def test_validation_errors(tmp_path, files, match):
    with pytest.raises(sh.SteerhealError, match=match):
        sh.Corpus.load(_write(tmp_path, files))


def test_non_utf8_file_is_named(tmp_path):
    _write(tmp_path, {"stories/joy.txt": "a\n\nb\n\nc"})
    (tmp_path / "direct").mkdir()
    (tmp_path / "direct" / "fear.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(sh.SteerhealError, match=r"direct/fear.txt is not UTF-8"):
        sh.Corpus.load(tmp_path)


def test_missing_folder_and_bad_min_positives(tmp_path):
    with pytest.raises(sh.SteerhealError, match="does not exist"):
        sh.Corpus.load(tmp_path / "nope")
    with pytest.raises(sh.SteerhealError, match="min_positives=0"):
        sh.Corpus.load(_write(tmp_path, SMALL), min_positives=0)
    corpus = sh.Corpus.load(tmp_path, min_positives=1)
    with pytest.raises(sh.SteerhealError, match="concept 'hope' is not in this corpus"):
        corpus.positives("hope")


PERSONA = {
    "system_pos": "You care about the person first.",
    "system_neg": "You follow the rules first.",
    "prompts": ["Can I return this?", "My flight is late."],
}


def test_persona_files_load_into_persona_contrast(tmp_path):
    _write(tmp_path, {"care.json": json.dumps(PERSONA), "README.md": "notes"})
    personas = sh.load_personas(tmp_path)
    assert list(personas) == ["care"]
    care = personas["care"]
    assert care.prompts == tuple(PERSONA["prompts"])
    _, tok = tiny("llama")
    pos, neg = care.contrast(tok)
    assert (pos, neg) == sh.persona_contrast(tok, PERSONA["system_pos"], PERSONA["system_neg"], PERSONA["prompts"])
    assert pos[0].endswith("<|assistant|>") and "care about the person" in pos[0] and "rules" in neg[0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({k: v for k, v in PERSONA.items() if k != "prompts"}, r"missing keys \['prompts'\]"),
        ({**PERSONA, "tone": "x"}, r"unknown keys \['tone'\]"),
        ({**PERSONA, "prompts": []}, "non-empty list"),
        ({**PERSONA, "prompts": ["ok", " "]}, r"prompts\[1\] must be a non-empty string"),
        ({**PERSONA, "system_neg": PERSONA["system_pos"]}, "identical"),
        ({**PERSONA, "system_pos": ""}, "system_pos must be a non-empty string"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_persona_validation(tmp_path, content, match):
    path = tmp_path / "care.json"
    path.write_text(json.dumps(content))
    with pytest.raises(sh.SteerhealError, match=match):
        sh.Persona.load(path)


def test_persona_folder_errors(tmp_path):
    with pytest.raises(sh.SteerhealError, match="holds no <name>.json"):
        sh.load_personas(_write(tmp_path / "empty", {"README.md": "x"}))
    _write(tmp_path / "odd", {"care.txt": "x"})
    with pytest.raises(sh.SteerhealError, match="unexpected care.txt"):
        sh.load_personas(tmp_path / "odd")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(sh.SteerhealError, match="not valid JSON"):
        sh.Persona.load(tmp_path / "bad.json")


SHIPPED = Path(__file__).resolve().parent.parent / "corpus"


def test_the_shipped_corpora_load_and_meet_the_issue():
    """corpus/emotions: >= 24 concepts, >= 16 texts each (>= 8 stories, 2 paired, >= 6 direct; issue 22), >= 6
    paired scenarios with a baseline and >= 4 concepts, a neutral pool of >= 64; corpus/personas: >= 2 contrasts
    over >= 40 prompts."""
    emotions = SHIPPED / "emotions"
    assert emotions.is_dir(), f"{emotions} is missing (issue 7 ships it)"
    corpus = sh.Corpus.load(emotions)
    stats = corpus.stats()
    concepts = stats.filter(stats["concept"] != "(neutral)")
    assert len(corpus.concepts) >= 24
    assert concepts["stories"].min() >= 3, concepts.filter(concepts["stories"] < 3)["concept"].to_list()
    assert concepts["texts"].min() >= 16, concepts.filter(concepts["texts"] < 16)["concept"].to_list()
    assert concepts["stories"].min() >= 8 and concepts["direct"].min() >= 6
    assert (concepts["paired"] == 2).all()  # every concept in exactly two scenarios (README)
    scenarios = sorted(p for p in (emotions / "paired").iterdir() if p.is_dir())
    assert len(scenarios) >= 6
    for scenario in scenarios:
        assert len([p for p in scenario.glob("*.txt") if p.stem != "baseline"]) >= 4, scenario.name
    pool = [s for group in corpus.sources for s in group if s.kind == "pool"]
    assert len(pool) >= 64
    personas = sh.load_personas(SHIPPED / "personas")
    assert len(personas) >= 2 and all(len(p.prompts) >= 40 for p in personas.values())
