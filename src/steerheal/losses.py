"""Pure loss and divergence functions, in float32 whatever the model's dtype.

Convention: `rev` is KL(student ‖ ref) = Σ p_student (log p_student − log p_ref); `fwd` is KL(ref ‖ student).
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from steerheal.errors import SteerhealError

DIRECTIONS = ("rev", "fwd")


def token_kl(
    student_logits: Float[Tensor, "n vocab"],
    ref_logits: Float[Tensor, "n vocab"],
    direction: str = "rev",
) -> Float[Tensor, " n"]:
    """Per-token KL over the vocabulary, from logits (or log-probabilities), in float32."""
    if direction not in DIRECTIONS:
        raise SteerhealError(f"direction={direction!r}: use 'rev' (KL(student‖ref)) or 'fwd' (KL(ref‖student))")
    student = student_logits.float().log_softmax(-1)
    ref = ref_logits.float().log_softmax(-1)
    p, log_p, log_q = (student.exp(), student, ref) if direction == "rev" else (ref.exp(), ref, student)
    return (p * (log_p - log_q)).sum(-1).clamp(min=0.0)  # exact KL is >= 0; rounding can dip below
