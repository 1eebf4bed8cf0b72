"""Choosing the next token from logits, reproducibly: one algorithm for one row or a batch.

`Sampler` (state.py) holds one request's state: its parameters, the tokens its repetition
penalty reads, its OpenAI penalty counts, its logit bias and its random generator.
`BatchSampler` (batch.py) chooses for every row of a batch with tensor operations over
[rows, vocab]; a request choosing alone is a one-row batch (`choose_alone`).
"""

from app.engine.sampling.batch import BatchSampler, choose_alone
from app.engine.sampling.draw import draw
from app.engine.sampling.params import Choice, SamplingParams
from app.engine.sampling.state import Sampler

__all__ = ["BatchSampler", "Choice", "Sampler", "SamplingParams", "choose_alone", "draw"]
