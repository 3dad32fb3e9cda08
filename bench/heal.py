"""`just bench-heal`: the barrier's memory (bounded vs naive) and a heal step's cost against plain SFT.

Memory: a forward + backward of the reverse-KL barrier (rmse) with vocabulary 262144, batch 4 x (16 prompt +
512 completion) tokens, hidden 64. `bounded` is steerheal's path (gathered completion positions, fused chunks
of 512); `naive` computes full-sequence logits for student and reference and calls `kl_barrier` (the plain
function). One process per variant; peak resident memory read from the OS (VmHWM) minus the resident memory
once the inputs exist (after a small warm-up of both paths, so one-time costs such as the autograd engine's
threads and kernels' code pages count against neither). glibc's mmap threshold is fixed for both processes
(MALLOC_MMAP_THRESHOLD_): its default dynamic threshold keeps freed blocks in a fragmenting heap, and RSS
would then measure the allocator rather than the tensors alive at once. Each process runs under an
address-space limit, so a naive run that would exhaust the machine fails with MemoryError instead of waking
the OOM killer.

Speed: toyworld, batch 8 kept pairs; one optimizer step of heal's loss (SFT + barrier: one extra no-grad
forward for the reference) against one plain SFT step on the same batch, median over repeats.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

VOCAB, HIDDEN, BATCH, PROMPT, COMPLETION, CHUNK = 262_144, 64, 4, 16, 512, 512
LIMIT_BYTES = 16 * 2**30
# glibc raises its mmap threshold after freeing a large block, so later blocks of that size come from the heap,
# which fragments and keeps freed memory resident; a fixed threshold makes RSS follow the live tensors.
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"}
REPEATS = 20


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_variant(variant: str) -> None:
    """Run inside a fresh process: print {"baseline": bytes, "peak": bytes, "ok": bool}."""
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))
    torch.set_num_threads(1)
    from steerheal.training.bounded import HeadParts, completion_positions, gather, per_sequence, token_scores
    from steerheal.training.losses import aggregate_kl, barrier, kl_barrier

    # One-time costs are paid on a small problem before the baseline, by both paths alike: the autograd
    # engine's threads and arenas, and the code pages of every kernel either path uses (VmHWM counts them).
    small = torch.randn(2, 40, HIDDEN, requires_grad=True)
    small_ids, small_mask = torch.randint(0, 1000, (2, 40)), torch.ones(2, 40, dtype=torch.bool)
    small_weight = torch.randn(1000, HIDDEN)
    kl_barrier(small @ small_weight.T, (small.detach() + 1) @ small_weight.T, small_mask, tau=0.0)[0].backward()
    pos = completion_positions(small_ids, small_mask)
    _, kl = token_scores(
        HeadParts(small_weight, None, None), gather(small, pos), pos.targets, gather(small.detach() + 1, pos), "rev", 16
    )
    barrier(aggregate_kl(*per_sequence(kl, pos), "rmse"), 0.0, 1.0)[0].backward()
    g = torch.Generator().manual_seed(0)
    length = PROMPT + COMPLETION
    weight = torch.randn(VOCAB, HIDDEN, generator=g) * 0.05
    hidden = torch.randn(BATCH, length, HIDDEN, generator=g, requires_grad=True)
    ref_hidden = hidden.detach() + 0.1 * torch.randn(BATCH, length, HIDDEN, generator=g)
    ids = torch.randint(0, VOCAB, (BATCH, length), generator=g)
    mask = torch.zeros(BATCH, length, dtype=torch.bool)
    mask[:, PROMPT:] = True
    baseline = _rss("VmRSS")
    ok = True
    try:
        if variant == "bounded":
            positions = completion_positions(ids, mask)
            _, kl = token_scores(
                HeadParts(weight, None, None),
                gather(hidden, positions),
                positions.targets,
                gather(ref_hidden, positions),
                "rev",
                CHUNK,
            )
            penalty, _, _ = barrier(aggregate_kl(*per_sequence(kl, positions), "rmse"), 0.0, 1.0)
        else:
            logits = hidden @ weight.T
            with torch.no_grad():
                ref_logits = ref_hidden @ weight.T
            penalty, _, _ = kl_barrier(logits, ref_logits, mask, "rev", "rmse", 0.0, 1.0)
        penalty.backward()
    except (MemoryError, RuntimeError) as err:
        ok = "memory" in str(err).lower() or isinstance(err, MemoryError)
        if not ok:
            raise
        ok = False
    print(json.dumps({"baseline": baseline, "peak": _rss("VmHWM"), "ok": ok}))


def memory() -> None:
    chunk_logits = CHUNK * VOCAB * 4
    full = BATCH * (PROMPT + COMPLETION) * VOCAB * 4
    print(
        f"vocab {VOCAB}, batch {BATCH} x ({PROMPT} prompt + {COMPLETION} completion) tokens, hidden {HIDDEN}, "
        f"chunk {CHUNK}; one chunk's float32 logits = {chunk_logits / 2**20:.0f} MiB; full-sequence float32 "
        f"logits = {full / 2**30:.2f} GiB; address-space limit {LIMIT_BYTES / 2**30:.0f} GiB"
    )
    print("| path | peak RSS | extra over inputs | extra / one chunk's logits | beyond two chunks | completed |")
    print("|---|---|---|---|---|---|")
    for variant in ("bounded", "naive"):
        env = {**os.environ, **MALLOC}
        out = subprocess.run(
            [sys.executable, __file__, "--memory-variant", variant], capture_output=True, text=True, env=env
        )
        if out.returncode != 0:
            print(f"| {variant} | - | - | - | - | crashed: {out.stderr.strip().splitlines()[-1][:80]} |")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        extra = result["peak"] - result["baseline"]
        print(
            f"| {variant} | {result['peak'] / 2**30:.2f} GiB | {extra / 2**30:.2f} GiB | {extra / chunk_logits:.3f} | "
            f"{(extra - 2 * chunk_logits) / 2**20:+.1f} MiB | "
            f"{'yes' if result['ok'] else 'no: MemoryError under the limit'} |"
        )


def speed() -> None:
    import steerheal as sh
    from steerheal.toyworld import world
    from steerheal.toyworld.load import chat_prompts
    from steerheal.training.bounded import completion_positions, final_hidden, gather, head_parts, token_scores
    from steerheal.training.heal import HealConfig, _batch, _Example, _Round

    torch.set_num_threads(1)
    model, tok = sh.toyworld.load()
    pos, neg = world.contrast_set("joy", 64)
    v = sh.Vector.train(model, tok, pos, neg, position="mean")
    v.calibrate(model, tok, chat_prompts(tok, world.neutral_prompts(16, 0, "calibration")), 1.0, liveness_samples=0)
    pairs = [
        p for p in sh.make_pairs(model, tok, v, chat_prompts(tok, world.neutral_prompts(16, 0, "train"))) if p.kept
    ]
    examples = [_Example(tuple(p.prompt_ids), tuple(p.chosen_ids), tuple(p.rejected_ids)) for p in pairs[:8]]
    adapter = sh.GatedLoRA.attach(model, r=8, alpha=16)
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    step_loss = _Round(model, adapter, HealConfig(pref="none", lam=0.3, tau=0.0))
    head = head_parts(model)
    batch, mask = _batch([e.prompt for e in examples], [e.chosen for e in examples])
    positions = completion_positions(batch.input_ids, mask)

    def heal_step() -> None:
        step_loss.parts(examples)["loss"].backward()  # type: ignore[union-attr]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sft_step() -> None:
        lp, _ = token_scores(head, gather(final_hidden(model, batch), positions), positions.targets)
        (-lp.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"sft": [], "heal": []}
    for _ in range(3):  # warm-up
        sft_step()
        heal_step()
    for _ in range(REPEATS):  # interleaved, so drift in machine load hits both alike
        for name, fn in (("sft", sft_step), ("heal", heal_step)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    sft, heal = statistics.median(times["sft"]), statistics.median(times["heal"])
    print(
        f"toyworld, batch {len(examples)} pairs ({int(positions.counts.sum())} completion tokens), "
        f"LoRA r=8, 1 thread, median of {REPEATS} interleaved steps"
    )
    print("| step | median ms | ratio to SFT |")
    print("|---|---|---|")
    print(f"| plain SFT (forward + backward + AdamW) | {sft * 1e3:.1f} | 1.00 |")
    label = "heal: SFT + reverse-KL barrier (+ one no-grad reference forward)"
    print(f"| {label} | {heal * 1e3:.1f} | {heal / sft:.2f} |")


def main() -> None:
    print("### Memory of the barrier's forward + backward\n")
    memory()
    print("\n### A heal step against a plain SFT step\n")
    speed()


if __name__ == "__main__":
    if "--memory-variant" in sys.argv:
        memory_variant(sys.argv[sys.argv.index("--memory-variant") + 1])
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import run_into_docs

        run_into_docs("benchmarks.md", "heal", "just bench-heal", main)
