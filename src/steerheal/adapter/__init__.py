"""adapter: GatedLoRA, distilled rounds as gated peft LoRA adapters on one base (gate 0 = the base bit for bit),
laid out as peft's own `tuners/lora/`: the gated model, target selection, low-rank algebra, peft files, bake."""

from steerheal.adapter.bank import Bank
from steerheal.adapter.gated import GatedLoRA
from steerheal.adapter.round import Round

__all__ = ["Bank", "GatedLoRA", "Round"]
