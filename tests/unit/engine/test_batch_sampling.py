"""A row of a batch chooses exactly what it chooses alone (a one-row batch), whatever its
batch-mates; a seeded request gives the same tokens alone and batched in a real worker."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.engine import GenerationJob, ModelWorker, SamplingParams, TokenEvent
from app.engine.sampling import BatchSampler, Sampler, choose_alone, draw
from tests.support.engine import submit_together
from tests.support.tiny_models import MODEL_IDS

CPU = torch.device("cpu")
VOCAB = 300

# One row of each kind: greedy, tempered, truncated, penalized, biased, seeded.
MIXED = [
    SamplingParams(temperature=0, logprobs=True, top_logprobs=3),
    SamplingParams(temperature=0.7, top_p=0.95, seed=1),
    SamplingParams(temperature=1.0, top_p=1.0, seed=2, logprobs=True),
    SamplingParams(temperature=0.9, top_k=5, top_p=1.0, seed=3, logprobs=True, top_logprobs=2),
    SamplingParams(temperature=1.3, top_k=40, top_p=0.8, seed=4),
    SamplingParams(temperature=0.8, repetition_penalty=1.3, seed=5, logprobs=True),
    SamplingParams(temperature=0, repetition_penalty=2.0),
    SamplingParams(temperature=0.6, presence_penalty=0.7, frequency_penalty=0.4, seed=6),
    SamplingParams(temperature=0, frequency_penalty=1.5, logprobs=True, top_logprobs=4),
    SamplingParams(temperature=0.7, logit_bias=((7, 4.0), (11, -100.0)), seed=7),
    SamplingParams(temperature=1e-6, top_p=0.5, seed=8, logprobs=True),  # acts as greedy
    SamplingParams(temperature=0.7, repetition_penalty=1e-9, top_p=0.9, seed=9),  # extreme
    SamplingParams(temperature=0.7, repetition_penalty=1e9, presence_penalty=-2.0, seed=10),
]


def _samplers(params: list[SamplingParams], seed: int = 0) -> list[Sampler]:
    prompts = torch.Generator().manual_seed(seed)
    samplers = []
    for p in params:
        prompt = torch.randint(0, VOCAB, (12,), generator=prompts).tolist()
        samplers.append(
            Sampler(SamplingParams(**{**p.__dict__, "max_new_tokens": 64}), prompt, CPU)
        )
    return samplers


def _logits(rows: int, generator: torch.Generator) -> torch.Tensor:
    # Peaked enough that top-p keeps a handful of tokens, like a real model's logits.
    return torch.randn((rows, VOCAB), generator=generator) * 4


def _assert_same(batched, alone) -> None:
    # The same algorithm on the same row: identical tokens, logprobs and alternatives.
    assert batched == alone


def test_mixed_rows_choose_what_each_row_chooses_alone():
    reference, batched = _samplers(MIXED), _samplers(MIXED)
    batch = BatchSampler()
    noise = torch.Generator().manual_seed(0)
    for _ in range(30):
        logits = _logits(len(MIXED), noise)
        before = logits.clone()
        choices = batch.choose(logits, batched)
        torch.testing.assert_close(logits, before, rtol=0, atol=0)  # the caller's logits
        for row, (sampler, choice) in enumerate(zip(reference, choices, strict=True)):
            _assert_same(choice, choose_alone(logits[row], sampler))


def test_rows_that_leave_and_join_keep_their_own_streams():
    reference, batched = _samplers(MIXED, seed=1), _samplers(MIXED, seed=1)
    rows = list(range(len(MIXED)))
    batch = BatchSampler()
    noise = torch.Generator().manual_seed(1)
    for step in range(24):
        if step == 5:
            rows = rows[::2]  # every other row leaves
        if step == 11:
            rows = [1, *rows, 3]  # two come back (new positions, same state)
        logits = _logits(len(rows), noise)
        choices = batch.choose(logits, [batched[i] for i in rows])
        for j, i in enumerate(rows):
            _assert_same(choices[j], choose_alone(logits[j], reference[i]))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_p=0.95),  # the seed's defaults for every row
        SamplingParams(temperature=0),
        SamplingParams(temperature=0.7, top_k=20, top_p=1.0),
    ],
)
def test_uniform_batches_match_too(params):
    reference = _samplers([params] * 6)
    batched = _samplers([params] * 6)
    for a, b in zip(reference, batched, strict=True):  # unseeded: give both the same stream
        b.generator.set_state(a.generator.get_state())
    batch, noise = BatchSampler(), torch.Generator().manual_seed(2)
    for _ in range(10):
        logits = _logits(6, noise)
        for row, choice in enumerate(batch.choose(logits, batched)):
            _assert_same(choice, choose_alone(logits[row], reference[row]))


def test_a_row_whose_draw_fails_fails_alone():
    params = [SamplingParams(temperature=0.7, seed=i) for i in range(3)]
    reference, batched = _samplers(params), _samplers(params)
    logits = _logits(3, torch.Generator().manual_seed(3))
    logits[1] = float("nan")  # a broken row: NaN stays NaN, so its draw raises
    choices = BatchSampler().choose(logits, batched)
    assert isinstance(choices[1], RuntimeError)
    for row in (0, 2):
        _assert_same(choices[row], choose_alone(logits[row], reference[row]))


def test_ids_past_the_logits_vocabulary_are_not_penalized():
    # An embedding larger than the output vocabulary: the prompt holds ids the logits lack.
    params = SamplingParams(temperature=0, repetition_penalty=1.5, logprobs=True)
    reference = Sampler(params, [3, VOCAB + 5, 8], CPU)
    batched = [Sampler(params, [3, VOCAB + 5, 8], CPU), Sampler(params, [VOCAB + 1], CPU)]
    logits = _logits(2, torch.Generator().manual_seed(4))
    choices = BatchSampler().choose(logits, batched)
    _assert_same(choices[0], choose_alone(logits[0], reference))
    _assert_same(choices[1], choose_alone(logits[1], Sampler(params, [VOCAB + 1], CPU)))


# -- a seeded request in a real worker: the same text alone and among others --


def _run(model, jobs: list[GenerationJob]) -> list[list[int]]:
    """Run jobs on a worker, queued while it is busy so that they share one batch."""
    worker = ModelWorker(model, _Letters(), frozenset(), max_active=8, max_queue=16)
    try:
        submit_together(worker, jobs)
        return [[e.token_id for e in job.events(10) if isinstance(e, TokenEvent)] for job in jobs]
    finally:
        worker.close(cancel=True)
        assert worker.join(10)


class _Letters:
    """Enough of a tokenizer for the engine: token ids shown as numbers."""

    all_special_ids: list[int] = []

    def decode(self, ids, **kwargs) -> str:
        return " ".join(str(i) for i in ids)

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [str(i) for i in ids]


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_a_seeded_request_gives_the_same_tokens_alone_and_batched(model_root, model_id):
    model = AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()
    seeded = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=42, ignore_eos=True)
    prompt = [5, 6, 7, 8]
    (alone,) = _run(model, [GenerationJob(prompt, seeded)])
    # Seven batch-mates, each with parameters of its own: the seeded row is one of 8.
    others = [
        GenerationJob([9, 10], SamplingParams(max_new_tokens=20, temperature=1.0, ignore_eos=True)),
        GenerationJob([11] * 9, SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)),
        GenerationJob([12, 13, 14], SamplingParams(12, top_k=3, repetition_penalty=1.2, seed=1)),
        GenerationJob([5, 6, 7, 8], SamplingParams(12, temperature=0.9, top_p=0.9, seed=43)),
        GenerationJob([15], SamplingParams(16, temperature=0.5, top_p=0.5, ignore_eos=True)),
        GenerationJob([16, 17] * 3, SamplingParams(8, temperature=1.3, top_k=40, top_p=0.99)),
        GenerationJob([18, 19, 20], SamplingParams(12, repetition_penalty=1.5, seed=7)),
    ]
    together = _run(model, [others[0], GenerationJob(prompt, seeded), *others[1:]])
    assert len(together) == 8 and len(alone) == 12
    assert together[1] == alone
    assert together[4] != alone  # the same prompt and parameters with another seed differ


def test_the_draw_follows_the_probabilities_and_never_picks_an_impossible_token():
    """Inverse-CDF draws: frequencies match, zero-probability tokens (top-p's cut, -inf
    logits) never come, and a broken row fails alone."""
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    counts = torch.zeros_like(probs)
    generators = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    for _ in range(4000):
        for row, token in enumerate(draw(probs, generators)):
            counts[row, token] += 1
    assert counts[probs == 0].sum() == 0
    assert torch.allclose(counts[0] / 4000, probs[0], atol=0.03)
    assert counts[1, 5] == 4000
    broken = torch.tensor([[0.5, float("nan"), 0.5], [0.2, 0.3, 0.5]])
    first, second = draw(broken, generators)
    assert isinstance(first, RuntimeError) and second in (0, 1, 2)


def test_a_row_draws_the_same_token_alone_and_in_a_batch():
    probs = torch.softmax(torch.randn((5, 1000), generator=torch.Generator().manual_seed(7)), -1)
    together = draw(probs, [torch.Generator().manual_seed(s) for s in range(5)])
    alone = [draw(probs[i : i + 1], [torch.Generator().manual_seed(i)])[0] for i in range(5)]
    assert together == alone
    assert len(set(together)) > 1  # different seeds, different draws (1,000 tokens)
