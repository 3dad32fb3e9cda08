"""`just bench-sampling-gqa`: sampling on SmolLM2-135M-Instruct (grouped-query attention, 9 query heads on 3
key/value heads) with transformers' `repeat_kv` against SDPA's `enable_gqa` (lm/attention.py).

16 of the shipped neutral prompts, chat-templated, 48 new tokens at temperature 1 (the smollm2 preset's sampling),
batch 16, 1 torch thread; the two paths interleaved, median of 3 each, and the sampled ids compared.
Writes docs/benchmarks.md section `gqa-sampling`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPEATS = 3


def main() -> None:
    import steerheal as sh
    import steerheal.lm.attention as attention
    from steerheal.loop.concept_parts import shipped_prompts, templated

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    model, tok = sh.load_model("smollm2-135m-instruct")
    prompts = templated(tok, shipped_prompts()[100:116])
    times: dict[bool, list[float]] = {False: [], True: []}
    ids: dict[bool, list[list[int]]] = {}
    for _ in range(REPEATS):
        for gqa in (False, True):
            attention._GQA = gqa  # False: transformers' sdpa_attention_forward, repeat_kv included
            start = time.perf_counter()
            ids[gqa] = sh.sample(model, tok, prompts, seed=0, max_new_tokens=48, batch_size=16)
            times[gqa].append(time.perf_counter() - start)
    attention._GQA = True
    tokens = sum(len(c) for c in ids[True])
    plain, grouped = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"SmolLM2-135M-Instruct, 16 prompts x up to 48 new tokens ({tokens} sampled), batch 16, 1 thread, median of "
        f"{REPEATS} interleaved; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 shared cores)"
    )
    print("| attention | median s | ratio |")
    print("|---|---|---|")
    print(f"| transformers' sdpa (repeat_kv copies keys and values 3x) | {plain:.1f} | 1.00 |")
    print(f"| steerheal_sdpa without grad (enable_gqa) | {grouped:.1f} | {grouped / plain:.2f} |")
    print(f"sampled ids identical: {'yes' if ids[True] == ids[False] else 'NO'}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from docs_section import run_into_docs

    run_into_docs("benchmarks.md", "gqa-sampling", "just bench-sampling-gqa", main)
