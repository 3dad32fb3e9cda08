"""Tiny random models of every supported architecture, built offline, for tests and `fast-dev-run`.

A random model has no concepts, but it has every code path of a real one: the same classes, block
layouts, attention and caching, a real BPE tokenizer with a chat template. The initializer range is
raised from transformers' 0.02 so that steering can move the output distribution by several nats (at
0.02 the logits are near uniform and KL(steered‖base) stays near zero); `just tiny-init-sweep` measures
it and docs/tiny-models.md records the figures behind `TINY_INIT_RANGE`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.lm.attention import use_broadcast_mask

TINY_INIT_RANGE = 0.3
TINY_VOCAB = 512
TINY_CONTEXT = 512

BOS, END, PAD = "<|bos|>", "<|end|>", "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, END, SYSTEM, USER, ASSISTANT]

# Roles are single special tokens; the generation prompt ends *on* the assistant tag, so that
# position="prompt_end" reads the assistant tag itself.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@cache
def _tokenizer_json() -> str:
    """Byte-level BPE trained on the text shipped in steerheal/data (deterministic, ~0.1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    text = resources.files("steerheal.data").joinpath("tiny_corpus.txt").read_text(encoding="utf-8")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(text.splitlines(), trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return bpe.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer object (callers may mutate it) over the cached trained BPE."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        padding_side="left",  # set in the constructor: a later assignment is lost on reload
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids (they break generate)
        chat_template=CHAT_TEMPLATE,
        model_max_length=TINY_CONTEXT,
    )


def _config(arch: str, n_layers: int, hidden: int, init_range: float, tok: PreTrainedTokenizerFast) -> Any:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    heads = max(2, hidden // 16)
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        max_position_embeddings=TINY_CONTEXT,
        initializer_range=init_range,
        **ids,
    )
    gqa = dict(num_key_value_heads=max(1, heads // 2), head_dim=hidden // heads)
    builders: dict[str, Any] = {
        "llama": lambda: LlamaConfig(**common, **gqa),
        "mistral": lambda: MistralConfig(**common, **gqa, sliding_window=None),
        "qwen2": lambda: Qwen2Config(**common, **gqa),
        "qwen3": lambda: Qwen3Config(**common, **gqa),
        "gemma2": lambda: Gemma2Config(**common, **gqa, query_pre_attn_scalar=hidden // heads),
        "gemma3": lambda: Gemma3TextConfig(**common, **gqa, query_pre_attn_scalar=hidden // heads),
        "phi3": lambda: Phi3Config(**common, num_key_value_heads=heads),
        "gpt_neox": lambda: GPTNeoXConfig(**common),
        "gpt2": lambda: GPT2Config(
            vocab_size=len(tok),
            n_embd=hidden,
            n_layer=n_layers,
            n_head=heads,
            n_positions=TINY_CONTEXT,
            initializer_range=init_range,
            **ids,
        ),
    }
    return builders[arch]()


TINY_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt_neox", "gpt2")


def seeded_model(config: PretrainedConfig, seed: int, name: str, pad_token_id: int) -> PreTrainedModel:
    """A float32 causal LM with weights drawn from `seed` (the global RNG is left as it was), named `name`."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config._name_or_path = name
    model.config.architectures = [type(model).__name__]
    model.generation_config.pad_token_id = pad_token_id
    return model


@checked
def tiny_model(
    arch: str,
    seed: int = 0,
    n_layers: int = 4,
    hidden_size: int = 64,
    init_range: float = TINY_INIT_RANGE,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random fp32 causal LM of `arch` (see `TINY_ARCHS`) and its tokenizer; same seed, same weights.

    Save it with `model.save_pretrained(d); tok.save_pretrained(d)` and it loads back through
    `load_model(d)` like any checkpoint.
    """
    if arch not in TINY_ARCHS:
        raise SteerhealError(f"tiny_model: unknown arch {arch!r}; choose one of {list(TINY_ARCHS)}")
    if n_layers < 4:
        raise SteerhealError(f"tiny_model: n_layers={n_layers}; at least 4 blocks, so that layer choices matter")
    if hidden_size % 32:
        raise SteerhealError(f"tiny_model: hidden_size={hidden_size} must be a multiple of 32 (heads of 16)")
    tok = tiny_tokenizer()
    config: PretrainedConfig = _config(arch, n_layers, hidden_size, init_range, tok)
    model = seeded_model(config, seed, f"tiny-{arch}-seed{seed}-L{n_layers}-d{hidden_size}", tok.pad_token_id)
    model.eval()
    use_broadcast_mask(model)
    return model, tok
