"""A bank run on toyworld (issue 21): a mood and a topic, each its own run on the base, then their cross-talk
table, report and resume; the topic contrast and rates the world gives exactly; config.json without `concepts`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import steerheal as sh
from steerheal.cli import main
from steerheal.errors import SteerhealError
from steerheal.loop.bank_run import check_bank, run_bank
from steerheal.loop.runconfig import RunConfig, preset
from steerheal.toyworld import world
from steerheal.toyworld.metrics import mood_rates, topic_rates


def test_topic_contrast_differs_only_in_topic():
    pos, neg = world.topic_contrast_set("garden", 10, seed=3)
    assert topic_rates(pos)["garden"] == 1.0 and topic_rates(neg)["garden"] == 0.0
    assert mood_rates(pos) == mood_rates(neg), "a pair shares every mood word: topic and mood are independent"
    assert len({world.NOUN_TOPIC[w] for t in neg for w in t.split() if w in world.NOUN_TOPIC}) == 4


def _bank(tmp: Path, concepts: tuple[str, ...]) -> RunConfig:
    base = preset("fast-dev-run")
    return dataclasses.replace(
        base,
        runs_dir=tmp,
        name="bank",
        model="toyworld",
        concept=dataclasses.replace(base.concept, source="toyworld"),
        concepts=concepts,
        stop=dataclasses.replace(base.stop, max_rounds=1),
        verify=dataclasses.replace(base.verify, readout=False, n_prompts=6, max_new_tokens=12),
    )


def test_bank_of_a_mood_and_a_topic_on_toyworld(tmp_path):
    config = _bank(tmp_path, ("joy", "garden"))
    for bad, match in ((("joy", "anger"), "off-target mood"), (("joy", "joy"), "more than once")):
        with pytest.raises(SteerhealError, match=match):
            check_bank(dataclasses.replace(config, concepts=bad))
    with pytest.raises(SteerhealError, match="use sh.run_bank"):
        sh.run(config)
    assert not (tmp_path / "bank").exists(), "checks write nothing"
    result = run_bank(config)
    root = tmp_path / "bank"
    for name in ("joy", "garden"):
        run = root / "concepts" / name
        assert (run / "round_00" / "manifest.json").is_file() and (run / "report.html").is_file()
        assert json.loads((run / "config.json").read_text())["concept"]["mood"] == name
    saved = json.loads((root / "crosstalk.json").read_text())
    assert saved["concepts"] == ["joy", "garden"] and saved["measure"] == {"joy": "exact rate", "garden": "exact rate"}
    t, base, alone = saved["table"], saved["base"], saved["alone"]
    for a, i in enumerate(saved["concepts"]):
        for b, j in enumerate(saved["concepts"]):
            assert t[a][b] == pytest.approx(alone[j][i] - base[i], abs=1e-12)
            assert 0.0 <= alone[j][i] <= 1.0
    assert saved["independent"] == [[False, True], [True, False]], "a mood and a topic: independent by construction"
    assert set(saved["targets"]["independent |relative| <= 0.1"]) == {"joy by garden", "garden by joy"}
    assert set(saved["together"]) == {"joy+garden"} and result.crosstalk["table"] == t
    report = (root / "report.md").read_text()
    assert "cross-talk" in report and "concepts/joy/report.html" in report and (root / "crosstalk.png").is_file()

    # resume: every concept already finished, the cross-talk kept
    before = (root / "crosstalk.json").read_bytes()
    main(["run", "--preset", "fast-dev-run", "--model", "toyworld", "--runs-dir", str(tmp_path), "--name", "bank",
          "--concepts", "joy", "garden", "--stop.max-rounds", "1", "--verify.no-readout", "--verify.n-prompts", "6",
          "--verify.max-new-tokens", "12", "--resume", "--concept.source", "toyworld"])  # fmt: skip
    assert (root / "crosstalk.json").read_bytes() == before
    with pytest.raises(SteerhealError, match="--overwrite"):
        run_bank(config)


def test_config_json_without_concepts_reads_as_one_concept():
    stored = preset("toyworld").to_dict()
    del stored["concepts"]
    assert RunConfig.from_dict(stored).concepts == () and RunConfig.from_dict(stored) == preset("toyworld")
