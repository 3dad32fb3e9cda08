"""`just bench-readout`: a Readout's one shared pass against K separate extractions, and the monitor's cost.

1. Readout over K concepts (K = 8 and 24: the first K concepts of corpus/emotions, sorted by name;
   `corpus.subset` drops the other concepts' texts, the baselines and neutral pool stay) on the tiny llama
   (4 blocks, d64, the BPE tokenizer of steerheal/data), layers [1, 2], mean_diff read at the last token.
   Against it: K separate `steering_vectors.train_steering_vector` calls on the same model, texts and
   layers (read_token_index=-1, batch size 8 like steerheal's). steering-vectors reads pairs; concept c's
   pairs are k < max(P, N): (positive k mod P, negative k mod N) over its P positives and N negatives in
   corpus order, so every positive and every negative is read. Also K separate `Vector.train` calls
   (steerheal without the shared pass) to separate de-duplication from the rest. Medians of 3 timed runs
   after a warm-up (1 run for the slow steering-vectors side at K = 24), one torch thread.
2. Monitor overhead on the toyworld model: batch 8, 64 new tokens (min_new_tokens = max_new_tokens),
   greedy `model.generate` with the KV cache, with and without `readout.monitor` (4 moods, layers [1, 2]);
   also steerheal's `sample`. Tokens/s = 8 · 64 / median seconds of 5, interleaved.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import steerheal as sh

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus" / "emotions"
LAYERS = [1, 2]


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def round_robin_pairs(corpus: sh.Corpus, concept: str) -> list[tuple[str, str]]:
    pos, neg = corpus.positives(concept), corpus.negatives(concept)
    return [(pos[k % len(pos)], neg[k % len(neg)]) for k in range(max(len(pos), len(neg)))]


def readout_main() -> None:
    from steering_vectors import train_steering_vector

    torch.set_num_threads(1)
    if not CORPUS.is_dir():
        raise SystemExit(f"{CORPUS} is missing; the benchmark reads the shipped emotions corpus")
    full = sh.Corpus.load(CORPUS)
    model, tok = sh.tiny_model("llama")
    print(
        f"tiny llama (4 blocks, d64), layers {LAYERS}, mean_diff at the last token, batch 8, 1 thread; "
        f"corpus/emotions ({len(full.concepts)} concepts), first K concepts by name"
    )
    print(
        "| K | texts (unique) | texts steering-vectors reads | Readout.train s | K x Vector.train s "
        "| K x train_steering_vector s | speed-up vs steering-vectors | target 0.8·K | min cosine |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k in (8, 24):
        if len(full.concepts) < k:
            raise SystemExit(f"corpus/emotions has {len(full.concepts)} concepts, fewer than K = {k}")
        corpus = full.subset(list(full.concepts[:k]))
        pairs = {c: round_robin_pairs(corpus, c) for c in corpus.concepts}

        def ours(corpus=corpus):
            return sh.Readout.train(model, tok, corpus, layers=LAYERS, position="last")

        def separate(corpus=corpus):
            for c in corpus.concepts:
                sh.Vector.train(model, tok, corpus.positives(c), corpus.negatives(c), layers=LAYERS)

        def theirs(pairs=pairs):
            return {
                c: train_steering_vector(model, tok, p, layers=LAYERS, read_token_index=-1, batch_size=8)
                for c, p in pairs.items()
            }

        t_ours = timed(ours, 3)
        t_separate = timed(separate, 3)
        t_theirs = timed(theirs, 3 if k <= 8 else 1)
        ro, svs = ours(), theirs()
        cosine = min(
            float(
                torch.nn.functional.cosine_similarity(svs[c].layer_activations[layer], ro[c].directions[layer], dim=0)
            )
            for c in corpus.concepts
            for layer in LAYERS
        )
        n_theirs = sum(2 * len(p) for p in pairs.values())
        print(
            f"| {k} | {len(corpus.texts)} | {n_theirs} | {t_ours:.3f} | {t_separate:.3f} | {t_theirs:.3f} "
            f"| {t_theirs / t_ours:.1f}x | {0.8 * k:.1f}x | {cosine:.4f} |"
        )
    print(
        "\nmin cosine: steerheal's mean_diff row against steering-vectors' vector, over concepts and layers "
        "(the two are equal when N is a multiple of P: the round-robin pairs then weigh every positive equally)."
    )


def monitor_main() -> None:
    torch.set_num_threads(1)
    from steerheal.toyworld import world
    from steerheal.toyworld.load import chat_prompts

    model, tok = sh.toyworld.load()
    with tempfile.TemporaryDirectory() as d:
        ro = sh.Readout.train(model, tok, sh.Corpus.load(world.write_corpus(d)))
    prompts = chat_prompts(tok, world.neutral_prompts(8, seed=0))
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    new = 64

    def plain():
        model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)

    def monitored():
        with ro.monitor(model):
            plain()

    def sample_plain():
        return sh.sample(model, tok, prompts, seed=0, max_new_tokens=new, batch_size=8)

    def sample_monitored():
        with ro.monitor(model):
            sample_plain()

    times: dict[str, list[float]] = {name: [] for name in ("plain", "monitored", "sample", "sample_monitored")}
    fns = {"plain": plain, "monitored": monitored, "sample": sample_plain, "sample_monitored": sample_monitored}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(5):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    sampled = sum(len(ids) for ids in sample_plain())  # seeded: the same tokens with and without the monitor
    tokens = {"plain": 8 * new, "monitored": 8 * new, "sample": sampled, "sample_monitored": sampled}
    rate = {name: tokens[name] / statistics.median(t) for name, t in times.items()}
    print(f"toyworld LM, batch 8, {new} new tokens, readout of {len(ro)} moods at layers {ro.layers}, 1 thread")
    print("| generation | tokens/s without monitor | tokens/s with monitor | ratio (target >= 0.9) |")
    print("|---|---|---|---|")
    print(
        f"| model.generate (greedy, KV cache) | {rate['plain']:.0f} | {rate['monitored']:.0f} "
        f"| {rate['monitored'] / rate['plain']:.3f} |"
    )
    print(
        f"| steerheal.sample (temperature 1) | {rate['sample']:.0f} | {rate['sample_monitored']:.0f} "
        f"| {rate['sample_monitored'] / rate['sample']:.3f} |"
    )
    print(f"(steerheal.sample stops a row at its end-of-story token: {sampled} tokens sampled in all)")


if __name__ == "__main__":
    from docs_section import run_into_docs

    if "--monitor-only" not in sys.argv:
        run_into_docs("benchmarks.md", "readout", "just bench-readout", readout_main)
    run_into_docs("benchmarks.md", "monitor", "just bench-readout", monitor_main)
