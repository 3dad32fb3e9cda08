"""steerheal: concept readouts into conditioned LoRA weights.

Read concept directions from a causal LM, dose them by iso-KL, distil and heal them into gated LoRA
rounds, bake them, and verify that they survived. See README.md and spec.md.

With BEARTYPE=1 in the environment every steerheal module is imported under jaxtyping's import hook, so
each annotated function checks its argument types and tensor shapes with beartype at call time.
"""

import os
from contextlib import AbstractContextManager, nullcontext


def _shape_checked() -> AbstractContextManager[object]:
    """jaxtyping's import hook for steerheal's own modules, or nothing when BEARTYPE is not 1."""
    if os.environ.get("BEARTYPE") != "1":
        return nullcontext()
    # torch and transformers first: every import made while the hook is installed is about 2x slower.
    import torch  # noqa: F401
    from jaxtyping import install_import_hook
    from transformers import PreTrainedModel, PreTrainedTokenizerBase  # noqa: F401

    import steerheal.typecheck  # noqa: F401 (the hook calls steerheal.typecheck.checker)

    return install_import_hook("steerheal", "steerheal.typecheck.checker")


with _shape_checked():
    from steerheal.read import monitor as _monitor  # noqa: F401 (imported to be shape-checked)
    from steerheal.read import quality as _quality  # noqa: F401 (imported to be shape-checked)
    from steerheal import toyworld
    from steerheal.adapter.gated import GatedLoRA
    from steerheal.read.capture import capture, capture_tokens
    from steerheal.read.corpus import Corpus, Persona, load_personas
    from steerheal.errors import SteerhealError
    from steerheal.files import steerheal_version
    from steerheal.dose.filters import FilterConfig
    from steerheal.lm.generate import sample
    from steerheal.training.heal import HealConfig, HealResult, heal
    from steerheal.loop.rounds import load_run, run
    from steerheal.lm.model import Fingerprint, decoder_layers, fingerprint, load_model
    from steerheal.dose.pairs import PreferencePair, SamplingConfig, dose_walk, make_pairs, read_pairs, write_pairs
    from steerheal.read.persona import persona_contrast
    from steerheal.read.readout import Readout
    from steerheal.loop.runconfig import RunConfig, preset
    from steerheal.lm.tiny import TINY_ARCHS, tiny_model
    from steerheal.toyworld import report as _toyworld_report  # noqa: F401 (imported to be shape-checked)
    from steerheal.read.vector import Vector

__version__ = steerheal_version()

__all__ = [
    "TINY_ARCHS",
    "Corpus",
    "FilterConfig",
    "Fingerprint",
    "GatedLoRA",
    "HealConfig",
    "HealResult",
    "Persona",
    "PreferencePair",
    "Readout",
    "RunConfig",
    "SamplingConfig",
    "SteerhealError",
    "Vector",
    "__version__",
    "capture",
    "capture_tokens",
    "decoder_layers",
    "dose_walk",
    "fingerprint",
    "heal",
    "load_model",
    "load_personas",
    "load_run",
    "make_pairs",
    "persona_contrast",
    "preset",
    "read_pairs",
    "run",
    "sample",
    "tiny_model",
    "toyworld",
    "write_pairs",
]
