"""The `steerheal` command: `steerheal run` (the main job) and `steerheal extract`.

Until the distillation loop exists, `run` is the most complete path there is: extract a persona vector,
save it, and steer the model at a sweep of strengths relative to its own residual norm, printing the
projection shift, the KL it causes and greedy samples, so that a user sees what steering does to this
model before any training.
"""

from __future__ import annotations

import shutil
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
from steerheal.model import load_model
from steerheal.persona import persona_contrast
from steerheal.texts import encode, left_pad
from steerheal.tiny import TINY_ARCHS, tiny_model
from steerheal.vector import Vector

TINY_PREFIX = "tiny:"


def neutral_prompts() -> list[str]:
    """The 40 neutral user prompts shipped with steerheal."""
    text = resources.files("steerheal.data").joinpath("neutral_prompts.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def open_model(spec: str, quant: str | None, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """`tiny:<arch>` builds a random tiny model; anything else is a hub id or a local folder."""
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


@torch.no_grad()
def greedy(model: nn.Module, tok: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy continuations of templated prompts, batched with left padding and the KV cache."""
    batch = left_pad(encode(tok, prompts, 10**9), tok.pad_token_id).to(model_device(model))
    out = model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )
    return tok.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)


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
    """Extract a persona vector and show what steering with it does (the pre-loop main job)."""

    model: str = "tiny:llama"
    """HF hub id, local folder, or tiny:<arch> for a random tiny model."""
    quant: str | None = None
    """None, 4bit or 8bit (bitsandbytes; also on CPU)."""
    out: Path = Path("runs/demo")
    """Where the vector is saved."""
    overwrite: bool = False
    """Replace a non-empty --out."""
    seed: int = 0
    system_pos: str = "You are joyful, warm and full of delight."
    system_neg: str = "You are gloomy, cold and full of dread."
    n_extract: int = 24
    """Neutral prompts used for extraction; the rest are held out for the sweep."""
    strengths: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    """Steering strengths as multiples of the mean residual norm at the vector's layers."""
    max_new_tokens: int = 24


def run(args: RunArgs) -> pl.DataFrame:
    prompts = neutral_prompts()
    if not 2 <= args.n_extract <= len(prompts) - 2:
        raise SteerhealError(f"--n-extract {args.n_extract}: use 2..{len(prompts) - 2} of the {len(prompts)} prompts")
    out = prepare_out(args.out, args.overwrite)
    model, tok = open_model(args.model, args.quant, args.seed)
    train_prompts, held_out = prompts[: args.n_extract], prompts[args.n_extract :]
    pos, neg = persona_contrast(tok, args.system_pos, args.system_neg, train_prompts)
    vector = Vector.train(model, tok, pos, neg, position="prompt_end")
    vector.save(out / "vector")
    logger.info(f"trained {vector} on {len(pos)} persona pairs; saved to {out / 'vector'}")
    eval_pos, eval_neg = persona_contrast(tok, args.system_pos, args.system_neg, held_out)
    separation = vector.project(model, tok, eval_pos).mean(0) - vector.project(model, tok, eval_neg).mean(0)
    logger.info(f"held-out separation per layer (pos - neg projection): {separation.tolist()}")

    neutral = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        if tok.chat_template
        else p
        for p in held_out
    ]
    norm = float(
        torch.stack(
            [a.norm(dim=-1).mean() for a in capture(model, tok, neutral, vector.layers, "prompt_end").values()]
        ).mean()
    )
    unsteered = vector.project(model, tok, neutral).mean().item()
    rows = []
    for k in args.strengths:
        C = k * norm
        kl = next_token_kl(model, tok, neutral, vector, C)
        with vector(model, C=C):
            shift = vector.project(model, tok, neutral).mean().item() - unsteered
            sample = greedy(model, tok, neutral[:1], args.max_new_tokens)[0]
        rows.append(
            {
                "strength (x norm)": k,
                "C": round(C, 3),
                "projection shift": round(shift, 3),
                "KL mean": round(kl.mean().item(), 4),
                "KL max": round(kl.max().item(), 4),
                "greedy sample": sample.replace("\n", " ")[:80],
            }
        )
    table = pl.DataFrame(rows)
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
        print(f"\nmodel {args.model}: residual norm {norm:.3f} at layers {vector.layers}; prompt: {held_out[0]!r}")
        print(table)
    table.write_csv(out / "steering_sweep.csv")
    return table


@dataclass
class ExtractArgs:
    """Train a persona vector on the shipped neutral prompts and save it."""

    out: Path
    """Folder for vector.safetensors and vector.json."""
    model: str = "tiny:llama"
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
