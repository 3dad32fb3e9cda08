"""read: concept directions from the residual stream. Capture, direction methods, steering, Vector, persona
contrasts and persona files, corpora, Readout, the per-token monitor and the quality report."""

from steerheal.read.corpus import Corpus
from steerheal.read.corpus_activations import CorpusActivations
from steerheal.read.monitor import Trace
from steerheal.read.persona_files import Persona
from steerheal.read.quality import QualityReport
from steerheal.read.readout import Readout
from steerheal.read.vector import Vector

__all__ = ["Corpus", "CorpusActivations", "Persona", "QualityReport", "Readout", "Trace", "Vector"]
