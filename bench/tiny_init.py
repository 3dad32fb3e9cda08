"""How far can steering move a tiny random model's output distribution, by initializer range?

For each architecture and initializer range: a mean_diff vector from contrast texts at the middle
layers, steered at C = k x (mean residual norm at those layers); the 95th percentile of per-token
KL(steered || unsteered) in nats over a few texts. transformers' default range (0.02) leaves logits near
uniform, so no dose moves them; steerheal's tiny models use TINY_INIT_RANGE. Run: `just tiny-init-sweep`.
"""

from __future__ import annotations

import sys

import torch

import steerheal as sh
from steerheal.read.capture import residual_norm
from steerheal.read.vector import default_layers

RANGES = (0.02, 0.1, 0.2, 0.3, 0.4)
MULTIPLES = (0.5, 1.0, 2.0, 4.0)
POS = [f"What a lovely {w}, I am so happy here." for w in ("garden", "kitchen", "harbour", "office")]
NEG = [f"What a dreadful {w}, I am so unhappy here." for w in ("garden", "kitchen", "harbour", "office")]
TEXTS = [
    "The kettle began to hum a little before seven.",
    "At the harbour the boats knocked gently against the pier.",
    "The office on the third floor had seven desks.",
    "In the garden the beans had climbed higher than the fence.",
]


@torch.no_grad()
def p95_kl(model, tok, vector, C: float) -> float:
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    mask = batch["attention_mask"].bool()
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    base = model(**batch, position_ids=positions).logits.float().log_softmax(-1)
    with vector(model, C=C):
        steered = model(**batch, position_ids=positions).logits.float().log_softmax(-1)
    kl = (steered.exp() * (steered - base)).sum(-1)[mask]
    return float(torch.quantile(kl, 0.95))


def main() -> None:
    torch.set_num_threads(1)
    archs = [a for a in sys.argv[1:] if not a.startswith("--")] or list(sh.TINY_ARCHS)
    header = "| arch | init range | " + " | ".join(f"p95 KL at {k}x norm" for k in MULTIPLES) + " |"
    print(header)
    print("|" + "---|" * (2 + len(MULTIPLES)))
    for arch in archs:
        for init in RANGES:
            model, tok = sh.tiny_model(arch, init_range=init)
            layers = default_layers(model)
            vector = sh.Vector.train(model, tok, POS, NEG, layers=layers)
            norm = residual_norm(model, tok, TEXTS, layers)
            kls = [p95_kl(model, tok, vector, k * norm) for k in MULTIPLES]
            print(f"| {arch} | {init} | " + " | ".join(f"{x:.3f}" for x in kls) + " |", flush=True)


if __name__ == "__main__":
    from docs_section import run_into_docs

    run_into_docs("tiny-models.md", "tiny-init", "just tiny-init-sweep", main)
