"""Vector.train vs steering-vectors' train_steering_vector: same tiny model, texts and layers.

64 contrast pairs, 4 layers (all blocks of the default tiny llama), mean_diff at the last token. Median
of 5 timed runs each after one warm-up, one torch thread. steering-vectors is timed at its default batch
size (1) and at steerheal's (8), so the ratio is not just batching. Run: `just bench-extract`.

`--smollm2` (`just bench-extract-smollm2`): the same on SmolLM2-135M-Instruct (30 blocks, d576) at the layers
`Vector.train` reads by default (the middle third, 10-19), median of 3, into the section `extract-smollm2`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

import steerheal as sh

REPEATS = 5
SUBJECTS = [
    "the garden",
    "the kitchen",
    "the harbour",
    "the office",
    "the library",
    "the station",
    "the hill",
    "the market",
]
FEELINGS = [
    ("I love", "I dread"),
    ("What a joy to see", "What a misery to see"),
    ("My heart sings at", "My heart sinks at"),
    ("I am delighted by", "I am disgusted by"),
    ("How wonderful is", "How awful is"),
    ("I smile whenever I think of", "I wince whenever I think of"),
    ("Nothing pleases me more than", "Nothing upsets me more than"),
    ("I feel warm and glad about", "I feel cold and sad about"),
]


def pairs() -> list[tuple[str, str]]:
    out = [(f"{p} {s}.", f"{n} {s}.") for p, n in FEELINGS for s in SUBJECTS]
    assert len(out) == 64
    return out


def median_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from steering_vectors import train_steering_vector

    torch.set_num_threads(1)
    model, tok = sh.tiny_model("llama")
    data = pairs()
    pos, neg = [p for p, _ in data], [n for _, n in data]
    layers = [0, 1, 2, 3]
    ours = median_seconds(lambda: sh.Vector.train(model, tok, pos, neg, layers=layers, batch_size=8))
    theirs_1 = median_seconds(lambda: train_steering_vector(model, tok, data, layers=layers, read_token_index=-1))
    theirs_8 = median_seconds(
        lambda: train_steering_vector(model, tok, data, layers=layers, read_token_index=-1, batch_size=8)
    )
    v = sh.Vector.train(model, tok, pos, neg, layers=layers)
    sv = train_steering_vector(model, tok, data, layers=layers, read_token_index=-1)
    cosine = min(
        float(torch.nn.functional.cosine_similarity(sv.layer_activations[layer], v.directions[layer], dim=0))
        for layer in layers
    )
    print(f"tiny llama (4 blocks, d64), 64 pairs, layers {layers}, median of {REPEATS}, 1 thread")
    print("| extractor | batch | median s | ratio steerheal / it |")
    print("|---|---|---|---|")
    print(f"| steerheal Vector.train | 8 | {ours:.4f} | 1.00 |")
    print(f"| steering-vectors train_steering_vector | 1 (its default) | {theirs_1:.4f} | {ours / theirs_1:.2f} |")
    print(f"| steering-vectors train_steering_vector | 8 | {theirs_8:.4f} | {ours / theirs_8:.2f} |")
    print(f"min per-layer cosine between the two vectors: {cosine:.6f}")


def main_smollm2() -> None:
    from steering_vectors import train_steering_vector

    from steerheal.read.vector import default_layers

    torch.set_num_threads(1)
    repeats = 3
    load_before = os.getloadavg()[0]
    model, tok = sh.load_model("smollm2-135m-instruct")
    data = pairs()
    pos, neg = [p for p, _ in data], [n for _, n in data]
    layers = default_layers(model)
    ours = median_seconds(lambda: sh.Vector.train(model, tok, pos, neg, layers=layers, batch_size=8), repeats)
    theirs_1 = median_seconds(
        lambda: train_steering_vector(model, tok, data, layers=layers, read_token_index=-1, show_progress=False),
        repeats,
    )
    theirs_8 = median_seconds(
        lambda: train_steering_vector(
            model, tok, data, layers=layers, read_token_index=-1, batch_size=8, show_progress=False
        ),
        repeats,
    )
    v = sh.Vector.train(model, tok, pos, neg, layers=layers)
    sv = train_steering_vector(model, tok, data, layers=layers, read_token_index=-1, show_progress=False)
    cosine = min(
        float(torch.nn.functional.cosine_similarity(sv.layer_activations[layer], v.directions[layer], dim=0))
        for layer in layers
    )
    print(
        f"SmolLM2-135M-Instruct (30 blocks, d576, float32), 64 pairs, layers {layers[0]}-{layers[-1]} (Vector.train's "
        f"default), median of {repeats}, 1 thread; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (2 cores, shared)"
    )
    print("| extractor | batch | median s | ratio steerheal / it |")
    print("|---|---|---|---|")
    print(f"| steerheal Vector.train | 8 | {ours:.3f} | 1.00 |")
    print(f"| steering-vectors train_steering_vector | 1 (its default) | {theirs_1:.3f} | {ours / theirs_1:.2f} |")
    print(f"| steering-vectors train_steering_vector | 8 | {theirs_8:.3f} | {ours / theirs_8:.2f} |")
    print(f"min per-layer cosine between the two vectors: {cosine:.6f}")


if __name__ == "__main__":
    from docs_section import run_into_docs

    if "--smollm2" in sys.argv:
        run_into_docs("benchmarks.md", "extract-smollm2", "just bench-extract-smollm2", main_smollm2)
    else:
        run_into_docs("benchmarks.md", "extract", "just bench-extract", main)
