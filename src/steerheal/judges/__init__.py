"""judges: instruments steerheal did not write, and the trait–KL frontier they judge.

A judge is any callable from (prompt, completion) pairs to named scores (`judge.py`): VADER for the
joyful/gloomy trait (`trait.py`), bits per byte under an independent model beside distinct-2 and repetition
(`coherence.py`), prompt–completion cosine under all-MiniLM-L6-v2 (`relevance.py`), toyworld's exact mood
and grammar (`truth.py`). The frontier (`frontier.py`) sweeps steering's dose and the student's dial
(`variants.py`), and `dominance.py` says where one curve lies above the other at equal cost.
`survival.py` states direction survival against the split-half noise ceiling. docs/judges.md.
"""

from steerheal.judges.coherence import CoherenceJudge
from steerheal.judges.frontier import FrontierConfig
from steerheal.judges.judge import Judge
from steerheal.judges.relevance import RelevanceJudge
from steerheal.judges.trait import VaderJudge
from steerheal.judges.truth import ToyworldJudge

__all__ = ["CoherenceJudge", "FrontierConfig", "Judge", "RelevanceJudge", "ToyworldJudge", "VaderJudge"]
