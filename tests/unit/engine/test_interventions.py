"""Interventions (app/engine/interventions.py) against references written here another way:
a head ablated by zeroing its slice of the output projection's weight, an MLP replaced by
a module that returns zeros, steering and patching through the previous block's output
and transformers' own `hidden_states`. Next-token log-probabilities agree within 3e-4, on a
GPT-2 (Conv1D, weights stored [in, out]) and a Llama (grouped-query, nn.Linear)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.engine import GenerationJob, ModelWorker, SamplingParams, TokenEvent
from app.engine.interventions import Intervention, InterventionSet, decoder_blocks
from tests.support.engine import submit_together
from tests.support.tiny_models import MODEL_IDS

PROMPT = [5, 9, 14, 3, 22, 7, 11]
SOURCE = [8, 2, 19, 4, 16, 30, 12]


def _load(model_root, model_id):
    return AutoModelForCausalLM.from_pretrained(model_root / model_id).eval()


@torch.inference_mode()
def _logprobs(model, ids=PROMPT) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


@torch.inference_mode()
def _with(model, items: list[Intervention], ids=PROMPT) -> torch.Tensor:
    with InterventionSet(items).applied(model):
        return _logprobs(model, ids)


def _hidden(model, ids, layer: int) -> torch.Tensor:
    """transformers' hidden_states[layer]: the residual stream entering block `layer`."""
    with torch.inference_mode():
        return model(torch.tensor([ids]), output_hidden_states=True).hidden_states[layer][0]


def _after_block(model, layer: int, change: Callable[[torch.Tensor], torch.Tensor]):
    """A hook on block layer-1's output: what enters block `layer` becomes change(it)."""

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (change(output[0]), *output[1:])
        return change(output)

    return decoder_blocks(model)[layer - 1].register_forward_hook(hook)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_ablating_a_head_equals_zeroing_its_weights(model_root, model_id):
    model, reference = _load(model_root, model_id), _load(model_root, model_id)
    config = model.config
    width = config.hidden_size // config.num_attention_heads
    block = decoder_blocks(reference)[1]
    with torch.no_grad():
        if model_id == "tiny-gpt2":  # Conv1D: weight [in, out], the heads are its rows
            block.attn.c_proj.weight[width * 2 : width * 3] = 0
        else:  # nn.Linear: weight [out, in], the heads are its columns
            block.self_attn.o_proj.weight[:, width * 2 : width * 3] = 0
    got = _with(model, [Intervention("ablate_head", 1, head=2)])
    torch.testing.assert_close(got, _logprobs(reference), atol=3e-4, rtol=0)
    assert (got - _logprobs(model)).abs().max() > 1e-3  # it changed something


class _Zero(nn.Module):
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_ablating_an_mlp_equals_an_mlp_of_zeros(model_root, model_id):
    model, reference = _load(model_root, model_id), _load(model_root, model_id)
    decoder_blocks(reference)[0].mlp = _Zero()
    got = _with(model, [Intervention("ablate_mlp", 0)])
    torch.testing.assert_close(got, _logprobs(reference), atol=3e-4, rtol=0)
    assert (got - _logprobs(model)).abs().max() > 1e-3


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_steering_adds_the_vector_to_the_stream_entering_the_layer(model_root, model_id):
    model = _load(model_root, model_id)
    width = model.config.hidden_size
    vector = torch.linspace(-1, 1, width)
    handle = _after_block(model, 1, lambda h: h + 2.5 * vector)
    try:
        expected = _logprobs(model)
    finally:
        handle.remove()
    steer = Intervention("steer", 1, vector=tuple(vector.tolist()), scale=2.5)
    torch.testing.assert_close(_with(model, [steer]), expected, atol=3e-4, rtol=0)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_a_contrast_steers_by_the_difference_of_two_texts_streams(model_root, model_id):
    model = _load(model_root, model_id)
    first, second = [4, 8, 15], [16, 23, 42, 7]
    vector = _hidden(model, first, 1)[-1] - _hidden(model, second, 1)[-1]
    handle = _after_block(model, 1, lambda h: h + 0.5 * vector)
    try:
        expected = _logprobs(model)
    finally:
        handle.remove()
    steer = Intervention("steer", 1, contrast=(tuple(first), tuple(second)), scale=0.5)
    torch.testing.assert_close(_with(model, [steer]), expected, atol=3e-4, rtol=0)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_patching_replaces_the_stream_at_those_positions_by_the_sources(model_root, model_id):
    model = _load(model_root, model_id)
    source = _hidden(model, SOURCE, 1)
    positions = [1, 4]

    def patched(hidden):
        hidden = hidden.clone()
        hidden[0, positions] = source[positions]
        return hidden

    handle = _after_block(model, 1, patched)
    try:
        expected = _logprobs(model)
    finally:
        handle.remove()
    patch = Intervention("patch", 1, source=tuple(SOURCE), positions=tuple(positions))
    got = _with(model, [patch])
    torch.testing.assert_close(got, expected, atol=3e-4, rtol=0)
    assert (got - _logprobs(model)).abs().max() > 1e-3


def test_combined_interventions_apply_together_and_leave_no_hook(model_root):
    model = _load(model_root, "tiny-llama")
    before = _logprobs(model)
    items = [
        Intervention("ablate_head", 0, head=1),
        Intervention("ablate_mlp", 1),
        Intervention("steer", 1, vector=tuple([0.1] * model.config.hidden_size), scale=3.0),
    ]
    combined = _with(model, items)
    assert (combined - before).abs().max() > 1e-3
    alone = _with(model, items[:1])
    assert (combined - alone).abs().max() > 1e-3
    torch.testing.assert_close(_logprobs(model), before, atol=0, rtol=0)  # hooks removed


def _reference_generation(model, prompt, tokens, handles_for) -> list[tuple[int, float]]:
    """Greedy tokens and logprobs, each step a full pass with the reference hooks in place."""
    handles = handles_for(model)
    ids, made = list(prompt), []
    try:
        for _ in range(tokens):
            logprobs = _logprobs(model, ids)
            token = int(logprobs.argmax())
            made.append((token, float(logprobs[token])))
            ids.append(token)
    finally:
        for handle in handles:
            handle.remove()
    return made


def _job(prompt, tokens, items=None, seed=None) -> GenerationJob:
    params = SamplingParams(
        max_new_tokens=tokens,
        temperature=0 if seed is None else 0.9,
        seed=seed,
        ignore_eos=True,
        logprobs=True,
    )
    return GenerationJob(
        prompt, params, interventions=None if items is None else InterventionSet(items)
    )


def _results(job: GenerationJob) -> list[tuple[int, float]]:
    return [(e.token_id, e.logprob) for e in job.events(30.0) if isinstance(e, TokenEvent)]


def _engine_generation(worker, prompt, tokens, items=None, seed=None) -> list[tuple[int, float]]:
    job = _job(prompt, tokens, items, seed)
    worker.submit(job)
    return _results(job)


@pytest.fixture
def worker_of(model_root):
    made = []

    def make(model_id):
        model = _load(model_root, model_id)
        tokenizer = AutoTokenizer.from_pretrained(model_root / model_id)
        worker = ModelWorker(model, tokenizer, frozenset(), max_active=8, max_queue=16)
        made.append(worker)
        return model, worker

    yield make
    for worker in made:
        worker.close(cancel=True)
        worker.join(30)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_generation_with_interventions_equals_the_references(worker_of, model_root, model_id):
    """Prompt and generated positions, through the KV cache: steering at every step, the
    patch read into the cache by the prefill, an ablated head."""
    served, worker = worker_of(model_id)
    # The references run on a copy: the worker's hooks are on its own model while its
    # round ends, which may overlap the test thread's next lines.
    model = _load(model_root, model_id)
    assert torch.equal(model.lm_head.weight, served.lm_head.weight)
    width = model.config.hidden_size
    source = _hidden(model, SOURCE, 1)
    vector = torch.linspace(-0.5, 0.5, width)

    def references(m):
        def patched(hidden):
            if hidden.shape[1] >= len(PROMPT):
                hidden = hidden.clone()
                hidden[0, [2, 5]] = source[[2, 5]]
            return hidden

        return [_after_block(m, 1, lambda h: patched(h) + 1.5 * vector)]

    items = [
        Intervention("patch", 1, source=tuple(SOURCE), positions=(2, 5)),
        Intervention("steer", 1, vector=tuple(vector.tolist()), scale=1.5),
    ]
    got = _engine_generation(worker, PROMPT, 8, items)
    expected = _reference_generation(model, PROMPT, 8, references)
    assert [t for t, _ in got] == [t for t, _ in expected]
    torch.testing.assert_close(
        torch.tensor([lp for _, lp in got]),
        torch.tensor([lp for _, lp in expected]),
        atol=3e-4,
        rtol=0,
    )
    assert got != _engine_generation(worker, PROMPT, 8)


def _burst(worker, jobs: list[GenerationJob]) -> list[list[tuple[int, float]]]:
    """The jobs started together (one prefill pass, then the same steps); their results."""
    submit_together(worker, jobs)
    return [_results(job) for job in jobs]


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    """The same tokens; logprobs within the batching noise (docs/architecture.md)."""
    assert [t for t, _ in a] == [t for t, _ in b]
    torch.testing.assert_close(
        torch.tensor([lp for _, lp in a]), torch.tensor([lp for _, lp in b]), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("seed", [None, 11])
def test_intervened_rows_share_passes_with_plain_ones_and_change_only_themselves(
    worker_of, model_id, seed
):
    """A plain row computes bit for bit what it computes beside the same rows without
    interventions: the hooks change only their own rows. The intervened rows (one of
    them left-padded and patched) equal their runs alone; all share one prefill."""
    model, worker = worker_of(model_id)
    width = model.config.hidden_size
    steer = [Intervention("ablate_mlp", 0), Intervention("steer", 1, vector=(0.5,) * width)]
    patch = [Intervention("patch", 1, source=tuple(SOURCE), positions=(1, 3))]
    prompts = [PROMPT, PROMPT[:5], SOURCE[::-1]]  # the patched row is the shorter, padded one
    before = worker.passes.prefills
    beside = _burst(
        worker,
        [_job(p, 10, items, seed) for p, items in zip(prompts, [None, patch, steer], strict=True)],
    )
    assert worker.passes.prefills - before == 1  # one pass for the three prompts
    plain = _burst(worker, [_job(p, 10, None, seed) for p in prompts])
    assert beside[0] == plain[0]  # bit for bit
    assert beside[1] != plain[1] and beside[2] != plain[2]
    for prompt, items, got in zip(prompts, [None, patch, steer], beside, strict=True):
        _close(got, _engine_generation(worker, prompt, 10, items, seed=seed))


def test_a_patched_prompt_prefilled_in_chunks_beside_running_rows_is_patched_where_asked(
    model_root,
):
    """Joining running rows, a prompt goes in chunks (of 4 here): its patch positions, 1 and
    37, fall in two chunks, each written at its own column."""
    model = _load(model_root, "tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(model_root / "tiny-gpt2")
    worker = ModelWorker(model, tokenizer, frozenset(), 8, 16, prefill_chunk=4)
    prompt, source = [(7 * i) % 50 + 3 for i in range(42)], [(5 * i) % 40 + 2 for i in range(42)]
    widths: list[int] = []  # tokens of each pass
    decoder_blocks(model)[0].register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(
            (args[0] if args else kwargs["hidden_states"]).shape[1]
        ),
        with_kwargs=True,
    )
    try:
        patch = [Intervention("patch", 1, source=tuple(source), positions=(1, 37))]
        alone = _engine_generation(worker, prompt, 6, patch)
        assert widths[0] == len(prompt)  # alone: the whole prompt in one pass
        running = _job(SOURCE, 400)
        worker.submit(running)
        next(e for e in running.events(30.0) if isinstance(e, TokenEvent))  # it is decoding
        widths.clear()
        joined = _engine_generation(worker, prompt, 6, patch)
        running.cancel("done")
        source_pass, *chunks = [w for w in widths if w > 1]  # the patch's source read first
        assert source_pass == len(source) and sum(chunks) == len(prompt) and chunks[0] <= 37
        _close(joined, alone)
        assert joined != _engine_generation(worker, prompt, 6)  # the patch did something
    finally:
        worker.close(cancel=True)
        worker.join(30)
