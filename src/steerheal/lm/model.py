"""Load causal LMs (and BERT-style encoders, for readouts), find their blocks, fingerprint them.

Every other module reaches model internals through `decoder_layers`, so supporting a new layout is one
line in `DECODER_LAYER_PATHS` (and one in `MLP_OUT_PATHS` for the quality report's neuron check).
Encoder-only models (`ENCODER_TYPES`) are read, never generated from: they load through `AutoModel`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from loguru import logger
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerheal.lm.attention import use_broadcast_mask
from steerheal.errors import SteerhealError

# model_type (from the config) -> attribute path of the decoder blocks. An explicit table, so that a
# model whose layout changes fails loudly instead of being read at the wrong modules.
DECODER_LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",  # Gemma3ForCausalLM (text-only checkpoints such as gemma-3-1b)
    "gemma3": "model.language_model.layers",  # Gemma3ForConditionalGeneration (4b and up)
    "phi3": "model.layers",
    "gpt_neox": "gpt_neox.layers",
    "gpt2": "transformer.h",
    "bert": "encoder.layer",  # BertModel (AutoModel): an encoder, for readouts only (no generation)
}
# encoder-only model types: load_model builds them with AutoModel (no LM head exists to build)
ENCODER_TYPES = frozenset({"bert"})
# model_type -> (module inside a block that writes the MLP's output, whether its weight is stored
# [hidden, neurons] like nn.Linear (True) or [neurons, hidden] like GPT-2's Conv1D (False))
MLP_OUT_PATHS: dict[str, tuple[str, bool]] = {
    **{t: ("mlp.down_proj", True) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gemma3")},
    "phi3": ("mlp.down_proj", True),
    "gpt_neox": ("mlp.dense_4h_to_h", True),
    "gpt2": ("mlp.c_proj", False),
    "bert": ("output.dense", True),
}


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The transformers model under a peft wrapper (or the model itself)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(inner, PreTrainedModel):
        raise SteerhealError(
            f"expected a transformers PreTrainedModel (or a peft wrapper of one), got {type(model).__name__}"
        )
    return inner


def text_config(model: nn.Module) -> Any:
    """The language-model part of the config (multimodal configs nest it)."""
    return unwrap(model).config.get_text_config()


def n_layers(model: nn.Module) -> int:
    return int(text_config(model).num_hidden_layers)


def hidden_size(model: nn.Module) -> int:
    return int(text_config(model).hidden_size)


def context_length(model: nn.Module) -> int:
    return int(text_config(model).max_position_embeddings)


def _resolve(root: nn.Module, path: str) -> nn.Module | None:
    node: Any = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _is_block_list(node: nn.Module | None, expected: int) -> bool:
    return isinstance(node, nn.ModuleList) and len(node) == expected


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks in order: layer i of every steerheal API is the output of block i.

    Looked up in `DECODER_LAYER_PATHS` by the config's model_type; a type missing from the table is tried
    against every known path and accepted only where a ModuleList of exactly `num_hidden_layers` blocks
    sits (logged). Works under a peft wrapper and on bitsandbytes-quantised models (same module tree).
    """
    inner = unwrap(model)
    model_type = getattr(inner.config, "model_type", None)
    expected = n_layers(inner)
    if model_type in DECODER_LAYER_PATHS:
        path = DECODER_LAYER_PATHS[model_type]
        node = _resolve(inner, path)
        if _is_block_list(node, expected):
            return node  # type: ignore[return-value]
        tried = [path]
    else:
        tried = sorted(set(DECODER_LAYER_PATHS.values()))
        for path in tried:
            node = _resolve(inner, path)
            if _is_block_list(node, expected):
                logger.warning(
                    f"model_type {model_type!r} ({type(inner).__name__}) is not in DECODER_LAYER_PATHS; "
                    f"using {path!r}, the only known path holding {expected} blocks. Add it to the table."
                )
                return node  # type: ignore[return-value]
    raise SteerhealError(
        f"cannot find the decoder blocks of {type(inner).__name__} (model_type={model_type!r}, "
        f"num_hidden_layers={expected}); tried {tried}. Add the model's block path to "
        f"steerheal.lm.model.DECODER_LAYER_PATHS."
    )


def mlp_write_directions(model: nn.Module, layer: int) -> Float[Tensor, "neurons hidden"]:
    """Block `layer`'s MLP output columns, one row per neuron (float32, CPU): what each neuron writes.

    bitsandbytes 4-bit and 8-bit weights are de-quantised first; other quantised layouts are refused.
    """
    inner = unwrap(model)
    model_type = getattr(inner.config, "model_type", None)
    if model_type not in MLP_OUT_PATHS:
        raise SteerhealError(
            f"no MLP output path is known for model_type {model_type!r}; add it to steerheal.lm.model.MLP_OUT_PATHS"
        )
    path, linear = MLP_OUT_PATHS[model_type]
    module = _resolve(decoder_layers(inner)[layer], path)
    weight = getattr(module, "weight", None)
    if weight is None:
        raise SteerhealError(f"block {layer} of {type(inner).__name__} has no weight at {path!r}")
    if weight.dtype == torch.int8 and getattr(weight, "SCB", None) is not None:  # bitsandbytes 8-bit, row scales
        weight = weight.data.float() * weight.SCB.float()[:, None] / 127
    elif getattr(weight, "quant_state", None) is not None or weight.dtype.is_floating_point:
        from steerheal.lm.dequant import dense_weight  # 4-bit in both of bitsandbytes' layouts, or a plain cast

        weight = dense_weight(weight, f"the MLP output weight of block {layer}")
    else:
        raise SteerhealError(
            f"the MLP output weight of block {layer} is stored as {weight.dtype} in a layout steerheal cannot "
            "de-quantise; load the model unquantised (or in 4-bit or 8-bit bitsandbytes) for the quality report"
        )
    weight = weight.detach().float().cpu()
    return weight.T if linear else weight


@dataclass(frozen=True)
class Fingerprint:
    """Which model (identity) and in what precision: recorded in every file steerheal saves.

    Identity mismatches are errors where weights would be misapplied; precision mismatches (a round
    trained on a 4-bit base, baked onto the bf16 base) are warnings.
    """

    name_or_path: str
    revision: str | None
    architecture: str
    hidden_size: int
    n_layers: int
    vocab_size: int
    dtype: str
    quantization: str | None

    IDENTITY = ("name", "revision", "architecture", "hidden_size", "n_layers", "vocab_size")
    PRECISION = ("dtype", "quantization")

    @property
    def name(self) -> str:
        """The model's name: a hub id's last part or a local folder's name, so copies compare equal."""
        return Path(self.name_or_path.rstrip("/\\")).name if self.name_or_path else ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str) -> Fingerprint:
        fields = set(cls.__dataclass_fields__)
        missing = fields - set(data)
        if missing:
            raise SteerhealError(f"{what}: fingerprint lacks {sorted(missing)}; the file is damaged or foreign")
        return cls(**{k: data[k] for k in fields})

    def differences(self, other: Fingerprint, part: Literal["identity", "precision"]) -> list[str]:
        """`field: mine != theirs` for each differing field of one part (unknown revisions never differ)."""
        out = []
        for field in self.IDENTITY if part == "identity" else self.PRECISION:
            mine, theirs = getattr(self, field), getattr(other, field)
            if field == "revision" and (mine is None or theirs is None):
                continue
            if mine != theirs:
                out.append(f"{field}: {mine!r} != {theirs!r}")
        return out


def quantization(model: nn.Module) -> str | None:
    inner = unwrap(model)
    if getattr(inner, "is_loaded_in_4bit", False):
        qc = getattr(inner.config, "quantization_config", None)
        kind = getattr(qc, "bnb_4bit_quant_type", None) if qc is not None else None
        return f"4bit-{kind}" if kind else "4bit"
    if getattr(inner, "is_loaded_in_8bit", False):
        return "8bit"
    return None


def fingerprint(model: nn.Module) -> Fingerprint:
    inner = unwrap(model)
    config = inner.config
    text = config.get_text_config()
    architectures = getattr(config, "architectures", None) or [type(inner).__name__]
    return Fingerprint(
        name_or_path=str(getattr(config, "_name_or_path", "") or ""),
        revision=getattr(config, "_commit_hash", None),
        architecture=str(architectures[0]),
        hidden_size=int(text.hidden_size),
        n_layers=int(text.num_hidden_layers),
        vocab_size=int(text.vocab_size),
        dtype=str(inner.dtype).removeprefix("torch."),
        quantization=quantization(inner),
    )


def warn_if_made_for_another(saved: Fingerprint | None, model: nn.Module, what: str) -> None:
    """A file read onto a model whose identity differs from the one it was made on: logged, not refused
    (a direction can transfer between revisions of one model; the hidden size and layers are checked)."""
    differences = saved.differences(fingerprint(model), "identity") if saved is not None else []
    if differences:
        logger.warning(f"{what} was trained on another model: {'; '.join(differences)}")


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


def load_model(
    name_or_path: str | os.PathLike[str],
    quant: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer, in eval mode, left-padded, with a pad token.

    A BERT-style encoder (`ENCODER_TYPES`, e.g. all-MiniLM-L6-v2) loads through `AutoModel` instead: it can be
    read (capture, Vector, Readout) but not generated from.

    `quant="4bit"` (nf4, double quantisation) or `"8bit"` go through bitsandbytes, which also runs on CPU.
    `dtype=None` picks float32 on CPU (the only fast CPU dtype, and what 4-bit on CPU needs for its
    non-quantised parameters) and bfloat16 on a GPU that supports it.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if quant not in (None, "4bit", "8bit"):
        raise SteerhealError(f"quant={quant!r}: use None, '4bit' or '8bit'")
    device = device or default_device()
    torch_dtype = _parse_dtype(dtype, device)
    if device == "cpu" and torch_dtype != torch.float32:
        logger.warning(f"{torch_dtype} on CPU is much slower than float32 here; pass dtype='float32'")
    source = str(name_or_path)
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
