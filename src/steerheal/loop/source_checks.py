"""The corpus / readout / vector sources checked before any model loads: folders, concept names, the saved
direction against the model's config, and whether later rounds have texts to re-extract from.

A readout or vector made for another model is refused (hidden size, layers, and the fingerprint's architecture,
depth and vocabulary where the model's config can be read without weights); a foreign readout has no
fingerprint, so it is accepted with a warning once its hidden size and layers fit. Each message names the flag.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerheal.errors import SteerhealError
from steerheal.lm.fingerprint import Fingerprint
from steerheal.log import logger
from steerheal.loop.model_spec import model_sizes
from steerheal.loop.runconfig import ConceptConfig, RunConfig
from steerheal.read.corpus import Corpus
from steerheal.read.readout_open import open_readout
from steerheal.read.vector import Vector

NO_REEXTRACT = "--concept.no-reextract"
OWN_FIELDS = {"readout": ("readout",), "vector": ("vector",)}  # fields only that source reads
NAMED = ("corpus", "readout", "vector")  # sources that read --concept.name / --concept.off-target-name


def _flag(field: str) -> str:
    return "--concept." + field.replace("_", "-")


def _opened(field: str, path: Path, open_: Any) -> Any:
    """`open_(path)`, with an error that names the flag it came from."""
    try:
        return open_(path)
    except SteerhealError as err:
        raise SteerhealError(f"{_flag(field)} {str(path)!r}: {err}") from err


def _name(c: ConceptConfig, field: str, available: list[str], where: str) -> str:
    """A concept name that exists in `where`; the message lists the available ones."""
    value = getattr(c, field)
    if value is None:
        raise SteerhealError(f"--concept.source {c.source} needs {_flag(field)}: one of {where}'s {available}")
    if value not in available:
        raise SteerhealError(f"{_flag(field)} {value!r}: not a concept of {where}; it has {available}")
    return str(value)


def _off_target(c: ConceptConfig, available: list[str], where: str) -> None:
    if c.off_target_name is not None:
        _name(c, "off_target_name", available, where)
        if c.off_target_name == c.name:
            raise SteerhealError("--concept.off-target-name must differ from --concept.name")
    elif not [a for a in available if a != c.name]:
        raise SteerhealError(
            f"{where} has no concept besides {c.name!r}; the off-target control needs another one: use a corpus "
            "with two concepts or more"
        )


def check_fit(model: str, hidden: int, layers: list[int], fp: Fingerprint | None, what: str) -> None:
    """A saved direction against the model's config (read without weights); a file without a fingerprint is
    accepted with a warning."""
    sizes = model_sizes(model)
    if sizes is not None:
        if sizes["hidden_size"] != hidden:
            raise SteerhealError(
                f"{what} has hidden size {hidden} but {model} has {sizes['hidden_size']}: it was made for another "
                "model; pass the model it was made for (--model) or a file made for this one"
            )
        bad = [k for k in layers if not 0 <= k < sizes["n_layers"]]
        if bad:
            raise SteerhealError(f"{what} has layers {bad}, but {model} has blocks 0..{sizes['n_layers'] - 1}")
        if fp is not None:
            mine = {"architecture": fp.architecture, "n_layers": fp.n_layers, "vocab_size": fp.vocab_size}
            differ = [f"{k}: {v!r} != {sizes[k]!r}" for k, v in mine.items() if k in sizes and sizes[k] != v]
            if differ:
                raise SteerhealError(
                    f"{what} was made for another model than {model} ({'; '.join(differ)}); pass the model it was "
                    "made for (--model) or a file made for this one"
                )
    if fp is None:
        checked = "its hidden size and layers" if sizes is not None else "nothing yet (its size is checked on load)"
        logger.warning(
            f"{what} has no steerheal fingerprint (another tool wrote it): which model it was made for is unknown; "
            f"checked against {model}: {checked}"
        )


def _layers(c: ConceptConfig, saved: list[int], what: str) -> None:
    missing = [k for k in c.layers or () if k not in saved]
    if missing:
        raise SteerhealError(f"--concept.layers: {what} has no direction at {missing}; it has layers {saved}")


def _corpus(c: ConceptConfig, folder: Path, field: str = "corpus") -> list[str]:
    corpus = _opened(field, folder, Corpus.load)
    where = f"corpus {str(folder)!r}"
    _name(c, "name", list(corpus.concepts), where)
    _off_target(c, list(corpus.concepts), where)
    return list(corpus.concepts)


def _readout(config: RunConfig) -> None:
    from steerheal.loop.sources import readout_corpus

    c = config.concept
    if c.readout is None:
        raise SteerhealError("--concept.source readout needs --concept.readout DIR and --concept.name CONCEPT")
    readout, _ = _opened("readout", c.readout, open_readout)
    what = f"--concept.readout {str(c.readout)!r}"
    _name(c, "name", list(readout.concepts), f"readout {str(c.readout)!r}")
    check_fit(config.model, readout.hidden_size, readout.layers, readout.fingerprint, what)
    _layers(c, readout.layers, what)
    folder = readout_corpus(config, readout)
    if folder is not None:
        _corpus(c, folder)
        return
    recorded = readout.meta.get("corpus")
    if c.reextract:
        why = f"records its corpus {recorded!r}, which is not here" if recorded else "records no corpus"
        raise SteerhealError(
            f"{what} {why}, and later rounds re-extract the teacher on the student from a corpus: pass "
            f"--concept.corpus DIR (the corpus it was trained on), or {NO_REEXTRACT} to steer every round with "
            "the saved row"
        )
    _off_target(c, list(readout.concepts), f"readout {str(c.readout)!r}")


def _vector(config: RunConfig) -> None:
    c = config.concept
    if c.vector is None:
        raise SteerhealError("--concept.source vector needs --concept.vector DIR (a folder written by Vector.save)")
    vector = _opened("vector", c.vector, Vector.load)
    what = f"--concept.vector {str(c.vector)!r}"
    check_fit(config.model, vector.hidden_size, vector.layers, vector.fingerprint, what)
    _layers(c, vector.layers, what)
    persona = c.persona_file is not None or c.off_target_file is not None
    if c.corpus is not None and persona:
        raise SteerhealError("--concept.corpus and --concept.persona-file both given: re-extract from one of them")
    if c.corpus is not None:
        _corpus(c, c.corpus)
    elif persona:
        from steerheal.read.persona_files import Persona

        for field in ("persona_file", "off_target_file"):
            value = getattr(c, field)
            if value is None or not value.is_file():
                raise SteerhealError(
                    f"{_flag(field)} {value and str(value)!r}: the vector source re-extracts from a persona "
                    "contrast and its off-target; pass both persona JSON files"
                )
            Persona.load(value)
    elif c.reextract:
        raise SteerhealError(
            f"{what}: a Vector does not store the texts it was read from, and later rounds re-extract the teacher "
            "on the student: pass --concept.corpus DIR and --concept.name CONCEPT (or --concept.persona-file and "
            f"--concept.off-target-file), or {NO_REEXTRACT} to steer every round with the saved vector"
        )


def check_source(config: RunConfig) -> None:
    """The source's own options (and no other source's) before any model loads."""
    c = config.concept
    for source, fields in OWN_FIELDS.items():
        for field in fields:
            if getattr(c, field) is not None and c.source != source:
                raise SteerhealError(f"{_flag(field)} is read by --concept.source {source}, not {c.source}")
    if c.source not in NAMED:
        for field in ("corpus", "name", "off_target_name"):
            if getattr(c, field) is not None:
                raise SteerhealError(f"{_flag(field)} is read by --concept.source corpus, readout or vector only")
        return
    if c.source == "corpus":
        if c.corpus is None:
            raise SteerhealError(
                "--concept.source corpus needs --concept.corpus DIR (a corpus folder, corpus/ layout) and "
                "--concept.name CONCEPT"
            )
        _corpus(c, c.corpus)
    elif c.source == "readout":
        _readout(config)
    else:
        _vector(config)
