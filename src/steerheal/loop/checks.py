"""Every RunConfig value checked before the model loads and before the run folder exists.

Each message names the command-line flag (`--dose.target-kl`), the value, the rule and the fix. Layers are
checked against the model's config, read without its weights (toyworld's and a local folder's config.json,
the tiny architectures' builder, a hub model's cached config when there is one).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from steerheal.dose.calibrate import STATS
from steerheal.errors import SteerhealError
from steerheal.lm.tiny import TINY_ARCHS
from steerheal.loop.model_spec import model_sizes
from steerheal.loop.runconfig import RunConfig
from steerheal.loop.source_checks import check_source
from steerheal.read.aggregate import METHODS

# (rule, fields): each field (a dotted path in RunConfig) must satisfy the rule; None passes where allowed
AT_LEAST_1 = [
    "n_pairs",
    "concept.n_extract",
    "dose.n_tokens",
    "dose.n_prompts",
    "dose.probe_size",
    "adapter.r",
    "stop.max_rounds",
    "verify.n_prompts",
    "verify.max_new_tokens",
    "sampling.max_new_tokens",
    "sampling.batch_size",
    "heal.epochs",
    "heal.batch_size",
    "heal.grad_accum",
    "heal.chunk",
    "filters.tail_tokens",
    "filters.word_ngram",
    "filters.char_ngram",
    "threads",
]
AT_LEAST_0 = [
    "seed",
    "dose.liveness_samples",
    "verify.n_samples",
    "heal.warmup_steps",
    "heal.grad_ratio_every",
    "heal.seed",
    "filters.min_tokens",
    "filters.zlib_min_chars",
    "heal.tau",
    "heal.lam",
    "heal.pref_weight",
    "heal.orpo_lam",
    "heal.weight_decay",
    "verify.retain_floor",
    "sampling.temperature",
]
POSITIVE = [
    "dose.target_kl",
    "dose.round_decay",
    "dose.alpha",
    "dose.alpha_min",
    "adapter.alpha",
    "heal.lr",
    "heal.dpo_beta",
    "heal.max_grad_norm",
    "stop.max_kl_tail",
    "filters.max_tail_ppl",
]
FRACTION = [
    "stop.min_grammar_ok",
    "stop.min_distinct_2",
    "filters.max_word_repetition",
    "filters.max_char_repetition",
    "filters.min_zlib_ratio",
    "dose.keep_target",
]
OPEN_FRACTION = ["dose.tol", "dose.walk_factor"]  # in (0, 1)
CHOICES: dict[str, tuple[Any, ...]] = {
    "concept.source": ("toyworld", "persona", "builtin", "corpus", "readout", "vector"),
    "concept.method": METHODS,
    "dose.stat": STATS,
    "quant": (None, "4bit", "8bit"),
}


def flag(path: str) -> str:
    """The command-line flag of a dotted RunConfig field (tyro's spelling)."""
    return "--" + path.replace("_", "-")


def _get(config: RunConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _numbers(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted path, value) of every number in a (nested) config, tuples included."""
    if dataclasses.is_dataclass(value):
        out = []
        for f in dataclasses.fields(value):
            out += _numbers(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
        return out
    if isinstance(value, tuple):
        return [(path, v) for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(path, value)]
    return []


def _fail(path: str, value: Any, rule: str) -> SteerhealError:
    return SteerhealError(f"{flag(path)} {value!r}: {rule}; pass a value that is")


def check_name(name: str) -> None:
    """A run name is one plain folder name inside --runs-dir."""
    if name in ("", ".", "..") or Path(name).name != name or "/" in name or "\\" in name or "\0" in name:
        raise SteerhealError(
            f"--name {name!r}: a run name is one plain folder name inside --runs-dir (not empty, '.' or '..', no "
            "'/' or '\\'); pass a name such as my-run, and --runs-dir for where it goes"
        )


def model_layers(spec: str) -> int | None:
    """The number of decoder blocks of a model spec, from its config alone; None when it cannot be read here
    (a hub model not in the local cache: loading it reports that)."""
    layers = (model_sizes(spec) or {}).get("n_layers")
    return int(layers) if isinstance(layers, int) else None


def check_device(device: str | None) -> None:
    if device is None or device == "cpu":
        return
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SteerhealError(
                f"--device {device}: torch finds no CUDA device on this machine (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda}); omit --device (CPU is used) or pass --device cpu"
            )
        index = device.removeprefix("cuda").removeprefix(":")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise SteerhealError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices; pass cuda:0 .. "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
        return
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise SteerhealError("--device mps: torch finds no MPS device here; omit --device or pass --device cpu")
        return
    raise SteerhealError(f"--device {device!r}: use cpu, cuda, cuda:N or mps (or omit it)")


def _check_files(config: RunConfig) -> None:
    c = config.concept
    if c.source == "persona":
        from steerheal.read.persona_files import Persona

        for path, value in (("concept.persona_file", c.persona_file), ("concept.off_target_file", c.off_target_file)):
            if value is None:
                raise SteerhealError(f"--concept.source persona needs {flag(path)} (a corpus/personas JSON file)")
            if not value.is_file():
                raise SteerhealError(f"{flag(path)} {str(value)!r}: no such file; pass a persona JSON file")
            Persona.load(value)
    if config.verify.corpus is not None and not config.verify.corpus.is_dir():
        raise SteerhealError(
            f"--verify.corpus {str(config.verify.corpus)!r}: no such folder; pass a corpus folder (corpus/ layout) "
            "or leave it unset"
        )
    if c.source == "toyworld":
        from steerheal.toyworld.world import MOODS, TOPICS

        for path in ("concept.mood", "concept.off_target_mood"):
            if _get(config, path) not in (*MOODS, *TOPICS):
                raise _fail(path, _get(config, path), f"not a toyworld mood (one of {list(MOODS)}) or topic")
        if c.mood == c.off_target_mood:
            raise SteerhealError("--concept.off-target-mood must differ from --concept.mood")
    check_source(config)


def validate(config: RunConfig) -> None:
    """Refuse any value the run would fail on later, naming its flag; nothing is loaded or written."""
    check_name(config.name)
    if config.runs_dir.exists() and not config.runs_dir.is_dir():
        raise SteerhealError(f"--runs-dir {config.runs_dir}: is a file, not a folder; pass a folder")
    for path, value in _numbers(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise _fail(path, value, "must be a finite number")
    rules = [
        (AT_LEAST_1, lambda v: v >= 1, "must be at least 1"),
        (AT_LEAST_0, lambda v: v >= 0, "must be at least 0"),
        (POSITIVE, lambda v: v > 0, "must be above 0"),
        (FRACTION, lambda v: 0 <= v <= 1, "must lie in [0, 1]"),
        (OPEN_FRACTION, lambda v: 0 < v < 1, "must lie strictly between 0 and 1"),
        (["sampling.top_p"], lambda v: 0 < v <= 1, "must lie in (0, 1]"),
    ]
    for paths, ok, rule in rules:
        for path in paths:
            value = _get(config, path)
            if value is not None and not ok(value):
                raise _fail(path, value, rule)
    for path, choices in CHOICES.items():
        if _get(config, path) not in choices:
            raise _fail(path, _get(config, path), f"use one of {list(choices)}")
    d, a = config.dose, config.adapter
    if d.alpha_min > d.alpha:
        raise _fail("dose.alpha_min", d.alpha_min, f"must not exceed --dose.alpha ({d.alpha})")
    if not 0 <= a.depth_band[0] < a.depth_band[1] <= 1:
        raise _fail("adapter.depth_band", a.depth_band, "must be two fractions lo < hi in [0, 1]")
    if config.model.startswith("tiny:") and config.model.removeprefix("tiny:") not in TINY_ARCHS:
        raise SteerhealError(f"--model {config.model!r}: unknown tiny arch; choose one of {list(TINY_ARCHS)}")
    check_device(config.device)
    layers = config.concept.layers
    if layers is not None:
        if not layers or len(set(layers)) != len(layers):
            raise _fail("concept.layers", layers, "must be distinct block indices, at least one")
        total = model_layers(config.model)
        for layer in layers:
            if layer < 0 or (total is not None and layer >= total):
                valid = f"0..{total - 1}" if total is not None else "0 or more"
                raise _fail("concept.layers", layer, f"is not a block of {config.model} (valid: {valid})")
    _check_files(config)
