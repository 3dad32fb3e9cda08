"""steerheal: concept readouts into conditioned LoRA weights.

Read concept directions from a causal LM, dose them by iso-KL, distil and heal them into gated LoRA
rounds, bake them, and verify that they survived. See README.md and spec.md.

The package is laid out by stage: `lm/` (the model and its text), `read/`, `adapter/`, `dose/`, `training/`,
`toyworld/`, `judges/`, `loop/`, then `cli.py`; each imports only from the stages before it (docs/architecture.md,
tests/test_layers.py).

With BEARTYPE=1 in the environment every steerheal module is imported under jaxtyping's import hook, so
each annotated function checks its argument types and tensor shapes with beartype at call time
(tests/test_layers.py checks that no module escapes it).

Quiet as a library: only warnings are shown until `steerheal.verbose()` (the CLI turns it on).
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
    from steerheal import dist as _dist  # noqa: F401 (imported to be shape-checked)
    from steerheal import toyworld
    from steerheal.adapter.bank import Bank
    from steerheal.adapter.gated import GatedLoRA
    from steerheal.dose.config import DoseConfig
    from steerheal.dose.filters import FilterConfig
    from steerheal.dose.pairs import PreferencePair, SamplingConfig, make_pairs, read_pairs, write_pairs
    from steerheal.dose.walk import dose_walk
    from steerheal.errors import SteerhealError
    from steerheal.files import steerheal_version
    from steerheal.judges import dominance as _dominance  # noqa: F401 (imported to be shape-checked)
    from steerheal.judges import frontier as _frontier  # noqa: F401 (imported to be shape-checked)
    from steerheal.judges import survival as _survival  # noqa: F401 (imported to be shape-checked)
    from steerheal.lm import gguf_cache as _gguf_cache  # noqa: F401 (imported to be shape-checked)
    from steerheal.lm import hub as _hub  # noqa: F401 (imported to be shape-checked)
    from steerheal.lm.blocks import decoder_layers
    from steerheal.lm.fingerprint import Fingerprint, fingerprint
    from steerheal.lm.generate import sample
    from steerheal.lm.load import load_model
    from steerheal.lm.tiny import TINY_ARCHS, tiny_model
    from steerheal.log import verbose
    from steerheal.loop import concept_parts as _concept_parts  # noqa: F401 (imported to be shape-checked)
    from steerheal.loop import report as _report  # noqa: F401 (imported to be shape-checked)
    from steerheal.loop import source_checks as _source_checks  # noqa: F401 (imported to be shape-checked)
    from steerheal.loop import sources as _sources  # noqa: F401 (imported to be shape-checked)
    from steerheal.loop.bank_run import run_bank
    from steerheal.loop.rounds import run
    from steerheal.loop.runconfig import RunConfig, preset
    from steerheal.loop.saved import load_run
    from steerheal.read import selection as _selection  # noqa: F401 (imported to be shape-checked)
    from steerheal.read.capture import capture, capture_tokens
    from steerheal.read.corpus import Corpus
    from steerheal.read.persona import persona_contrast
    from steerheal.read.persona_files import Persona, load_personas
    from steerheal.read.readout import Readout
    from steerheal.read.readout_open import open_readout as _open_readout  # noqa: F401 (shape-checked)
    from steerheal.read.sampler import Sampler, TransformersSampler, use_sampler
    from steerheal.read.vector import Vector
    from steerheal.toyworld import report as _toyworld_report  # noqa: F401 (imported to be shape-checked)
    from steerheal.training.heal import HealConfig, HealResult, heal

__version__ = steerheal_version()

__all__ = [
    "TINY_ARCHS",
    "Bank",
    "Corpus",
    "DoseConfig",
    "FilterConfig",
    "Fingerprint",
    "GatedLoRA",
    "HealConfig",
    "HealResult",
    "Persona",
    "PreferencePair",
    "Readout",
    "RunConfig",
    "Sampler",
    "SamplingConfig",
    "SteerhealError",
    "TransformersSampler",
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
    "run_bank",
    "sample",
    "tiny_model",
    "toyworld",
    "use_sampler",
    "verbose",
    "write_pairs",
]
