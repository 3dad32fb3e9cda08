"""Persona contrasts: the same user prompts under two system prompts, ending at the assistant tag.

Read with `position="prompt_end"`, the mean difference is the teacher vector of the steering-distillation
papers: where the model has read the instruction and the prompt and is about to answer.

- A chat template with a system role renders `[system, user]` with the generation prompt.
- A template that refuses a system message (it raises, as Gemma 2's does) gets the instruction
  prepended to the user turn: `instruction + "\\n\\n" + prompt`, logged once per call.
- A tokenizer without a chat template gets the plain text `instruction + "\\n\\n" + prompt`.
Template keyword arguments (for example `enable_thinking=False`) pass through to the template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from steerheal.boundary import checked
from steerheal.errors import SteerhealError
from steerheal.log import logger


def _render(
    tok: PreTrainedTokenizerBase, system: str, prompt: str, template_kwargs: dict[str, Any]
) -> tuple[str, bool]:
    """(text, whether the system role was folded into the user turn)."""
    if tok.chat_template is None:
        return f"{system}\n\n{prompt}", False
    messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)
        return text, False
    except Exception:  # jinja raises TemplateError (or whatever the template's raise_exception gives)
        folded = [{"role": "user", "content": f"{system}\n\n{prompt}"}]
        text = tok.apply_chat_template(folded, tokenize=False, add_generation_prompt=True, **template_kwargs)
        return text, True


@checked
def persona_contrast(
    tok: PreTrainedTokenizerBase,
    system_pos: str,
    system_neg: str,
    user_prompts: Sequence[str],
    **template_kwargs: Any,
) -> tuple[list[str], list[str]]:
    """(pos_texts, neg_texts): templated prompts that differ only in the system instruction."""
    if not system_pos.strip() or not system_neg.strip():
        raise SteerhealError("persona_contrast: system_pos and system_neg must both be non-empty instructions")
    if system_pos == system_neg:
        raise SteerhealError("persona_contrast: system_pos and system_neg are identical; there is nothing to contrast")
    if len(user_prompts) == 0:
        raise SteerhealError("persona_contrast: user_prompts is empty; pass the neutral prompts to contrast over")
    pos, neg, folded = [], [], False
    for i, prompt in enumerate(user_prompts):
        if not prompt.strip():
            raise SteerhealError(f"persona_contrast: user_prompts[{i}] is empty")
        text_pos, folded_pos = _render(tok, system_pos, prompt, template_kwargs)
        text_neg, _ = _render(tok, system_neg, prompt, template_kwargs)
        pos.append(text_pos)
        neg.append(text_neg)
        folded = folded or folded_pos
    if tok.chat_template is None:
        logger.info("persona_contrast: the tokenizer has no chat template; using plain 'instruction\\n\\nprompt' texts")
    elif folded:
        logger.info("persona_contrast: the chat template has no system role; the instruction leads the user turn")
    return pos, neg
