"""loop: rounds of re-extract, calibrate, pairs, heal, fold, verify, checkpoint. The run config and its presets,
model specs, concept sources, the run directory, verification, the rounds and the report."""

from steerheal.loop.rounds import RunResult
from steerheal.loop.runconfig import (
    AdapterConfig,
    ConceptConfig,
    DoseConfig,
    RunConfig,
    StopConfig,
    VerifyConfig,
)

__all__ = ["AdapterConfig", "ConceptConfig", "DoseConfig", "RunConfig", "RunResult", "StopConfig", "VerifyConfig"]
