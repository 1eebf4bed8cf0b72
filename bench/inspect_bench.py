"""Size and time of /inspect on GPT-2 small's shape, against a bare forward pass.

Run from the repository root:  .venv/bin/python -m bench.inspect_bench
"""

from __future__ import annotations

import argparse
import time

import requests
import torch

from bench.common import LiveServer, ensure_gpt2_small, median, prompt_of

EVERYTHING = ["tokens", "next_token", "logit_lens", "attention", "resid_norms"]


def main() -> None:
    """Time inspections of one prompt with several selections; print size and time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    path = ensure_gpt2_small()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = prompt_of(tokenizer, args.tokens)
    ids = tokenizer(prompt)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.inference_mode():
        model(torch.tensor([ids]))
        forward = []
        for _ in range(args.runs):
            started = time.perf_counter()
            model(torch.tensor([ids]))
            forward.append(time.perf_counter() - started)
    del model

    cases = {
        "everything (topk attention k=8)": {"include": EVERYTHING},
        "everything, dense attention, 3 layers": {
            "include": EVERYTHING,
            "layers": [0, 5, 11],
            "attention": {"format": "dense"},
        },
        "attention only (topk)": {"include": ["attention"]},
        "next_token only": {"include": ["next_token"]},
    }
    env = {"LLMVIZ_MODEL_ROOT": str(path.parent), "LLMVIZ_MAX_INSPECT_BYTES": str(512 * 2**20)}
    print(f"prompt tokens: {len(ids)}; bare forward pass: {median(forward) * 1000:.0f} ms")
    with LiveServer(env) as live:
        base = {"model_id": path.name, "token_ids": ids}
        requests.post(live.url("/inspect"), json=base, timeout=600).raise_for_status()
        for name, extra in cases.items():
            times, size = [], 0
            for _ in range(args.runs):
                started = time.perf_counter()
                response = requests.post(live.url("/inspect"), json={**base, **extra}, timeout=600)
                times.append(time.perf_counter() - started)
                response.raise_for_status()
                size = len(response.content)
            ratio = median(times) / median(forward)
            print(
                f"{name:40} {size / 1e6:8.2f} MB {median(times) * 1000:8.0f} ms "
                f"({ratio:.1f}x a forward pass)"
            )


if __name__ == "__main__":
    main()
