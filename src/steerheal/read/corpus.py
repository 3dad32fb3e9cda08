"""Concept corpora on disk: which texts are each concept's positives and negatives.

Layout of a corpus folder (every file UTF-8; a file holds one or more texts separated by blank lines, so a
text is one paragraph):

    stories/<concept>.txt               stories that show the concept
    paired/<scenario>/<concept>.txt     one setting told with different concepts ...
    paired/<scenario>/baseline.txt      ... and neutrally (the cleanest contrast)
    direct/<concept>.txt                short direct texts
    direct/_<pool>.txt                  neutral texts: every concept's negatives, never a concept
    *.md                                notes (not read)

A concept's positives are its texts; its negatives are every other text of the corpus: the other
concepts', the baselines and the `_*.txt` pool. Texts are kept raw (no chat template) and de-duplicated, so
a capture pass over `corpus.texts` forwards each unique text once however many concepts use it.
Everything is validated here, before any model loads. Persona prompt files live in `persona_files.py`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from steerheal.boundary import check_methods
from steerheal.errors import SteerhealError
from steerheal.log import logger

FOLDERS = ("stories", "paired", "direct")
BASELINE = "baseline"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BLANK_LINES = re.compile(r"\n[ \t]*\n")
DEFAULT_MIN_POSITIVES = 3


@dataclass(frozen=True)
class Source:
    """Where a text was read: `path` relative to the corpus folder, its place in the file, its role."""

    path: str
    index: int
    kind: str  # "stories" | "paired" | "direct" | "baseline" | "pool"
    concept: str | None  # None for baselines and the pool

    def __str__(self) -> str:
        return f"{self.path} (text {self.index + 1})"


@dataclass(frozen=True)
class Corpus:
    """Unique raw texts, where each came from, and the concept names (sorted)."""

    root: Path
    texts: tuple[str, ...]
    sources: tuple[tuple[Source, ...], ...]  # per text, every place it appears
    concepts: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.sources):
            raise SteerhealError("Corpus: texts and sources differ in length")
        found = sorted({s.concept for group in self.sources for s in group if s.concept is not None})
        if not self.concepts:
            object.__setattr__(self, "concepts", tuple(found))
        elif list(self.concepts) != found:
            raise SteerhealError(f"Corpus: concepts {list(self.concepts)} do not match the texts' {found}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, directory: str | Path, min_positives: int = DEFAULT_MIN_POSITIVES) -> Corpus:
        """Read and validate a corpus folder (see the module docstring for the layout and the rules)."""
        if isinstance(min_positives, bool) or not isinstance(min_positives, int) or min_positives < 1:
            raise SteerhealError(f"min_positives={min_positives!r} must be a positive integer")
        root = Path(directory)
        if not root.is_dir():
            raise SteerhealError(f"corpus folder {str(root)!r} does not exist (expected stories/, paired/, direct/)")
        entries = _read_folder(root)
        corpus = _from_entries(root, entries)
        if not corpus.concepts:
            raise SteerhealError(
                f"corpus {str(root)!r} has no concepts: put texts in stories/<concept>.txt, "
                "paired/<scenario>/<concept>.txt or direct/<concept>.txt"
            )
        few = {c: n for c, n in corpus.counts().items() if n < min_positives}
        if few:
            listed = ", ".join(f"{c} ({n})" for c, n in sorted(few.items()))
            raise SteerhealError(
                f"corpus {str(root)!r}: concepts with fewer than min_positives={min_positives} texts: {listed}; "
                "write more texts for them, drop them, or lower min_positives"
            )
        return corpus

    # ------------------------------------------------------------------ views
    @cached_property
    def _labels(self) -> Tensor:
        index = {c: j for j, c in enumerate(self.concepts)}
        out = torch.zeros(len(self.texts), len(self.concepts), dtype=torch.bool)
        for i, group in enumerate(self.sources):
            for s in group:
                if s.concept is not None:
                    out[i, index[s.concept]] = True
        return out

    @property
    def labels(self) -> Bool[Tensor, "n_texts n_concepts"]:
        """`labels[i, j]`: text i is a positive of concept j (a text may be positive for several)."""
        return self._labels.clone()

    def _check_concept(self, concept: str) -> int:
        if concept not in self.concepts:
            raise SteerhealError(f"concept {concept!r} is not in this corpus; it has {list(self.concepts)}")
        return self.concepts.index(concept)

    def positives(self, concept: str) -> list[str]:
        j = self._check_concept(concept)
        return [t for t, row in zip(self.texts, self.labels, strict=True) if row[j]]

    def negatives(self, concept: str) -> list[str]:
        """Every text that is not one of the concept's: other concepts', baselines, the neutral pool."""
        j = self._check_concept(concept)
        return [t for t, row in zip(self.texts, self.labels, strict=True) if not row[j]]

    def counts(self) -> dict[str, int]:
        """Positives per concept."""
        return dict(zip(self.concepts, (int(n) for n in self.labels.sum(0)), strict=True))

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return f"Corpus({str(self.root)!r}, {len(self.concepts)} concepts, {len(self.texts)} unique texts)"

    # ------------------------------------------------------------------ derived corpora
    def _keep(self, rows: Sequence[int], concepts: Sequence[str] | None = None) -> Corpus:
        keep = set(self.concepts if concepts is None else concepts)
        texts, sources = [], []
        for i in rows:
            group = tuple(s for s in self.sources[i] if s.concept is None or s.concept in keep)
            if group:
                texts.append(self.texts[i])
                sources.append(group)
        return Corpus(self.root, tuple(texts), tuple(sources))

    def subset(self, names: Sequence[str]) -> Corpus:
        """Only the named concepts. The others' texts leave the corpus (they are no longer anyone's
        negatives); baselines and the neutral pool stay."""
        if isinstance(names, str) or len(names) == 0:
            raise SteerhealError(f"subset needs a non-empty list of concept names, got {names!r}")
        for name in names:
            self._check_concept(name)
        if len(set(names)) != len(names):
            raise SteerhealError(f"subset: names {list(names)} has duplicates")
        return self._keep(range(len(self.texts)), names)

    def split(self, frac: float, seed: int = 0) -> tuple[Corpus, Corpus]:
        """(train, held-out): per concept, `round(frac · n)` of its texts held out (at least one, and at
        least one kept), the neutral texts likewise; seeded and independent of file order."""
        if not 0 < frac < 1:
            raise SteerhealError(f"split: frac={frac} must be strictly between 0 and 1")
        counts = self.counts()
        small = sorted(c for c, n in counts.items() if n < 2)
        if small:
            raise SteerhealError(f"split: concepts {small} have fewer than 2 texts, so one side would lack them")
        rng = random.Random(f"steerheal.corpus.split:{seed}")  # wave 1's seed string: documented splits stay
        labels = self.labels
        held: set[int] = set()
        for j in range(len(self.concepts)):
            rows = sorted((i for i in range(len(self.texts)) if labels[i, j]), key=lambda i: self.texts[i])
            want = min(max(1, round(frac * len(rows))), len(rows) - 1)
            have = sum(i in held for i in rows)
            free = [i for i in rows if i not in held]
            rng.shuffle(free)
            for i in free[: max(0, want - have)]:
                held.add(i)
            if not any(i not in held for i in rows):  # shared texts may have taken them all
                held.discard(rows[0])
        neutral = sorted((i for i in range(len(self.texts)) if not labels[i].any()), key=lambda i: self.texts[i])
        rng.shuffle(neutral)
        held.update(neutral[: round(frac * len(neutral))])
        train = [i for i in range(len(self.texts)) if i not in held]
        return self._keep(train), self._keep(sorted(held))

    # ------------------------------------------------------------------ summary
    def stats(self, tok: PreTrainedTokenizerBase | None = None) -> Any:
        """A polars table: per concept its texts by kind, its negatives and text lengths (also in tokens
        with `tok`); a last row `(neutral)` counts the baselines and the pool."""
        import polars as pl

        labels = self.labels
        groups: list[tuple[str, str | None, list[int]]] = [
            (c, c, [i for i in range(len(self.texts)) if labels[i, j]]) for j, c in enumerate(self.concepts)
        ]
        groups.append(("(neutral)", None, [i for i in range(len(self.texts)) if not labels[i].any()]))
        rows = []
        for name, concept, mine in groups:
            kinds = [s.kind for i in mine for s in self.sources[i] if s.concept == concept]
            words = [len(self.texts[i].split()) for i in mine] or [0]
            row: dict[str, Any] = {
                "concept": name,
                "texts": len(mine),
                **{kind: kinds.count(kind) for kind in ("stories", "paired", "direct", "baseline", "pool")},
                "negatives": None if concept is None else len(self.texts) - len(mine),
                "words_mean": sum(words) / len(words),
                "words_min": min(words),
                "words_max": max(words),
            }
            if tok is not None:
                lengths = [len(tok(self.texts[i])["input_ids"]) for i in mine] or [0]
                row["tokens_mean"] = sum(lengths) / len(lengths)
                row["tokens_max"] = max(lengths)
            rows.append(row)
        return pl.DataFrame(rows)


check_methods(Corpus)


# ---------------------------------------------------------------------- reading and validation


@dataclass(frozen=True)
class _Entry:
    text: str
    source: Source


def _check_name(name: str, path: Path, root: Path) -> None:
    if not NAME.fullmatch(name):
        raise SteerhealError(
            f"corpus {str(root)!r}: {path.relative_to(root)} is named {name!r}, not a plain identifier "
            "(letters, digits and underscores, not starting with a digit); rename it"
        )


def read_texts(path: Path, root: Path) -> list[str]:
    """The blank-line separated texts of one UTF-8 file; an empty or non-UTF-8 file is an error."""
    shown = path.relative_to(root)
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SteerhealError(
            f"corpus {str(root)!r}: {shown} is not UTF-8 ({err.reason} at byte {err.start}); re-save it as UTF-8"
        ) from err
    texts = [t.strip() for t in BLANK_LINES.split(raw.replace("\r\n", "\n").replace("\r", "\n").strip())]
    texts = [t for t in texts if t]
    if not texts:
        raise SteerhealError(f"corpus {str(root)!r}: {shown} is empty; write texts into it or delete it")
    return texts


def visible_entries(folder: Path) -> list[Path]:
    """The folder's entries, sorted, without hidden files (editor and OS droppings such as .DS_Store)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _txt_files(folder: Path, root: Path) -> list[Path]:
    out = []
    for path in visible_entries(folder):
        if not path.is_file() or path.suffix != ".txt":
            raise SteerhealError(
                f"corpus {str(root)!r}: unexpected {path.relative_to(root)} (only .txt files belong in "
                f"{folder.relative_to(root)}/); move or rename it"
            )
        out.append(path)
    return out


def _read_folder(root: Path) -> list[_Entry]:
    for path in visible_entries(root):
        if path.is_dir() and path.name not in FOLDERS:
            raise SteerhealError(
                f"corpus {str(root)!r}: unexpected folder {path.name}/ (a corpus has {', '.join(FOLDERS)}); "
                "rename or remove it"
            )
        if path.is_file() and path.suffix != ".md":
            raise SteerhealError(
                f"corpus {str(root)!r}: unexpected file {path.name} at the top level (texts go in "
                f"{', '.join(FOLDERS)}; only .md notes may sit beside them)"
            )
    entries: list[_Entry] = []

    def add(path: Path, kind: str, concept: str | None) -> None:
        rel = path.relative_to(root).as_posix()
        entries.extend(_Entry(t, Source(rel, i, kind, concept)) for i, t in enumerate(read_texts(path, root)))

    if (root / "stories").is_dir():
        for path in _txt_files(root / "stories", root):
            _check_concept_name(path, root)
            add(path, "stories", path.stem)
    if (root / "paired").is_dir():
        for scenario in visible_entries(root / "paired"):
            if not scenario.is_dir():
                raise SteerhealError(
                    f"corpus {str(root)!r}: paired/ holds scenario folders, but {scenario.relative_to(root)} "
                    "is a file; put it in paired/<scenario>/"
                )
            _check_name(scenario.name, scenario, root)
            files = _txt_files(scenario, root)
            if not any(p.stem == BASELINE for p in files):
                raise SteerhealError(
                    f"corpus {str(root)!r}: {scenario.relative_to(root)}/ has no baseline.txt; a paired scenario "
                    "needs the neutral telling of its setting"
                )
            concepts = [p for p in files if p.stem != BASELINE]
            if not concepts:
                raise SteerhealError(
                    f"corpus {str(root)!r}: {scenario.relative_to(root)}/ has only a baseline; add "
                    "<concept>.txt files told in the same setting"
                )
            add(scenario / f"{BASELINE}.txt", "baseline", None)
            for path in concepts:
                _check_concept_name(path, root)
                add(path, "paired", path.stem)
    if (root / "direct").is_dir():
        for path in _txt_files(root / "direct", root):
            if path.stem.startswith("_"):
                _check_name(path.stem, path, root)
                add(path, "pool", None)
            else:
                _check_concept_name(path, root)
                add(path, "direct", path.stem)
    return entries


def _check_concept_name(path: Path, root: Path) -> None:
    _check_name(path.stem, path, root)
    if path.stem.startswith("_"):
        raise SteerhealError(
            f"corpus {str(root)!r}: {path.relative_to(root)} starts with '_', which marks the neutral pool; "
            "neutral texts go in direct/_<name>.txt, concepts need a name without a leading underscore"
        )
    if path.stem == BASELINE and path.parent.parent.name != "paired":
        raise SteerhealError(
            f"corpus {str(root)!r}: {path.relative_to(root)}: 'baseline' is reserved for paired/<scenario>/baseline.txt"
        )


def _from_entries(root: Path, entries: list[_Entry]) -> Corpus:
    """De-duplicate texts (warning, with both places, whenever a text appears twice)."""
    index: dict[str, int] = {}
    texts: list[str] = []
    sources: list[list[Source]] = []
    for entry in entries:
        if entry.text in index:
            i = index[entry.text]
            first = sources[i][0]
            both = {s.concept for s in sources[i]} | {entry.source.concept}
            role = f"a positive of {sorted(c for c in both if c)}" if any(both) else "neutral in both places"
            logger.warning(
                f"corpus {str(root)!r}: the same text appears in {first} and in {entry.source}; it is forwarded "
                f"once and is {role}. Remove one copy unless that is intended. It starts {entry.text[:60]!r}"
            )
            sources[i].append(entry.source)
        else:
            index[entry.text] = len(texts)
            texts.append(entry.text)
            sources.append([entry.source])
    return Corpus(root, tuple(texts), tuple(tuple(s) for s in sources))
