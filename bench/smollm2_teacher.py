"""The smollm2 preset's model, concept and round-0 teacher calibrated to 1 nat (p95 KL, 16 tokens, no liveness
check): the starting point the real-model benches (filters_real, heal_real) share."""

from __future__ import annotations

from dataclasses import replace


def calibrated_teacher() -> tuple:
    """(config, model, tok, concept, vector) for the smollm2 preset, the vector at its calibrated dose."""
    import steerheal as sh
    from steerheal.loop.concepts import build_concept

    config = sh.preset("smollm2")
    model, tok = sh.load_model(config.model)
    concept = build_concept(replace(config, verify=replace(config.verify, readout=False)), tok)
    teacher = concept.teacher
    v = sh.Vector.train(model, tok, teacher.pos, teacher.neg, position=teacher.position)
    v.calibrate(model, tok, concept.calibration_prompts, 1.0, n_tokens=16, liveness_samples=0)
    return config, model, tok, concept, v
