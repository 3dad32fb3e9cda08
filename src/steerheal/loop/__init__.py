"""loop: rounds of re-extract, calibrate, pairs, heal, fold, verify, checkpoint. The run config and its presets,
model specs, concept sources, the run directory, verification, the rounds and the report."""
