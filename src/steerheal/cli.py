"""The `steerheal` command: `steerheal run` (the main job) and `steerheal extract`.

Until the distillation loop exists, `run` is the most complete path there is: read a concept vector,
calibrate its iso-KL dose c*, and make filtered steered/unsteered preference pairs at multiples of c*,
printing the calibration, the filters' keep rate and sampled completions; on toyworld (the default) also
the ground-truth joy rate and grammar of the steered completions.
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
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.errors import SteerhealError
from steerheal.filters import FilterConfig
from steerheal.model import load_model
from steerheal.pairs import SamplingConfig, make_pairs, write_pairs
from steerheal.persona import persona_contrast
from steerheal.texts import Text
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


@dataclass
class RunArgs:
    """Read a concept vector, calibrate its dose, and make filtered steered/unsteered pairs at a sweep of
    multiples of that dose (the pre-loop main job)."""

    model: str = TOYWORLD
    """toyworld (the shipped model), tiny:<arch> (a random tiny model), an HF hub id or a local folder."""
    quant: str | None = None
    """None, 4bit or 8bit (bitsandbytes; also on CPU)."""
    out: Path = Path("runs/demo")
    """Where the vector (with its calibration), pairs.jsonl and the sweep table are saved."""
    overwrite: bool = False
    """Replace a non-empty --out."""
    seed: int = 0
    system_pos: str = "You are joyful, warm and full of delight."
    """Persona contrast for models other than toyworld (toyworld reads its joy stories instead)."""
    system_neg: str = "You are gloomy, cold and full of dread."
    n_extract: int = 24
    """Contrast pairs used for extraction (shipped prompts: the rest are held out)."""
    n_eval: int = 32
    """Held-out prompts sampled at each dose (toyworld; other models use the 16 held-out prompts)."""
    target_kl: float = 1.0
    """iso-KL target of the calibration: p95 of per-token KL(steered ‖ unsteered), in nats."""
    alphas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    """Doses of the sweep, as multiples of the calibrated c*."""
    loose_filters: bool = False
    """Check only emptiness (random tiny models fail every coherence filter)."""
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
    logger.info(f"trained {vector} from {len(concept.pos)} pairs ({concept.name})")
    prompts = concept.eval_prompts
    vector.calibrate(model, tok, prompts[: max(4, len(prompts) // 2)], target_kl=args.target_kl, seed=args.seed)
    vector.save(out / "vector")
    record = vector.calibration or {}
    filters = FilterConfig().loosened() if args.loose_filters else FilterConfig()
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)

    def judged(texts: list[str]) -> dict[str, float]:
        return concept.judge(texts) if concept.judge else {}

    rows, examples = [], []
    for alpha in args.alphas:
        pairs = make_pairs(model, tok, vector, prompts, alpha, args.seed, sampling, filters)
        if alpha == args.alphas[0]:  # the unsteered side is the same at every dose (same seeds)
            rows.append({"dose (x c*)": 0.0, "C": 0.0, "kept": None, **judged([p.rejected for p in pairs])})
            examples.append(f"  x0     {pairs[0].rejected[:110]}")
        if alpha == 1.0:
            write_pairs(out / "pairs.jsonl", pairs)
        kept = sum(p.kept for p in pairs) / len(pairs)
        rows.append({"dose (x c*)": alpha, "C": pairs[0].dose["C"], "kept": kept, **judged([p.chosen for p in pairs])})
        examples.append(f"  x{alpha:<5} {pairs[0].chosen[:110]}")
    table = pl.DataFrame(rows)
    liveness = record.get("liveness", {}).get("degenerate_fraction")
    print(f"\nmodel {args.model}; concept: {concept.name}; {vector}")
    print(
        f"c* = {record['c']:.4g}: {record['stat']} KL {record['value']:.3f} (target {args.target_kl}) in "
        f"{record['n_evals']} evaluations; {liveness:.0%} of sampled steered continuations loop at c*"
    )
    print(
        f"{len(prompts)} held-out prompts, seed {args.seed}, filters {'loosened' if args.loose_filters else 'default'}"
    )
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        print(table)
    print("first held-out prompt, sampled at each dose:\n" + "\n".join(examples))
    table.write_csv(out / "steering_sweep.csv")
    print(f"saved {out / 'vector'}, {out / 'pairs.jsonl'} (dose 1 x c*), {out / 'steering_sweep.csv'}")
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
