"""Prompt preparation: chat messages rendered with the model's chat template."""

from __future__ import annotations

from tests.support.client import generate

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def test_messages_are_rendered_with_the_chat_template(client, tokenizers):
    expected = tokenizers["tiny-llama"].apply_chat_template(
        CHAT, tokenize=False, add_generation_prompt=True
    )
    body = client.post("/tokenize", json={"model_id": "tiny-llama", "messages": CHAT}).get_json()
    assert body["prompt"] == expected
    assert body["prompt"].endswith("<|assistant|>\n")
    assert "".join(body["tokens"]).endswith("<|assistant|>\n")
    answer = generate(client, model_id="tiny-llama", messages=CHAT, max_new_tokens=5)
    assert answer["text"].startswith(expected)


def test_messages_without_a_chat_template_is_400(client):
    response = client.post("/generate", json={"model_id": "tiny-gpt2", "messages": CHAT})
    assert response.status_code == 400
    assert "chat template" in response.get_json()["error"]
