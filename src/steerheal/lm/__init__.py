"""lm: the model and its text. Loading, the decoder-block table, fingerprints, tiny models, tokens and padding,
attention, de-quantisation, seeded sampling, teacher-forced scoring and token KL. Imports nothing of the
stages above it."""

from steerheal.lm.fingerprint import Fingerprint
from steerheal.lm.texts import Batch, Encoded

__all__ = ["Batch", "Encoded", "Fingerprint"]
