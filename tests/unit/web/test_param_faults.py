"""Faults of issue 23, through Flask's client: request numbers that pass validation but not
the conversion after it, seeds narrowed to fewer bits than accepted, and float parameters
that fall outside float32's range in the sampler's columns.

(The sampler's own tests of the same faults are in tests/unit/engine/test_param_faults.py.)
"""

from __future__ import annotations

import pytest

PROMPT = {"model_id": "tiny-gpt2", "prompt": "The cat sat", "max_new_tokens": 8}
V1 = {"model": "tiny-gpt2", "prompt": "The cat sat", "max_tokens": 8}


# -- A validation rule looser than the conversion after it ---------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "²",  # str.isdigit() is true, int() raises: was a 500
        "٣",  # Arabic-Indic three: int() takes it as 3
        "０",  # fullwidth zero: int() takes it as 0
        "𝟕",  # mathematical bold seven
        " 7",
        "7 ",
        "+7",
        "-7",
        "7_0",
        "",
        "9" * 5000,  # isdigit, but int() refuses more than 4300 digits: was a 500
    ],
)
def test_a_logit_bias_key_that_is_not_a_plain_ascii_id_is_a_400_naming_it(client, key):
    """vLLM PR #16529: `"²".isdigit()` is true, then `int("²")` raised (a 500); keys in other
    scripts' digits were silently taken as other ids. Only ASCII decimal ids pass."""
    response = client.post("/v1/completions", json={**V1, "logit_bias": {key: 1}})
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["param"] == "logit_bias"
    assert repr(key)[:20] in error["message"]


def test_two_logit_bias_keys_naming_one_id_are_a_400(client):
    """vLLM PR #16529's kind: "7" and "07" both validate and both convert to 7, so one of
    the two biases was silently dropped."""
    response = client.post("/v1/completions", json={**V1, "logit_bias": {"7": 5, "07": -5}})
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["param"] == "logit_bias" and "'07'" in error["message"]


def test_plain_ascii_logit_bias_keys_still_work(client):
    body = {**V1, "temperature": 0, "logit_bias": {"42": 100, "007": 0}}
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.get_json()
    ids = client.post("/tokenize", json={"model_id": "tiny-gpt2", "prompt": " "}).get_json()
    assert ids  # the vocabulary answers: token 42 is what a +100 bias makes greedy pick
    text = response.get_json()["choices"][0]["text"]
    detok = client.post("/detokenize", json={"model_id": "tiny-gpt2", "token_ids": [42] * 8})
    assert text == detok.get_json()["text"]


# -- A seed narrowed to fewer bits than the API accepts ------------------------------------


def _sampled(client, seed, path="/generate"):
    if path == "/generate":
        body = {**PROMPT, "max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0}
        response = client.post(path, json={**body, "ignore_eos": True, "seed": seed})
        assert response.status_code == 200, response.get_json()
        return response.get_json()["text"]
    body = {**V1, "max_tokens": 24, "ignore_eos": True, "seed": seed}
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["choices"][0]["text"]


def test_seeds_equal_in_their_low_32_bits_give_different_texts(client):
    """numpy PR #4676's kind: torch's CPU generator keeps a seed's low 32 bits, so seeds 7,
    7 + 2**32 and 7 + 5 * 2**32 all gave one text although /generate accepts up to 2**53."""
    texts = [_sampled(client, seed) for seed in (7, 7 + 2**32, 7 + 5 * 2**32, 2**53)]
    assert len(set(texts)) == 4, texts
    assert _sampled(client, 7 + 2**32) == texts[1]  # each one still reproducible


def test_v1_seeds_equal_in_their_low_32_bits_give_different_texts(client):
    """numpy PR #4676's kind on /v1, which accepts seeds from -2**63 to 2**64 - 1."""
    seeds = (7, 7 + 2**32, 7 + 2**63, 2**64 - 1, -1)
    texts = [_sampled(client, seed, "/v1/completions") for seed in seeds]
    # -1 is 2**64 - 1 modulo 2**64 (choice i uses seed + i modulo 2**64): the same stream.
    assert len(set(texts)) == 4 and texts[3] == texts[4], texts


# -- Float parameters outside float32's range ------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-300, 1e-46, 5e-324])
def test_a_temperature_below_float32s_range_acts_as_greedy(client, temperature):
    """Round 1's F1 below float32: 1e-300 became 0.0 in the float32 temperature column and
    0 / 0 made the probabilities NaN: a 500 `generation_failed`."""
    body = {**PROMPT, "ignore_eos": True, "details": True, "top_logprobs": 2}
    greedy = client.post("/generate", json={**body, "temperature": 0})
    tiny = client.post("/generate", json={**body, "temperature": temperature, "seed": 3})
    assert tiny.status_code == 200, tiny.get_json()
    assert tiny.get_json()["text"] == greedy.get_json()["text"]
    stream = client.post("/generate/stream", json={**body, "temperature": temperature})
    assert "event: error" not in stream.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_v1_temperature_below_float32s_range_acts_as_greedy(client, path):
    """Round 1's F1 below float32 on /v1, where 1e-300 is a valid temperature and the openai
    client retried the 500."""
    if path == "/v1/completions":
        body: dict = {**V1, "logprobs": 2}
    else:
        body = {
            "model": "tiny-llama",  # it has a chat template
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 8,
            "logprobs": True,
            "top_logprobs": 2,
        }
    greedy = client.post(path, json={**body, "temperature": 0, "ignore_eos": True})
    tiny = client.post(path, json={**body, "temperature": 1e-300, "ignore_eos": True})
    assert tiny.status_code == 200, tiny.get_json()
    key = "text" if path == "/v1/completions" else "message"
    assert tiny.get_json()["choices"][0][key] == greedy.get_json()["choices"][0][key]


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_a_repetition_penalty_below_float32s_range_never_fails(client, chain_model, path):
    """Round 1's F1 below float32: a penalty of 1e-300 was 0.0 in float32, and a seen
    token whose logit is exactly 0 (the chain model's prompt words) became 0 / 0 = NaN."""
    prompt = "zebra quietly Dam"  # "zebra" and "quietly" have logit 0 in the chain model
    if path == "/generate":
        body: dict = {"model_id": chain_model, "prompt": prompt, "max_new_tokens": 4}
    else:
        body = {"model": chain_model, "prompt": prompt, "max_tokens": 4}
    body |= {"temperature": 0.7, "repetition_penalty": 1e-300, "seed": 1, "ignore_eos": True}
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_json()
