"""Persona files: `personas/<name>.json`, two system prompts and the neutral user prompts to contrast them over.

A file is validated whole before any model work (keys, types, an identical pair, non-identifier names);
`Persona.contrast(tok)` gives the `persona_contrast` texts, read at `prompt_end`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from steerheal.boundary import check_methods, checked
from steerheal.errors import SteerhealError
from steerheal.log import logger
from steerheal.read.corpus import NAME, visible_entries
from steerheal.read.persona import persona_contrast

PERSONA_KEYS = frozenset({"system_pos", "system_neg", "prompts"})
PERSONA_OPTIONAL = frozenset({"description"})


@dataclass(frozen=True)
class Persona:
    """Two system prompts to contrast over neutral user prompts (`personas/<name>.json`)."""

    name: str
    system_pos: str
    system_neg: str
    prompts: tuple[str, ...]
    description: str = ""

    @classmethod
    def load(cls, path: str | Path) -> Persona:
        path = Path(path)
        what = f"persona file {str(path)!r}"
        if not path.is_file():
            raise SteerhealError(f"{what} does not exist")
        if path.suffix != ".json":
            raise SteerhealError(f"{what}: persona files are <name>.json")
        if not NAME.fullmatch(path.stem):
            raise SteerhealError(f"{what}: the name {path.stem!r} is not a plain identifier; rename the file")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise SteerhealError(f"{what} is not UTF-8 ({err.reason}); re-save it as UTF-8") from err
        except json.JSONDecodeError as err:
            raise SteerhealError(f"{what} is not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise SteerhealError(f"{what} must hold a JSON object with keys {sorted(PERSONA_KEYS)}")
        missing, unknown = PERSONA_KEYS - set(data), set(data) - PERSONA_KEYS - PERSONA_OPTIONAL
        if missing or unknown:
            raise SteerhealError(
                f"{what}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}; a persona file holds "
                f"{sorted(PERSONA_KEYS)} (and optionally {sorted(PERSONA_OPTIONAL)})"
            )
        for key in ("system_pos", "system_neg"):
            if not isinstance(data[key], str) or not data[key].strip():
                raise SteerhealError(f"{what}: {key} must be a non-empty string")
        prompts = data["prompts"]
        if not isinstance(prompts, list) or not prompts:
            raise SteerhealError(f"{what}: prompts must be a non-empty list of user prompts")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise SteerhealError(f"{what}: prompts[{i}] must be a non-empty string")
        if len(set(prompts)) != len(prompts):
            logger.warning(f"{what}: some prompts repeat; each repeat is read again and weighs twice")
        if data["system_pos"] == data["system_neg"]:
            raise SteerhealError(f"{what}: system_pos and system_neg are identical; there is nothing to contrast")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise SteerhealError(f"{what}: description must be a string")
        return cls(path.stem, data["system_pos"], data["system_neg"], tuple(prompts), description)

    def contrast(self, tok: PreTrainedTokenizerBase, **template_kwargs: Any) -> tuple[list[str], list[str]]:
        """(pos, neg) templated prompts ending at the assistant tag: read them with position="prompt_end"."""
        return persona_contrast(tok, self.system_pos, self.system_neg, self.prompts, **template_kwargs)


check_methods(Persona)


@checked
def load_personas(directory: str | Path) -> dict[str, Persona]:
    """Every `<name>.json` of a personas folder, by name; anything else in it is an error."""
    root = Path(directory)
    if not root.is_dir():
        raise SteerhealError(f"personas folder {str(root)!r} does not exist")
    out = {}
    for path in visible_entries(root):
        if path.suffix == ".md" and path.is_file():
            continue
        if path.suffix != ".json" or not path.is_file():
            raise SteerhealError(f"personas folder {str(root)!r}: unexpected {path.name} (only <name>.json files)")
        persona = Persona.load(path)
        out[persona.name] = persona
    if not out:
        raise SteerhealError(f"personas folder {str(root)!r} holds no <name>.json persona files")
    return out
