"""The safeguarded dose search (slope-guided bracket + Illinois on log c) vs plain bisection on c.

Same model, prompts, target (p95 KL = 1 nat) and tolerance (5%); KL evaluations and wall time, median
of 5 runs each (the search is deterministic, so the evaluation counts do not vary). Run: `just bench-calibrate`.
"""

from __future__ import annotations

import statistics
import time

import torch

import steerheal as sh
from steerheal.toyworld import world
from steerheal.toyworld.load import chat_prompts

REPEATS = 5
POS = ["I love it.", "Joy to all!", "Wonderful day.", "What a delight."]
NEG = ["I hate it.", "Misery to all!", "Awful day.", "What a disgrace."]
QUESTIONS = [
    "Tell me a story.",
    "Describe a garden.",
    "What is rain?",
    "Hello there.",
    "How do boats float?",
    "Name a colour.",
    "What is a kettle?",
    "Where do gulls live?",
]


def cases():
    model, tok = sh.toyworld.load()
    pos, neg = world.contrast_set("joy", 64)
    yield (
        "toyworld (joy, stories@mean)",
        model,
        tok,
        pos,
        neg,
        "mean",
        chat_prompts(tok, world.neutral_prompts(16, 0, "calibration")),
    )
    for arch in ("llama", "gemma3", "gpt2"):
        model, tok = sh.tiny_model(arch)
        prompts = [
            tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in QUESTIONS
        ]
        yield f"tiny {arch}", model, tok, POS, NEG, "last", prompts


def main() -> None:
    torch.set_num_threads(1)
    print(f"target p95 KL = 1.0 nat, tolerance 5%, n_tokens 20, median of {REPEATS}, 1 thread")
    print("| model | method | KL evaluations | median s | c* | time ratio (illinois / bisect) |")
    print("|---|---|---|---|---|---|")
    for name, model, tok, pos, neg, position, prompts in cases():
        results = {}
        for method in ("illinois", "bisect"):
            times, record = [], None
            for _ in range(REPEATS):
                v = sh.Vector.train(model, tok, pos, neg, position=position)
                start = time.perf_counter()
                v.calibrate(model, tok, prompts, 1.0, method=method, liveness_samples=0)
                times.append(time.perf_counter() - start)
                record = v.calibration
            results[method] = (record["n_evals"], statistics.median(times), record["c"])
        ratio = results["illinois"][1] / results["bisect"][1]
        for method, (evals, seconds, c) in results.items():
            print(
                f"| {name} | {method} | {evals} | {seconds:.3f} | {c:.4g} | {ratio:.2f} |"
                if method == "illinois"
                else f"| {name} | {method} | {evals} | {seconds:.3f} | {c:.4g} | |"
            )


if __name__ == "__main__":
    from docs_section import run_into_docs

    run_into_docs("benchmarks.md", "calibrate", "just bench-calibrate", main)
