"""GatedLoRA: forward cost of the gated student against its baked model, and the exactness figures.

Timing (docs/benchmarks.md): toyworld's LM, LoRA r=8 on every linear layer of the 20-80% depth band,
with 1, 4 and 8 folded rounds (seeded random factors, as if trained) plus the fresh current round that
a heal round would train. Each student is timed uncollapsed, after `collapse_history("cat")` and after
`collapse_history("svd", rank=8)`, and against the dense baked model; forward of one batch (8 x 48
tokens) under no_grad, one torch thread, median of 5 samples of 10 forwards each, after a warm-up.

Exactness (docs/adapter.md): max |Δlogit| of export_peft (loaded by plain peft) and of bake against the
in-memory student on tiny llama, qwen3, gemma3, gpt2, toyworld, and on a 4-bit tiny qwen3; beside it,
peft's own merge_and_unload on the 4-bit base (which re-quantises).
Run: `just bench-adapter` (add --no-write to print only).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import steerheal as sh
from steerheal.adapter.gated import GatedLoRA

REPEATS = 5
FORWARDS = 10
ROUNDS = (1, 4, 8)
RANK = 8


def _randomise(adapter: GatedLoRA, seed: int, scale: float = 0.04) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _seconds(model, ids) -> float:
    with torch.no_grad():
        model(ids)  # warm-up
        samples = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            for _ in range(FORWARDS):
                model(ids)
            samples.append((time.perf_counter() - start) / FORWARDS)
    return statistics.median(samples)


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def timing() -> None:
    torch.set_num_threads(1)
    base, _ = sh.toyworld.load()
    vocab = sh.fingerprint(base).vocab_size
    ids = torch.randint(3, vocab, (8, 48), generator=torch.Generator().manual_seed(0))
    rows = []
    baked_s = None
    for n in ROUNDS:
        model = copy.deepcopy(base)
        adapter = GatedLoRA.attach(model, r=RANK)
        for k in range(n):
            _randomise(adapter, k)
            adapter.fold()
        if baked_s is None:
            baked_s = _seconds(adapter.bake(), ids)
        student = _logits(model, ids)
        rows.append((n, "uncollapsed", n * RANK, _seconds(model, ids), None))
        adapter.collapse_history("cat")
        drift = float((_logits(model, ids) - student).abs().max())
        rows.append((n, "cat", adapter.history[0].rank, _seconds(model, ids), f"max Δlogit {drift:.1e}"))
        report = adapter.collapse_history("svd", rank=RANK)
        drift = float((_logits(model, ids) - student).abs().max())
        note = f"rel. error {report['relative_error']:.3f}, max Δlogit {drift:.2f}"
        rows.append((n, f"svd to r={RANK}", RANK, _seconds(model, ids), note))
    print(
        f"toyworld LM (4 blocks, d128), LoRA r={RANK} on the 14 linear layers of blocks 1-2, batch 8 x 48 tokens, "
        f"no_grad, 1 thread, median of {REPEATS} x {FORWARDS} forwards; every student also runs its fresh current "
        "round (rank 8, B = 0)"
    )
    print()
    print("| folded rounds | history | history rank | ms / forward | ratio to baked | collapse |")
    print("|---|---|---|---|---|---|")
    for n, kind, rank, seconds, note in rows:
        print(f"| {n} | {kind} | {rank} | {seconds * 1e3:.2f} | {seconds / baked_s:.2f} | {note or ''} |")
    print(f"| - | baked (dense, no adapters) | - | {baked_s * 1e3:.2f} | 1.00 | |")


def _two_rounds(model) -> GatedLoRA:
    adapter = GatedLoRA.attach(model, r=4)
    _randomise(adapter, 1)
    adapter.fold()
    _randomise(adapter, 2)
    return adapter


def exactness() -> None:
    from peft import PeftModel

    torch.set_num_threads(1)
    print("max |Δlogit| against the in-memory student (two rounds of r=4 with random factors, gates 1)")
    print()
    print("| model | max abs logit | student moved the base by | export_peft (plain peft) | bake float32 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("llama", "qwen3", "gemma3", "gpt2", "toyworld"):
            model, _ = sh.toyworld.load() if arch == "toyworld" else sh.tiny_model(arch)
            pristine = copy.deepcopy(model)
            ids = torch.randint(
                3, sh.fingerprint(model).vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
            )
            base = _logits(model, ids)
            adapter = _two_rounds(model)
            student = _logits(model, ids)
            adapter.export_peft(Path(tmp) / arch)
            plain = PeftModel.from_pretrained(pristine, Path(tmp) / arch)
            export = float((_logits(plain, ids) - student).abs().max())
            bake = float((_logits(adapter.bake(), ids) - student).abs().max())
            moved = float((student - base).abs().max())
            scale = float(student.abs().max())
            row = f"| tiny {arch} | {scale:.1f} | {moved:.2f} | {export:.1e} | {bake:.1e} |"
            print(row.replace("tiny toyworld", "toyworld"))

        original, tok = sh.tiny_model("qwen3")
        original.save_pretrained(Path(tmp) / "q")
        tok.save_pretrained(Path(tmp) / "q")
        model, _ = sh.load_model(Path(tmp) / "q", quant="4bit")
        ids = torch.randint(3, sh.fingerprint(model).vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
        base = _logits(model, ids)
        adapter = _two_rounds(model)
        student = _logits(model, ids)
        bake = float((_logits(adapter.bake(), ids) - student).abs().max())
        bf16 = adapter.bake(dtype=torch.bfloat16)
        bf16_err = float((_logits(bf16, ids).float() - student).abs().max())
        bf16_rel = adapter.last_bake_report["relative_error_of_delta"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = float((_logits(adapter.peft_model.merge_and_unload(), ids) - student).abs().max())
        print()
        moved = float((student - base).abs().max())
        print(f"4-bit (nf4, double quantisation) tiny qwen3; the student moved the base by {moved:.2f}:")
        print()
        print("| merge | max abs Δlogit vs the 4-bit student |")
        print("|---|---|")
        print(f"| steerheal bake, float32 | {bake:.1e} |")
        print(f"| steerheal bake, bfloat16 (delta rounding {bf16_rel:.3f} of its norm) | {bf16_err:.2f} |")
        print(f"| peft merge_and_unload (re-quantises to 4-bit) | {merged:.2f} |")


if __name__ == "__main__":
    from docs_section import run_into_docs

    run_into_docs("benchmarks.md", "adapter", "just bench-adapter", timing)
    run_into_docs("adapter.md", "adapter-exactness", "just bench-adapter", exactness)
