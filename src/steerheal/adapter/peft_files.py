"""peft's adapter folder format (`adapter_config.json` + `adapter_model.safetensors`), written atomically.

steerheal writes rounds and exports in exactly the layout `PeftModel.save_pretrained` produces, so that
plain peft loads them with no steerheal installed (tested), but through steerheal's atomic writes: a
folder is never left with a half-written tensor file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from steerheal.files import atomic_save_safetensors, atomic_write_json, load_safetensors, read_json

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def lora_keys(module_name: str) -> tuple[str, str]:
    """The state-dict keys peft saves a module's LoRA factors under (adapter name stripped)."""
    prefix = f"base_model.model.{module_name}"
    return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight"


def write_adapter(folder: Path, config: Any, tensors: dict[str, Tensor]) -> None:
    """A peft LoRA folder from a `LoraConfig` and peft-keyed tensors (weights first, config last)."""
    atomic_save_safetensors(folder / WEIGHTS_FILE, {k: v.detach().cpu() for k, v in tensors.items()}, {"format": "pt"})
    data = config.to_dict()
    for key, value in data.items():
        if isinstance(value, set):
            data[key] = sorted(value)
    atomic_write_json(folder / CONFIG_FILE, data)


def read_weights(folder: Path, what: str) -> dict[str, Tensor]:
    """The tensors of a peft adapter folder, with errors that name the folder."""
    return load_safetensors(folder / WEIGHTS_FILE, what, "the adapter was not saved completely")


def read_config(folder: Path, what: str) -> dict[str, Any]:
    return read_json(folder / CONFIG_FILE, what)
