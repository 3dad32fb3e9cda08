"""Load causal LMs (and BERT-style encoders, for readouts) in eval mode, left-padded, with a pad token.

Encoder-only models (`ENCODER_TYPES`) are read, never generated from: they load through `AutoModel`.
A registered short name (`lm/registry.py`) or a `.gguf` file loads from its de-quantised cache folder
(`lm/gguf_cache.py`, docs/models.md); a hub id that cannot be fetched fails at once (`lm/hub.py`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.lm.attention import use_broadcast_mask
from steerheal.lm.blocks import ENCODER_TYPES
from steerheal.lm.fingerprint import fingerprint
from steerheal.lm.registry import REGISTRY
from steerheal.log import logger, quiet_bitsandbytes


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    if dtype is None:
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 on CPU is 15-35x slower here, and 4-bit on CPU needs fp32
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    parsed = getattr(torch, aliases.get(dtype, dtype), None)
    if not isinstance(parsed, torch.dtype):
        raise SteerhealError(f"dtype={dtype!r} is not a torch dtype; use float32, bfloat16 or float16")
    return parsed


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding and an explicit pad token (logged when one has to be chosen)."""
    if tok.padding_side != "left":
        logger.info(f"tokenizer padding_side {tok.padding_side!r} -> 'left' (batched reads and generation)")
        tok.padding_side = "left"
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise SteerhealError(
                "the tokenizer has neither a pad nor an eos token; set tok.pad_token to a token of its "
                "vocabulary before using it with steerheal"
            )
        tok.pad_token = tok.eos_token
        logger.info(
            f"tokenizer has no pad token; using eos {tok.eos_token!r} (id {tok.eos_token_id}) as pad. "
            "Padding is masked by attention masks, never by token id, so this is safe."
        )
    return tok


def _gguf_folder(source: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    from steerheal.lm.gguf import locate
    from steerheal.lm.gguf_cache import materialise

    gguf = locate(REGISTRY[source], cache_dir) if source in REGISTRY else Path(source).expanduser()
    return materialise(gguf, cache_dir)


@checked
def load_model(
    name_or_path: str | os.PathLike[str],
    quant: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, in eval mode, left-padded, with a pad token.

    A BERT-style encoder (`ENCODER_TYPES`, e.g. all-MiniLM-L6-v2) loads through `AutoModel` instead: it can be
    read (capture, Vector, Readout) but not generated from.

    `quant="4bit"` (nf4, double quantisation) or `"8bit"` go through bitsandbytes, which also runs on CPU.
    `dtype=None` picks float32 on CPU (the only fast CPU dtype, and what 4-bit on CPU needs for its
    non-quantised parameters) and bfloat16 on a GPU that supports it.

    `name_or_path` may also be a short name of `lm.registry.REGISTRY` (`smollm2-135m-instruct`, `gemma-3-270m`)
    or a `.gguf` file: the first load writes a float32 model folder under `cache_dir` (default
    $STEERHEAL_CACHE or ~/.cache/steerheal) and every load, plain or 4-bit, reads that folder.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if quant not in (None, "4bit", "8bit"):
        raise SteerhealError(f"quant={quant!r}: use None, '4bit' or '8bit'")
    device = device or default_device()
    torch_dtype = _parse_dtype(dtype, device)
    if device == "cpu" and torch_dtype != torch.float32:
        logger.warning(f"{torch_dtype} on CPU is much slower than float32 here; pass dtype='float32'")
    source = str(name_or_path)
    if source in REGISTRY or source.endswith(".gguf"):
        source = str(_gguf_folder(source, cache_dir))
    elif not Path(source).expanduser().exists() and not source.startswith(("/", "./", "../", "~", "\\")):
        from steerheal.lm.hub import check_hub_id

        check_hub_id(source)
    if not Path(source).expanduser().exists() and source.startswith(("/", "./", "../", "~", "\\")):
        raise SteerhealError(f"could not load model {source!r}: that local folder does not exist")
    folder = Path(source).expanduser()
    if folder.is_dir():
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
        missing = [f for f in ("config.json",) if not (folder / f).is_file()]
        if not any((folder / f).is_file() for f in tokenizer_files):
            missing.append(f"a tokenizer file (one of {', '.join(tokenizer_files)})")
        if missing:
            raise SteerhealError(
                f"could not load model {source!r}: the folder lacks {' and '.join(missing)}; point at a "
                "folder with a model's and a tokenizer's save_pretrained output"
            )
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "device_map": device}
    if quant is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype,
            )
            if quant == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    try:
        tok = AutoTokenizer.from_pretrained(source, padding_side="left")
        encoder = AutoConfig.from_pretrained(source).model_type in ENCODER_TYPES
        with quiet_bitsandbytes():  # a quantised load imports bitsandbytes
            model = (AutoModel if encoder else AutoModelForCausalLM).from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as err:  # hub validation errors are ValueErrors
        where = "the local folder exists but" if Path(source).is_dir() else "it is not a local folder and"
        raise SteerhealError(
            f"could not load model {source!r}: {where} loading failed ({err}). Pass a local folder with "
            "config.json, weights and tokenizer files, or a hub id on a machine that can reach the hub."
        ) from err
    model.eval()
    use_broadcast_mask(model)
    prepare_tokenizer(tok)
    fp = fingerprint(model)
    kind = " (an encoder: readouts only, no generation)" if encoder else ""
    logger.info(
        f"loaded {fp.architecture} {source!r}{kind}: {fp.n_layers} blocks, hidden {fp.hidden_size}, "
        f"vocab {fp.vocab_size}, {fp.dtype}, quantization {fp.quantization}, device {device}"
    )
    return model, tok
