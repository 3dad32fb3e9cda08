"""dose: how hard to steer and what data that gives. iso-KL calibration, coherence filters, steered-vs-unsteered
preference pairs and the dose walk."""

from steerheal.dose.config import DoseConfig
from steerheal.dose.filters import FilterConfig
from steerheal.dose.pairs import PreferencePair, SamplingConfig
from steerheal.dose.walk import DoseWalk

__all__ = ["DoseConfig", "DoseWalk", "FilterConfig", "PreferencePair", "SamplingConfig"]
