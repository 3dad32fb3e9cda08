"""read/selection.py: layer and method chosen on inner splits of the training part only; bootstrap AUROC intervals.

Synthetic activations on a small corpus folder: three concepts planted at known strengths per layer, so the
right layer is known and nothing needs a model.
"""

from __future__ import annotations

import pytest
import torch

import steerheal as sh
from steerheal.read.corpus_activations import CorpusActivations
from steerheal.read.quality import auroc
from steerheal.read.selection import bootstrap_auroc, choose

CONCEPTS = ("anger", "calm", "joy")
STRENGTH = {0: 0.2, 1: 2.0, 2: 0.5}  # the planted concept reads best at layer 1


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    (root / "direct").mkdir()
    for concept in CONCEPTS:
        (root / "direct" / f"{concept}.txt").write_text("\n\n".join(f"{concept} text {i}" for i in range(12)))
    (root / "direct" / "_pool.txt").write_text("\n\n".join(f"neutral text {i}" for i in range(12)))
    corpus = sh.Corpus.load(root)
    generator = torch.Generator().manual_seed(0)
    hidden = 16
    labels = corpus.labels.float()
    pooled = {
        layer: torch.randn(len(corpus.texts), hidden, generator=generator)
        + strength * labels @ torch.eye(len(CONCEPTS), hidden)
        for layer, strength in STRENGTH.items()
    }
    return corpus, CorpusActivations(corpus.texts, "mean", pooled)


def test_choose_reads_the_planted_layer_and_never_looks_at_the_held_out_texts(planted):
    corpus, acts = planted
    train, test = corpus.split(0.3, 0)
    two_stage = choose(acts, train, [0, 1, 2], ["mean_diff", "pca"])
    assert two_stage.layer == 1
    assert set(two_stage.profile("mean_diff")) == {0, 1, 2}
    assert set(two_stage.profile("pca")) == {1}  # the second stage scores the methods at the chosen layer
    assert two_stage.method == max(["mean_diff", "pca"], key=lambda m: two_stage.scores[(1, m)])
    assert two_stage.scores[(1, "mean_diff")] > two_stage.scores[(0, "mean_diff")] + 0.2
    joint = choose(acts, train, [0, 1, 2], ["mean_diff", "pca"], layer_method=None)
    assert len(joint.scores) == 6 and joint.layer == 1 and not joint.failed
    # the held-out texts' activations replaced by noise: the choice and every inner score are unchanged
    held = torch.tensor(acts.rows(test))
    noisy = {
        layer: x.clone().index_put_((held,), torch.randn(len(held), x.shape[1]) * 50)
        for layer, x in acts.pooled.items()
    }
    again = choose(CorpusActivations(acts.texts, "mean", noisy), train, [0, 1, 2], ["mean_diff", "pca"])
    assert again == two_stage  # exact: the same fits on the same rows
    with pytest.raises(sh.SteerhealError, match="not readout methods"):
        choose(acts, train, [1], ["mean_dif"])
    with pytest.raises(sh.SteerhealError, match="were not read"):
        choose(acts, train, [5], ["mean_diff"])
    with pytest.raises(sh.SteerhealError, match="per-text bases"):
        choose(acts, train, [1], ["subspace"], layer_method=None)


def test_a_method_that_cannot_be_fitted_is_left_out_and_named(planted):
    corpus, acts = planted
    small = corpus.split(0.3, 0)[0].split(0.7, 1)[0]  # 2 positives per concept: logistic's folds need 3
    choice = choose(acts, small, [0, 1, 2], ["mean_diff", "logistic"])
    assert choice.method == "mean_diff" and (choice.layer, "logistic") not in choice.scores
    assert len(choice.failed) == 1 and "logistic" in choice.failed[0]


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_texts():
    generator = torch.Generator().manual_seed(1)

    def draw(n_pos, n_neg):
        return torch.randn(n_pos, generator=generator) + 1.0, torch.randn(n_neg, generator=generator)

    pos, neg = zip(*(draw(5, 150) for _ in range(3)), strict=True)
    low, high = bootstrap_auroc(list(pos), list(neg))
    point = sum(auroc(p, n) for p, n in zip(pos, neg, strict=True)) / 3
    assert low < point < high and low > 0 and high <= 1
    assert bootstrap_auroc(list(pos), list(neg)) == (low, high)  # seeded
    many_pos, many_neg = zip(*(draw(200, 600) for _ in range(3)), strict=True)
    wide_low, wide_high = low, high
    low, high = bootstrap_auroc(list(many_pos), list(many_neg))
    assert high - low < (wide_high - wide_low) / 3  # ~40x the positives: about 1/6 the width, by 1/sqrt(n)
    assert bootstrap_auroc([torch.tensor([2.0, 3.0])], [torch.tensor([0.0, 1.0])]) == (1.0, 1.0)
    with pytest.raises(sh.SteerhealError, match="one \\(pos, neg\\) pair per split"):
        bootstrap_auroc([torch.tensor([1.0])], [])
