"""persona_contrast on templates with and without a system role, and without a template."""

from __future__ import annotations

import pytest

import steerheal as sh
from conftest import tiny
from steerheal.lm.tiny import tiny_tokenizer
from steerheal.read.persona import persona_contrast

PROMPTS = ["Tell me about the harbour.", "Describe a garden."]
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def test_system_role_template_differs_only_in_the_system_prompt_and_ends_on_the_tag():
    _, tok = tiny("llama")
    pos, neg = persona_contrast(tok, "You are joyful.", "You are gloomy.", PROMPTS)
    assert pos[0] == "<|bos|><|system|>You are joyful.<|end|><|user|>Tell me about the harbour.<|end|><|assistant|>"
    assert neg[0] == pos[0].replace("joyful", "gloomy")
    for text in pos + neg:
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")


def test_template_without_system_role_prepends_the_instruction(logs):
    tok = tiny_tokenizer()
    tok.chat_template = NO_SYSTEM_TEMPLATE
    pos, neg = persona_contrast(tok, "You are joyful.", "You are gloomy.", PROMPTS)
    assert pos[1] == "<|bos|><|user|>You are joyful.\n\nDescribe a garden.<|end|><|assistant|>"
    assert neg[1] == "<|bos|><|user|>You are gloomy.\n\nDescribe a garden.<|end|><|assistant|>"
    assert any("no system role" in m for m in logs)


def test_no_chat_template_gives_plain_instruction_then_prompt(logs):
    tok = tiny_tokenizer()
    tok.chat_template = None
    pos, neg = persona_contrast(tok, "You are joyful.", "You are gloomy.", PROMPTS)
    assert (pos[0], neg[0]) == (
        "You are joyful.\n\nTell me about the harbour.",
        "You are gloomy.\n\nTell me about the harbour.",
    )
    assert any("no chat template" in m for m in logs)


def test_template_keyword_arguments_pass_through():
    tok = tiny_tokenizer()
    tok.chat_template = (
        tok.chat_template + "{% if enable_thinking is defined and not enable_thinking %}<|end|>{% endif %}"
    )
    thinking, _ = persona_contrast(tok, "A.", "B.", PROMPTS)
    quiet, _ = persona_contrast(tok, "A.", "B.", PROMPTS, enable_thinking=False)
    assert quiet[0] == thinking[0] + "<|end|>"


def test_persona_vector_reads_at_prompt_end():
    model, tok = tiny("qwen3")
    pos, neg = persona_contrast(tok, "You are joyful.", "You are gloomy.", [f"Tell me story {i}." for i in range(6)])
    v = sh.Vector.train(model, tok, pos, neg, position="prompt_end")
    scores = v.project(model, tok, pos + neg)
    assert (scores[:6].min(0).values > scores[6:].max(0).values).all()


def test_persona_contrast_bad_input():
    tok = tiny_tokenizer()
    with pytest.raises(sh.SteerhealError, match="user_prompts is empty"):
        persona_contrast(tok, "A.", "B.", [])
    with pytest.raises(sh.SteerhealError, match="identical"):
        persona_contrast(tok, "A.", "A.", PROMPTS)
    with pytest.raises(sh.SteerhealError, match="non-empty"):
        persona_contrast(tok, " ", "B.", PROMPTS)
    with pytest.raises(sh.SteerhealError, match=r"user_prompts\[1\] is empty"):
        persona_contrast(tok, "A.", "B.", ["fine", ""])
