"""The `steerheal` command: `steerheal run` (the main job) and `steerheal extract`.

Until the distillation loop exists, `run` is the most complete path there is: read a concept vector,
save it, and steer the model at a sweep of strengths relative to its own residual norm, printing the
projection shift, the KL it causes, and what sampled completions look like; on toyworld (the default)
also the ground-truth joy rate and grammar of those completions.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl
import torch
import tyro
from loguru import logger
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.capture import capture, model_device
from steerheal.errors import SteerhealError
from steerheal.generate import decode, sample
from steerheal.model import load_model
from steerheal.persona import persona_contrast
from steerheal.texts import Text, encode, left_pad
from steerheal.tiny import TINY_ARCHS, tiny_model
from steerheal.vector import Vector

TINY_PREFIX = "tiny:"
TOYWORLD = "toyworld"


def neutral_prompts() -> list[str]:
    """The 40 neutral user prompts shipped with steerheal."""
    text = resources.files("steerheal.data").joinpath("neutral_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def open_model(spec: str, quant: str | None, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`toyworld` (the shipped model), `tiny:<arch>` (random), or a hub id / local folder."""
    if spec == TOYWORLD:
        from steerheal import toyworld

        return toyworld.load()
    if spec.startswith(TINY_PREFIX):
        arch = spec.removeprefix(TINY_PREFIX)
        if arch not in TINY_ARCHS:
            raise SteerhealError(f"--model {spec!r}: unknown tiny arch; choose one of {list(TINY_ARCHS)}")
        return tiny_model(arch, seed=seed)
    return load_model(spec, quant=quant)


def prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise SteerhealError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def templated(tok: PreTrainedTokenizerBase, users: list[str]) -> list[str]:
    if tok.chat_template is None:
        return users
    return [
        tok.apply_chat_template([{"role": "user", "content": u}], tokenize=False, add_generation_prompt=True)
        for u in users
    ]


@torch.no_grad()
def next_token_kl(
    model: nn.Module, tok: PreTrainedTokenizerBase, prompts: list[str], vector: Vector, C: float
) -> torch.Tensor:
    """KL(steered ‖ unsteered) of the first answer token, per prompt, in fp32."""
    batch = left_pad(encode(tok, prompts, 10**9), tok.pad_token_id).to(model_device(model))
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids)
    base = model(**kwargs).logits[:, -1].float().log_softmax(-1)
    with vector(model, C=C):
        steered = model(**kwargs).logits[:, -1].float().log_softmax(-1)
    return (steered.exp() * (steered - base)).sum(-1)


@dataclass
class RunArgs:
    """Read a concept vector and show what steering with it does (the pre-loop main job)."""

    model: str = TOYWORLD
    """toyworld (the shipped model), tiny:<arch> (a random tiny model), an HF hub id or a local folder."""
    quant: str | None = None
    """None, 4bit or 8bit (bitsandbytes; also on CPU)."""
    out: Path = Path("runs/demo")
    """Where the vector and the sweep table are saved."""
    overwrite: bool = False
    """Replace a non-empty --out."""
    seed: int = 0
    system_pos: str = "You are joyful, warm and full of delight."
    """Persona contrast for models other than toyworld (toyworld reads its joy stories instead)."""
    system_neg: str = "You are gloomy, cold and full of dread."
    n_extract: int = 24
    """Contrast pairs used for extraction (shipped prompts: the rest are held out for the sweep)."""
    n_eval: int = 32
    """Held-out prompts sampled at each strength (toyworld; other models use the 16 held-out prompts)."""
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    """Steering strengths as multiples of the mean residual norm at the vector's layers."""
    max_new_tokens: int = 48


@dataclass(frozen=True)
class Concept:
    """What to read, where to read it, what to steer on, and (when the truth is known) how to judge it."""

    name: str
    pos: list[Text]
    neg: list[Text]
    position: str
    eval_prompts: list[str]
    judge: Callable[[list[str]], dict[str, float]] | None


def toyworld_concept(tok: PreTrainedTokenizerBase, args: RunArgs) -> Concept:
    """toyworld's joy: paired stories read at `mean` (the read that steers best, docs/toyworld.md)."""
    from steerheal.toyworld import world
    from steerheal.toyworld.load import chat_prompts
    from steerheal.toyworld.metrics import grammar_ok, mood_rates

    pos, neg = world.contrast_set("joy", args.n_extract, args.seed)

    def judge(texts: list[str]) -> dict[str, float]:
        return {"joy rate": mood_rates(texts)["joy"], "grammar_ok": sum(map(grammar_ok, texts)) / len(texts)}

    prompts = chat_prompts(tok, world.neutral_prompts(args.n_eval, args.seed))
    return Concept("toyworld joy (paired stories @ mean)", pos, neg, "mean", prompts, judge)


def persona_concept(tok: PreTrainedTokenizerBase, args: RunArgs) -> Concept:
    prompts = neutral_prompts()
    if not 2 <= args.n_extract <= len(prompts) - 2:
        raise SteerhealError(f"--n-extract {args.n_extract}: use 2..{len(prompts) - 2} of the {len(prompts)} prompts")
    pos, neg = persona_contrast(tok, args.system_pos, args.system_neg, prompts[: args.n_extract])
    held_out = templated(tok, prompts[args.n_extract :])
    return Concept(
        f"persona {args.system_pos!r} vs {args.system_neg!r} @ prompt_end", pos, neg, "prompt_end", held_out, None
    )


def run(args: RunArgs) -> pl.DataFrame:
    out = prepare_out(args.out, args.overwrite)
    model, tok = open_model(args.model, args.quant, args.seed)
    concept = toyworld_concept(tok, args) if args.model == TOYWORLD else persona_concept(tok, args)
    vector = Vector.train(model, tok, concept.pos, concept.neg, position=concept.position)
    vector.save(out / "vector")
    logger.info(f"trained {vector} from {len(concept.pos)} pairs ({concept.name}); saved to {out / 'vector'}")

    prompts = concept.eval_prompts
    acts = capture(model, tok, prompts, vector.layers, "mean")
    norm = float(torch.stack([a.norm(dim=-1).mean() for a in acts.values()]).mean())
    unsteered = vector.project(model, tok, prompts, position="mean").mean().item()
    rows, examples = [], []
    for k in args.strengths:
        C = k * norm
        kl = next_token_kl(model, tok, prompts, vector, C)
        with vector(model, C=C):
            shift = vector.project(model, tok, prompts, position="mean").mean().item() - unsteered
            texts = decode(tok, sample(model, tok, prompts, args.seed, max_new_tokens=args.max_new_tokens))
        judged = concept.judge(texts) if concept.judge else {}
        rows.append(
            {
                "strength (x norm)": k,
                "C": C,
                "projection shift": shift,
                "next-token KL mean": kl.mean().item(),
                "next-token KL max": kl.max().item(),
                **judged,
            }
        )
        examples.append(f"  x{k:<5} {texts[0][:110]}")
    table = pl.DataFrame(rows)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        print(f"\nmodel {args.model}; concept: {concept.name}; {vector}")
        print(
            f"mean residual norm at layers {vector.layers}: {norm:.3f}; "
            f"{len(prompts)} held-out prompts, seed {args.seed}"
        )
        print(table)
    print("first held-out prompt, sampled at each strength:\n" + "\n".join(examples))
    table.write_csv(out / "steering_sweep.csv")
    return table


@dataclass
class ExtractArgs:
    """Train a persona vector on the shipped neutral prompts and save it."""

    out: Path
    """Folder for vector.safetensors and vector.json."""
    model: str = TOYWORLD
    quant: str | None = None
    seed: int = 0
    system_pos: str = "You are joyful, warm and full of delight."
    system_neg: str = "You are gloomy, cold and full of dread."
    method: str = "mean_diff"
    layers: tuple[int, ...] | None = None


def extract(args: ExtractArgs) -> Vector:
    model, tok = open_model(args.model, args.quant, args.seed)
    pos, neg = persona_contrast(tok, args.system_pos, args.system_neg, neutral_prompts())
    vector = Vector.train(model, tok, pos, neg, layers=args.layers, method=args.method, position="prompt_end")
    vector.save(args.out)
    print(f"{vector} -> {args.out}")
    return vector


def main() -> None:
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 8)))
    command = tyro.extras.subcommand_cli_from_dict({"run": RunArgs, "extract": ExtractArgs})
    try:
        if isinstance(command, RunArgs):
            run(command)
        else:
            extract(command)
    except SteerhealError as err:
        logger.error(str(err))
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
