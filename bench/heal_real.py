"""`just bench-heal-real`: a heal step on SmolLM2-135M-Instruct, and the barrier's memory on Gemma-3-270M's head.

Speed (section `heal-smollm2`): 8 kept pairs made by `make_pairs` on SmolLM2 (builtin joyful/gloomy persona,
calibrated to 1 nat p95, alpha 1, the smollm2 preset's filters and sampling), LoRA r=8 (the preset's adapter).
One optimizer step on the 8 pairs as one micro-batch: plain SFT (forward, backward, AdamW) against heal's
SFT + reverse-KL barrier (one extra no-grad reference forward), and the preset's full step (+ ORPO: a forward
of the rejected side too). Steps interleaved, median over repeats, 1 torch thread. Then the same preset step
with `torch.set_flush_denormal(True)` interleaved with it off, and how far one step's gradient moves when
denormals are flushed (the lead: "4 heal steps took 125 s instead of 202 s on a busy machine").

Memory (section `heal-gemma-memory`): bench/heal.py's measurement with Gemma-3-270M's own LM head (262,144 x
640, tied to the embedding) and its final hidden states on real text instead of a synthetic hidden-64 head:
the barrier's forward + backward, bounded (steerheal's fused chunks) against naive (full-sequence logits and
`kl_barrier`), each in a fresh process, peak RSS over the RSS once the model and inputs exist.
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

from heal import MALLOC, _rss  # bench/heal.py: glibc's fixed mmap threshold and the OS's RSS figures

BATCH, LENGTH, PROMPT, CHUNK = 2, 512, 16, 512
LIMIT_BYTES = 14 * 2**30
REPEATS = 5


def memory_variant(variant: str) -> None:
    """Inside a fresh process: print {"baseline", "peak", "ok", "vocab", "hidden"}."""
    torch.set_num_threads(1)
    import steerheal as sh
    from steerheal.lm.texts import Batch
    from steerheal.training.bounded import (
        HeadParts,
        completion_positions,
        final_hidden,
        gather,
        head_parts,
        per_sequence,
        token_scores,
    )
    from steerheal.training.losses import aggregate_kl, barrier, kl_barrier

    model, tok = sh.load_model("gemma-3-270m")
    parts = head_parts(model)
    # frozen, as under heal (only the adapter trains): no [vocab, hidden] weight gradient on either path
    head = HeadParts(parts.weight.detach(), None if parts.bias is None else parts.bias.detach(), parts.cap)
    data = Path(sh.__file__).parent / "data"
    text = (data / "neutral_prompts.txt").read_text() + (data / "tiny_corpus.txt").read_text()
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"][: BATCH * LENGTH]).view(BATCH, LENGTH)
    ones = torch.ones_like(ids)
    positions_ids = torch.arange(LENGTH).expand(BATCH, LENGTH).contiguous()
    batch = Batch(ids, ones, positions_ids, ones.bool(), torch.full((BATCH,), PROMPT - 1))
    with torch.no_grad():
        states = final_hidden(model, batch)
    hidden = states.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    ref_hidden = states + 0.05 * states.std() * torch.randn(states.shape, generator=g)
    mask = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    mask[:, PROMPT:] = True
    weight = head.weight.detach()
    # one-time costs (autograd engine, kernels' code pages) paid on a small problem by both paths alike
    small = hidden[:, :24].detach().clone().requires_grad_(True)
    small_logits = small @ weight[:1000].T
    kl_barrier(small_logits, small_logits.detach() + 0.1, mask[:, :24], tau=0.0)[0].backward()
    pos = completion_positions(ids[:, :24], mask[:, :24])
    _, kl = token_scores(head, gather(small, pos), pos.targets, gather(small.detach() + 0.01, pos), "rev", 16)
    barrier(aggregate_kl(*per_sequence(kl, pos), "rmse"), 0.0, 1.0)[0].backward()
    del model  # the head's weight stays (tied embedding, held by `head`); the rest of the model is freed
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))
    baseline = _rss("VmRSS")
    ok = True
    try:
        if variant == "bounded":
            positions = completion_positions(ids, mask)
            _, kl = token_scores(
                head, gather(hidden, positions), positions.targets, gather(ref_hidden, positions), "rev", CHUNK
            )
            penalty, _, _ = barrier(aggregate_kl(*per_sequence(kl, positions), "rmse"), 0.0, 1.0)
        else:
            logits = hidden @ weight.T
            with torch.no_grad():
                ref_logits = ref_hidden @ weight.T
            if head.cap:
                logits = head.cap * torch.tanh(logits / head.cap)
                ref_logits = head.cap * torch.tanh(ref_logits / head.cap)
            penalty, _, _ = kl_barrier(logits, ref_logits, mask, "rev", "rmse", 0.0, 1.0)
        penalty.backward()
    except (MemoryError, RuntimeError) as err:
        if not (isinstance(err, MemoryError) or "memory" in str(err).lower()):
            raise
        ok = False
    info = {"baseline": baseline, "peak": _rss("VmHWM"), "ok": ok, "vocab": weight.shape[0], "hidden": weight.shape[1]}
    print(json.dumps({**info, "cap": head.cap}))


def memory() -> None:
    rows, info = [], {}
    load = os.getloadavg()[0]
    for variant in ("bounded", "naive"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-variant", variant],
            capture_output=True,
            text=True,
            env={**os.environ, **MALLOC},
        )
        if out.returncode != 0:
            rows.append(f"| {variant} | - | - | - | - | crashed: {out.stderr.strip().splitlines()[-1][:80]} |")
            continue
        info = json.loads(out.stdout.strip().splitlines()[-1])
        chunk_logits = CHUNK * info["vocab"] * 4
        extra = info["peak"] - info["baseline"]
        rows.append(
            f"| {variant} | {info['peak'] / 2**30:.2f} GiB | {extra / 2**30:.2f} GiB | {extra / chunk_logits:.3f} | "
            f"{(extra - 2 * chunk_logits) / 2**20:+.1f} MiB | "
            f"{'yes' if info['ok'] else 'no: MemoryError under the limit'} |"
        )
    vocab, hidden = info.get("vocab", 262144), info.get("hidden", "?")
    full = BATCH * LENGTH * vocab * 4
    print(
        f"Gemma-3-270M's LM head (vocab {vocab}, hidden {hidden}, soft cap {info.get('cap')}), its final hidden states "
        f"of real text; batch {BATCH} x ({PROMPT} prompt + {LENGTH - PROMPT} completion) tokens, chunk {CHUNK}; one "
        f"chunk's float32 logits = {CHUNK * vocab * 4 / 2**20:.0f} MiB; full-sequence float32 logits = "
        f"{full / 2**30:.2f} GiB; address-space limit {LIMIT_BYTES / 2**30:.0f} GiB; 1 thread, load average {load:.1f}"
    )
    print(
        "| path | peak RSS | extra over model + inputs | extra / one chunk's logits | beyond two chunks | completed |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


def _setup() -> tuple:
    import steerheal as sh
    from smollm2_teacher import calibrated_teacher
    from steerheal.training.heal import _Example

    config, model, tok, concept, v = calibrated_teacher()
    pairs = sh.make_pairs(model, tok, v, concept.train_prompts(0)[:16], 1.0, 0, config.sampling, config.filters)
    kept = [p for p in pairs if p.kept][:8]
    examples = [_Example(tuple(p.prompt_ids), tuple(p.chosen_ids), tuple(p.rejected_ids)) for p in kept]
    return model, tok, config, examples


def speed() -> None:
    import steerheal as sh
    from steerheal.training.bounded import completion_positions, final_hidden, gather, head_parts, token_scores
    from steerheal.training.heal import HealConfig, _batch, _Round

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    model, _, config, examples = _setup()
    adapter = sh.GatedLoRA.attach(model, r=config.adapter.r, alpha=config.adapter.alpha, seed=0)
    params = adapter.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    barrier_only = _Round(model, adapter, HealConfig(pref="none", lam=1.0, tau=0.0))
    preset = _Round(model, adapter, config.heal)
    head = head_parts(model)
    batch, mask = _batch([e.prompt for e in examples], [e.chosen for e in examples])
    positions = completion_positions(batch.input_ids, mask)

    def step(loss_of) -> None:
        loss_of().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = {
        "sft": lambda: step(
            lambda: -token_scores(head, gather(final_hidden(model, batch), positions), positions.targets)[0].mean()
        ),
        "barrier": lambda: step(lambda: barrier_only.parts(examples)["loss"]),
        "preset": lambda: step(lambda: preset.parts(examples)["loss"]),
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(REPEATS):  # interleaved, so drift in the machine's load hits every step alike
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"SmolLM2-135M-Instruct, batch {len(examples)} pairs ({int(positions.counts.sum())} chosen completion tokens) "
        f"as one micro-batch, LoRA r={config.adapter.r}, 1 thread, median of {REPEATS} interleaved steps; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores, shared)"
    )
    print("| step | median s | ratio to SFT |")
    print("|---|---|---|")
    print(f"| plain SFT (forward + backward + AdamW) | {med['sft']:.2f} | 1.00 |")
    print(
        f"| heal: SFT + reverse-KL barrier (+ one no-grad reference forward) | {med['barrier']:.2f} | "
        f"{med['barrier'] / med['sft']:.2f} |"
    )
    print(
        f"| the preset's step: SFT + ORPO (+ the rejected side's forward) + barrier | {med['preset']:.2f} | "
        f"{med['preset'] / med['sft']:.2f} |"
    )

    # flush denormals: the same preset step, interleaved off / on, and one step's gradient under each
    flush: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(REPEATS):
        for on in (False, True):
            torch.set_flush_denormal(on)
            start = time.perf_counter()
            steps["preset"]()
            flush[on].append(time.perf_counter() - start)
    grads = {}
    for on in (False, True):
        torch.set_flush_denormal(on)
        preset.parts(examples)["loss"].backward()
        grads[on] = torch.cat([p.grad.flatten() for p in params])
        optimizer.zero_grad(set_to_none=True)
    torch.set_flush_denormal(False)
    off_s, on_s = statistics.median(flush[False]), statistics.median(flush[True])
    diff = float((grads[True] - grads[False]).abs().max())
    scale = float(grads[False].abs().max())
    print()
    print("| the preset's step | median s | ratio |")
    print("|---|---|---|")
    print(f"| denormals kept (default) | {off_s:.2f} | 1.00 |")
    print(f"| torch.set_flush_denormal(True) | {on_s:.2f} | {on_s / off_s:.2f} |")
    print(
        f"one step's gradient, flushed vs kept: max |difference| {diff:.3g} (largest gradient entry {scale:.3g}; "
        f"{'bit for bit the same' if diff == 0 else 'not identical'})"
    )


if __name__ == "__main__":
    if "--memory-variant" in sys.argv:
        memory_variant(sys.argv[sys.argv.index("--memory-variant") + 1])
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import run_into_docs

        if "--memory" not in sys.argv:
            run_into_docs("benchmarks.md", "heal-smollm2", "just bench-heal-real", speed)
        if "--speed" not in sys.argv:
            run_into_docs("benchmarks.md", "heal-gemma-memory", "just bench-heal-real", memory)
