"""The decoder-block table: where each architecture keeps its blocks, and the sizes every stage reads.

Every other module reaches model internals through `decoder_layers`, so supporting a new layout is one
line in `DECODER_LAYER_PATHS` (and one in `MLP_OUT_PATHS` for the quality report's neuron check).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedModel

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.lm.dequant import dense_weight
from steerheal.log import logger

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


@checked
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
        f"steerheal.lm.blocks.DECODER_LAYER_PATHS."
    )


def mlp_write_directions(model: nn.Module, layer: int) -> Float[Tensor, "neurons hidden"]:
    """Block `layer`'s MLP output columns, one row per neuron (float32, CPU): what each neuron writes.

    bitsandbytes 4-bit and 8-bit weights are de-quantised first; other quantised layouts are refused.
    """
    inner = unwrap(model)
    model_type = getattr(inner.config, "model_type", None)
    if model_type not in MLP_OUT_PATHS:
        raise SteerhealError(
            f"no MLP output path is known for model_type {model_type!r}; add it to steerheal.lm.blocks.MLP_OUT_PATHS"
        )
    path, linear = MLP_OUT_PATHS[model_type]
    module = _resolve(decoder_layers(inner)[layer], path)
    weight = getattr(module, "weight", None)
    if weight is None:
        raise SteerhealError(f"block {layer} of {type(inner).__name__} has no weight at {path!r}")
    if weight.dtype == torch.int8 and getattr(weight, "SCB", None) is not None:  # bitsandbytes 8-bit, row scales
        weight = weight.data.float() * weight.SCB.float()[:, None] / 127
    elif getattr(weight, "quant_state", None) is not None or weight.dtype.is_floating_point:
        weight = dense_weight(weight, f"the MLP output weight of block {layer}")
    else:
        raise SteerhealError(
            f"the MLP output weight of block {layer} is stored as {weight.dtype} in a layout steerheal cannot "
            "de-quantise; load the model unquantised (or in 4-bit or 8-bit bitsandbytes) for the quality report"
        )
    weight = weight.detach().float().cpu()
    return weight.T if linear else weight


def block_hidden(output: Any) -> Tensor:
    """The hidden state in a decoder block's output (a tensor, or a tuple whose first entry it is)."""
    return output[0] if isinstance(output, tuple) else output


def model_device(model: nn.Module) -> torch.device:
    return unwrap(model).get_input_embeddings().weight.device
