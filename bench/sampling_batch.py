"""`just bench-sampling-batch`: sampling on SmolLM2-135M-Instruct at several batch sizes, 2 torch threads.

64 of the shipped neutral prompts, chat-templated, 48 new tokens at temperature 1 (the smollm2 preset's sampling and
its held-out set's size), at batch 16 (the preset's old value), 32 and 64 (its value now); the batch sizes
interleaved, median of 3 each, and the sampled ids compared with batch 16's (`lm.generate.sample` seeds each prompt
by its index, so the batch must not change what is sampled). Writes docs/benchmarks.md section `sampling-batch`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPEATS = 3
BATCHES = (16, 32, 64)
THREADS = 2


def main() -> None:
    import steerheal as sh
    from steerheal.loop.concept_parts import shipped_prompts, templated

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    model, tok = sh.load_model("smollm2-135m-instruct")
    prompts = templated(tok, shipped_prompts()[-64:])
    times: dict[int, list[float]] = {b: [] for b in BATCHES}
    ids: dict[int, list[list[int]]] = {}
    for _ in range(REPEATS):
        for batch in BATCHES:
            start = time.perf_counter()
            ids[batch] = sh.sample(model, tok, prompts, seed=0, max_new_tokens=48, batch_size=batch)
            times[batch].append(time.perf_counter() - start)
    tokens = sum(len(c) for c in ids[BATCHES[0]])
    first = statistics.median(times[BATCHES[0]])
    print(
        f"SmolLM2-135M-Instruct, {len(prompts)} prompts x up to 48 new tokens ({tokens} sampled), {THREADS} torch "
        f"threads, median of {REPEATS} interleaved; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
        "after (2 cores)"
    )
    print()
    print(f"| batch | median s | tokens per s | ratio to batch {BATCHES[0]} | ids equal batch {BATCHES[0]}'s |")
    print("|---|---|---|---|---|")
    for batch in BATCHES:
        median = statistics.median(times[batch])
        same = "yes" if ids[batch] == ids[BATCHES[0]] else "NO"
        print(f"| {batch} | {median:.1f} | {tokens / median:.0f} | {median / first:.2f} | {same} |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from docs_section import run_into_docs

    run_into_docs("benchmarks.md", "sampling-batch", "just bench-sampling-batch", main)
