"""Tokenizers built from a GGUF's metadata, because transformers 4.57's GGUF conversion gets them wrong.

- Gemma 3 (`tokenizer.ggml.model = llama`, no merges): transformers builds a Unigram model over the BPE
  ranks (`"Hello world"` -> `Hello ▁w or ld`, transformers issue 41494). SentencePiece BPE is bigram
  merging ranked by the merged piece's score, so a `tokenizers` BPE with merges generated from the scores
  (the rule of `convert_slow_tokenizer.generate_merges`) is the real tokenisation (checked against the
  `sentencepiece` library in tests/test_real_models.py).
- SmolLM2 (`gpt2`, `pre = smollm`): the BPE is right but eos comes out as `<|im_start|>`, add_bos_token as
  True (the GGUF says False) and `<|im_end|>` is not special.

docs/models.md lists what was wrong and what each tokenizer now does.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerFast

from steerheal.errors import SteerhealError

SPIECE_UNDERLINE = "\u2581"
# GGUF token types (the SentencePiece enum)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _spm_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """Every split (left, right) of a piece whose halves are pieces, ranked by that piece's score (higher
    first): SentencePiece's BPE encoder merges the adjacent pair whose concatenation scores best."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))]
        local = [m for m in local if m[0] in vocab and m[1] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def spm_bpe_backend(meta: dict[str, Any]) -> Any:
    """SentencePiece BPE (Gemma 3): score-ranked merges, byte fallback, spaces -> ▁, no dummy prefix."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE

    tokens = list(meta["tokenizer.ggml.tokens"])
    scores = [float(s) for s in meta["tokenizer.ggml.scores"]]
    types = [int(t) for t in meta["tokenizer.ggml.token_type"]]
    if meta.get("tokenizer.ggml.add_space_prefix", False):
        raise SteerhealError("a SentencePiece GGUF with add_space_prefix=True is not supported yet")
    # llama.cpp's converter pre-normalises user-defined pieces (▁ -> space); the real vocabulary has ▁▁, ▁▁▁...
    for i, kind in enumerate(types):
        if kind == USER_DEFINED and " " in tokens[i]:
            tokens[i] = tokens[i].replace(" ", SPIECE_UNDERLINE)
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SteerhealError("the GGUF vocabulary has duplicate pieces; it cannot be a SentencePiece model")
    mergeable = {tokens[i]: scores[i] for i, kind in enumerate(types) if kind in (NORMAL, USER_DEFINED)}
    unk = tokens[int(meta.get("tokenizer.ggml.unknown_token_id", 0))]
    merges = _spm_merges(vocab, mergeable)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", SPIECE_UNDERLINE)
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    # control pieces match raw text as special tokens; user-defined pieces are atomic and, as in SentencePiece,
    # matched after whitespace escaping
    added = []
    for i, kind in enumerate(types):
        if kind == CONTROL:
            added.append(AddedToken(tokens[i], special=True, normalized=False))
        elif kind == USER_DEFINED:
            added.append(AddedToken(tokens[i], special=False, normalized=SPIECE_UNDERLINE in tokens[i]))
    backend.add_tokens(added)
    _post_processor(backend, meta, tokens, bytelevel=False)
    return backend


def bytelevel_bpe_backend(meta: dict[str, Any]) -> Any:
    """Byte-level BPE with the GGUF's merges (SmolLM2); llama.cpp's `smollm` split is digits, then GPT-2's."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    tokens = list(meta["tokenizer.ggml.tokens"])
    types = [int(t) for t in meta["tokenizer.ggml.token_type"]]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    pre = meta.get("tokenizer.ggml.pre", "default")
    backend = Tokenizer(BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt-2", "gpt2"):
        backend.pre_tokenizer = byte_level
    else:
        raise SteerhealError(f"GGUF tokenizer.ggml.pre={pre!r} is not supported yet (known: smollm, gpt-2)")
    backend.decoder = decoders.ByteLevel()
    special = [
        AddedToken(tokens[i], special=kind == CONTROL, normalized=False)
        for i, kind in enumerate(types)
        if kind in (CONTROL, USER_DEFINED)
    ]
    backend.add_tokens(special)
    _post_processor(backend, meta, tokens, bytelevel=True)
    return backend


def _post_processor(backend: Any, meta: dict[str, Any], tokens: list[str], bytelevel: bool) -> None:
    """BOS/EOS added exactly as the GGUF's add_bos_token / add_eos_token say."""
    from tokenizers import processors

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    single, pair, special = "$A", "$A $B", {}
    if add_bos:
        single, pair = f"{tokens[bos_id]} $A", f"{tokens[bos_id]} $A {tokens[bos_id]} $B"
        special[tokens[bos_id]] = int(bos_id)
    if add_eos:
        single, pair = f"{single} {tokens[eos_id]}", f"{pair} {tokens[eos_id]}"
        special[tokens[eos_id]] = int(eos_id)
    steps = [processors.ByteLevel(trim_offsets=False)] if bytelevel else []
    if special:
        steps.append(processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(special.items())))
    if steps:
        backend.post_processor = steps[0] if len(steps) == 1 else processors.Sequence(steps)


def gguf_tokenizer(meta: dict[str, Any], pad_token: str | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer of a GGUF: bos/eos/unk/pad, add_bos_token and the chat template from its metadata
    (`pad_token` overrides the GGUF's pad; every control token but Gemma's `<unusedN>` is special)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind == "llama" and "tokenizer.ggml.merges" not in meta:
        backend = spm_bpe_backend(meta)
    elif kind == "gpt2":
        backend = bytelevel_bpe_backend(meta)
    else:
        raise SteerhealError(f"GGUF tokenizer.ggml.model={kind!r} is not supported yet (known: llama, gpt2)")
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        return None if meta.get(key) is None else tokens[int(meta[key])]

    kwargs: dict[str, Any] = {
        "tokenizer_object": backend,
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": pad_token if pad_token is not None else token("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get(f"{meta['general.architecture']}.context_length", 2048)),
    }
    if meta.get("tokenizer.chat_template"):
        kwargs["chat_template"] = meta["tokenizer.chat_template"]
    tok = PreTrainedTokenizerFast(**kwargs)
    named = {tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token}
    extra = [
        tokens[i]
        for i, kind in enumerate(meta["tokenizer.ggml.token_type"])
        if int(kind) == CONTROL and not tokens[i].startswith("<unused") and tokens[i] not in named
    ]
    if extra:  # e.g. SmolLM2's <|im_end|>, Gemma's <start_of_turn>: special in masks and skip_special_tokens
        tok.add_special_tokens({"additional_special_tokens": extra}, replace_additional_special_tokens=True)
    return tok
