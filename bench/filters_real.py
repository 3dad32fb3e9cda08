"""The coherence filters on a real chat model: pairs kept at alpha 1, babble dropped, lengths after the cut.

On SmolLM2-135M-Instruct with the builtin joyful/gloomy persona (calibrated to 1 nat p95, the smollm2
preset's filters): the share of pairs kept at alpha = 1 with unfinished completions cut at their last sentence
end, against dropping them (the wave-1 default); the share of a fixed set of babble the filters drop: steered
completions at alpha = 3, and the unsteered completions with their words shuffled; the chosen and rejected
lengths after the cut (a length gap biases DPO's summed log-probs and length-sensitive judges). Writes the
section `filters-real` of docs/loop.md.
"""

from __future__ import annotations

import random
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

import steerheal as sh
from smollm2_teacher import calibrated_teacher
from steerheal.dose.pairs import completion_checks

N_PROMPTS = 32


def main() -> None:
    torch.set_num_threads(1)
    config, model, tok, concept, v = calibrated_teacher()
    prompts = concept.train_prompts(0)[:N_PROMPTS]
    sampling = config.sampling
    make = sh.make_pairs(model, tok, v, prompts, 1.0, 0, sampling, config.filters)
    dropped = sh.make_pairs(model, tok, v, prompts, 1.0, 0, sampling, replace(config.filters, cut_unfinished=False))
    strong = sh.make_pairs(model, tok, v, prompts, 3.0, 0, sampling, config.filters)
    babble_steered = sum(any(r.startswith("chosen:") for r in p.reasons) for p in strong) / len(strong)
    rng = random.Random(0)
    shuffled_ids, finished = [], []
    for p in make:
        words = p.rejected.split()
        rng.shuffle(words)
        ids = tok(" ".join(words), add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        shuffled_ids.append(ids)
        finished.append(True)  # judged on their text alone: no unfinished-drop counted as a catch
    checks = completion_checks(model, tok, [p.prompt_ids for p in make], shuffled_ids, finished, config.filters)
    babble_shuffled = sum(bool(c.reasons) for c in checks) / len(checks)

    def lengths(pairs: list[sh.PreferencePair], side: str) -> str:
        values = [len(getattr(p, f"{side}_ids")) for p in pairs if p.kept]
        return f"{statistics.mean(values):.1f} / {statistics.median(values):.0f}" if values else "-"

    print(f"SmolLM2-135M-Instruct, builtin persona, c* = {v.coeff:.3g} (1 nat p95), {N_PROMPTS} training prompts, ")
    print(f"max_new_tokens {sampling.max_new_tokens}, 1 torch thread.\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| pairs kept at alpha 1, unfinished cut at the last sentence end (preset) | {_share(make)} |")
    print(f"| pairs kept at alpha 1, unfinished dropped (wave-1 default) | {_share(dropped)} |")
    print(f"| babble dropped: steered completions at alpha 3 | {babble_steered:.0%} |")
    print(f"| babble dropped: unsteered completions, words shuffled | {babble_shuffled:.0%} |")
    print(f"| kept pairs' tokens, chosen (mean / median) | {lengths(make, 'chosen')} |")
    print(f"| kept pairs' tokens, rejected (mean / median) | {lengths(make, 'rejected')} |")
    cut_notes = sum(any("cut at its last sentence end" in n for n in p.notes) for p in make)
    print(f"| pairs with a cut side | {cut_notes} of {len(make)} |")


def _share(pairs: list[sh.PreferencePair]) -> str:
    kept = sum(p.kept for p in pairs)
    return f"{kept} of {len(pairs)} ({kept / len(pairs):.0%})"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    from docs_section import run_into_docs

    run_into_docs("loop.md", "filters-real", "just bench-filters-real", main)
