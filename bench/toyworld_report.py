"""`just toyworld-report [--seed N]`: measure the shipped toyworld model and write docs/toyworld.md.

Every figure in the page's generated section comes from this run (and the checkpoint's training.json).
"""

from __future__ import annotations

import json
import sys

import polars as pl
import torch

import steerheal as sh
from steerheal.loop.report import markdown
from steerheal.toyworld import checkpoint_dir
from steerheal.toyworld import report as R

N_UNSTEERED = 400
N_PERSONA = 200
N_SWEEP = 64
MULTIPLES = (0.0, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0)
COHERENT = 0.9  # grammar_ok a steered setting must keep to count as coherent


def seed_arg() -> int:
    return int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 0


def main() -> None:
    torch.set_num_threads(2)
    seed = seed_arg()
    model, tok = sh.toyworld.load()
    training = json.loads((checkpoint_dir() / "training.json").read_text())
    c = training["config"]
    print(
        f"Seed {seed}. Checkpoint: Llama, {c['n_layers']} blocks, d_model {c['hidden_size']}, "
        f"{training['n_parameters']:,} parameters, vocabulary {len(tok)} words.\n"
    )
    print("### Training (from training.json, written by `just toyworld-train`)\n")
    print(
        markdown(
            pl.DataFrame(
                [
                    {
                        "dialogues": c["n_dialogues"],
                        "epochs": c["epochs"],
                        "steps": training["steps"],
                        "tokens": training["tokens"],
                        "seconds": training["seconds"],
                        "tokens/s": training["tokens_per_second"],
                        "threads": c["threads"],
                        "final train loss": training["final_train_loss"],
                        "held-out loss": training["heldout_loss"],
                        "torch": training["torch"],
                    }
                ]
            )
        )
    )

    print(f"\n### Unsteered, {N_UNSTEERED} neutral prompts, temperature 1\n")
    topics = R.prompt_topics(N_UNSTEERED, seed)
    unsteered = R.story_metrics(sh.toyworld.sample(model, tok, N_UNSTEERED, seed), topics)
    expected = R.expected_rates()
    print(
        markdown(
            pl.DataFrame(
                [
                    {"": "unsteered model", **{m: unsteered[f"rate_{m}"] for m in expected}},
                    {"": "training stories (expected)", **expected},
                ]
            )
        )
    )
    print(
        f"\ngrammar_ok {unsteered['grammar_ok']:.3f}, topic consistency {unsteered['topic']:.3f}, "
        f"distinct-2 {unsteered['distinct_2']:.3f}."
    )

    print(f"\n### Persona system prompts, {N_PERSONA} neutral prompts each\n")
    personas = R.persona_table(model, tok, N_PERSONA, seed)
    print(markdown(personas.select("system", "grammar_ok", "topic", *[f"rate_{m}" for m in (*expected,)])))

    print(f"\n### Steering with a joy vector, {N_SWEEP} neutral prompts per cell\n")
    print("Strength = multiple of the mean residual norm at the steered layers (neutral prompts); C is absolute.\n")
    vectors = R.joy_vectors(model, tok, seed)
    sweep = R.steering_sweep(model, tok, vectors, MULTIPLES, N_SWEEP, seed)
    base_joy = sweep.filter(pl.col("strength") == 0)["rate_joy"][0]
    summary = (
        sweep.group_by("vector", maintain_order=True)
        .agg(
            pl.col("rate_joy")
            .filter(pl.col("grammar_ok") >= COHERENT)
            .max()
            .alias(f"best joy rate at grammar >= {COHERENT}"),
            pl.col("strength").filter(pl.col("grammar_ok") >= COHERENT).max().alias("at strength"),
            pl.col("strength").filter(pl.col("grammar_ok") < 0.5).min().alias("grammar < 0.5 from strength"),
            pl.col("grammar_ok").min().alias("lowest grammar"),
        )
        .sort(f"best joy rate at grammar >= {COHERENT}", descending=True)
    )
    print(f"Unsteered joy rate {base_joy:.3f}. Summary per vector (best first):\n")
    print(markdown(summary))
    best = summary["vector"][0]
    print(f"\nFull sweep of the best vector, `{best}`:\n")
    print(markdown(sweep.filter(pl.col("vector") == best).drop("vector")))
    print("\nFull sweep of every vector:\n")
    print(markdown(sweep.select("vector", "strength", "grammar_ok", "topic", "distinct_2", "rate_joy", "rate_neutral")))


if __name__ == "__main__":
    from docs_section import run_into_docs

    run_into_docs("toyworld.md", "toyworld-report", f"just toyworld-report --seed {seed_arg()}", main)
