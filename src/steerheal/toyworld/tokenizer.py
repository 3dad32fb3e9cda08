"""toyworld's word-level tokenizer: one token per word, special tokens for turns, a jinja chat template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from steerheal.toyworld.world import (
    ASSISTANT,
    BOS,
    CHAT_TEMPLATE,
    EOT,
    PAD,
    SPECIAL_TOKENS,
    SYSTEM,
    UNK,
    USER,
    vocabulary,
)

CONTEXT = 128


def build_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {word: i for i, word in enumerate(vocabulary())}
    word_level = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    word_level.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    word_level.add_special_tokens(list(SPECIAL_TOKENS))
    word_level.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT,
    )
