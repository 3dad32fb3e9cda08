"""read: concept directions from the residual stream. Capture, direction methods, steering, Vector, persona
contrasts and persona files, corpora, Readout, the per-token monitor and the quality report."""
