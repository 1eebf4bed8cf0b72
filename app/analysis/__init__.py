"""Analyses of a model for the visualization: its architecture, and what one forward pass
shows (next-token candidates, the logit lens, attention patterns, residual norms), and
the score of a text (its tokens' logprobs).

Analyses run on the engine (an inspection is a `ModelTask` on the model's thread)
and know nothing of HTTP or of the model registry.
"""

from app.analysis.architecture import describe
from app.analysis.inspection import Selection, estimate_bytes, inspection_task
from app.analysis.scoring import TokenScores, scoring_task

__all__ = [
    "Selection",
    "TokenScores",
    "describe",
    "estimate_bytes",
    "inspection_task",
    "scoring_task",
]
