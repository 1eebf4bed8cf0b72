"""Remote models against the real engines: vLLM's CPU build and llama.cpp's `llama-server`
(built by `python -m bench.peers setup`), each fronted by this server through
LLMVIZ_REMOTE_MODELS, on the demo model `llmviz/shakespeare` (float32).

For each engine, one after the other:
1. **Same as the remote**: a greedy `/generate` with `details` and 5 alternatives through
   the front, against the same request sent straight to the remote's /v1/completions:
   the text, and the largest logprob difference.
2. **Against this server's own model**: the same request to the demo model loaded here:
   whether the text agrees, and the largest difference of the chosen tokens' logprobs.
3. **Stopping**: a 1,000-token stream through the front, left after 5 tokens; the remote's
   own count of running requests (vLLM's /metrics, llama.cpp's /slots) a second later.
4. **Overhead**: `--runs` streams of `--tokens` tokens straight and through the front,
   alternating: median first-token time and time per token.

Not in CI (the engines take a quarter of an hour to build).

  .venv/bin/python -m bench.remote_peers [--engines vllm llama.cpp] [--tokens 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import time

import requests

from bench.common import LiveServer, median, stream_timing
from bench.peer_servers import MODEL_SET, SERVERS, running
from bench.peer_setup import MODELS
from tests.support.sse_client import SSEEvent, stream_events

ENGINE_NAMES = {"vllm": "vllm", "llama.cpp": "llama.cpp"}


def _details(live: LiveServer, model_id: str, tokens: int) -> list[dict]:
    body = {"model_id": model_id, "prompt": "ROMEO:", "max_new_tokens": tokens, "temperature": 0}
    answer = live.post("/generate", **body, details=True, top_logprobs=5, ignore_eos=True)
    return answer["details"]["tokens"]


def _direct(base: str, name: str, tokens: int) -> list[tuple[str, float]]:
    """The remote's own tokens and logprobs, straight from its /v1/completions."""
    body = {"model": name, "prompt": "ROMEO:", "max_tokens": tokens, "temperature": 0}
    body.update(logprobs=5, ignore_eos=True)
    answer = requests.post(f"{base}/v1/completions", json=body, timeout=300).json()
    logprobs = answer["choices"][0]["logprobs"]
    if "content" in logprobs:  # llama.cpp's chat shape
        return [(e["token"], e["logprob"]) for e in logprobs["content"]]
    return list(zip(logprobs["tokens"], logprobs["token_logprobs"], strict=True))


def _running(engine: str, base: str) -> str:
    """The remote's own count of requests it is generating, as it reports it."""
    try:
        if engine == "vllm":
            text = requests.get(f"{base}/metrics", timeout=5).text
            lines = [
                line for line in text.splitlines() if line.startswith("vllm:num_requests_running")
            ]
            return ", ".join(line.split()[-1] for line in lines) or "no metric"
        slots = requests.get(f"{base}/slots", timeout=5).json()
        return str(sum(bool(slot.get("is_processing")) for slot in slots)) + " slots busy"
    except (requests.RequestException, ValueError) as exc:
        return f"unknown ({type(exc).__name__})"


def _stream(live: LiveServer, body: dict) -> tuple[float, float]:
    first, per, _ = stream_timing(live.url("/generate/stream"), body, lambda e: e.event == "token")
    return first, per


def _left_early(live: LiveServer, model_id: str) -> None:
    body = {"model_id": model_id, "prompt": "ROMEO:", "max_new_tokens": 1000, "ignore_eos": True}
    with requests.post(live.url("/generate/stream"), json=body, stream=True, timeout=60) as r:
        seen = 0
        for event in stream_events(r):
            seen += isinstance(event, SSEEvent)
            if seen >= 5:
                break


def run_engine(engine: str, tokens: int, runs: int) -> dict:
    model = MODEL_SET["shakespeare"]
    server = SERVERS[engine]
    reason = server.missing(model)
    if reason:
        return {"skipped": reason}
    with running(server, model) as base:
        name = server.model_name(model)
        remotes = {"remote": {"url": f"{base}/v1", "model": name, "engine": ENGINE_NAMES[engine]}}
        env = {"LLMVIZ_MODEL_ROOT": str(MODELS), "LLMVIZ_REMOTE_MODELS": json.dumps(remotes)}
        with LiveServer(env) as front:
            fronted = _details(front, "remote", 32)
            straight = _direct(base, name, 32)
            local = _details(front, model.our_id, 32)
            same_text = "".join(t["text"] for t in fronted) == "".join(t for t, _ in straight)
            vs_remote = max(
                abs(t["logprob"] - lp) for t, (_, lp) in zip(fronted, straight, strict=False)
            )
            agree = [t["text"] for t in fronted] == [t["text"] for t in local]
            vs_local = max(
                abs(a["logprob"] - b["logprob"]) for a, b in zip(fronted, local, strict=False)
            )
            _left_early(front, "remote")
            time.sleep(1)
            after_leaving = _running(engine, base)
            body = {"prompt": "ROMEO:", "max_new_tokens": tokens, "temperature": 0}
            body.update(ignore_eos=True, details=True, top_logprobs=5)
            times: dict[str, list[tuple[float, float]]] = {"direct": [], "front": []}
            for _ in range(runs):
                times["front"].append(_stream(front, {**body, "model_id": "remote"}))
                times["direct"].append(_stream_v1(base, name, tokens))
    return {
        "same text as the remote": same_text,
        "max |logprob| vs the remote": vs_remote,
        "same tokens as this server's model": agree,
        "max |logprob| vs this server's model": vs_local,
        "remote's running requests after the client left": after_leaving,
        **{
            f"{path} {what} (ms)": median([r[i] for r in runs_])
            for path, runs_ in times.items()
            for i, what in enumerate(("first token", "per token"))
        },
    }


def _stream_v1(base: str, name: str, tokens: int) -> tuple[float, float]:
    """A stream straight from the remote's /v1/completions (logprobs 5): its chunks, about
    one a token."""
    body = {"model": name, "prompt": "ROMEO:", "max_tokens": tokens, "temperature": 0}
    body.update(stream=True, logprobs=5, ignore_eos=True)
    first, per, _ = stream_timing(f"{base}/v1/completions", body, lambda e: e.data != "[DONE]")
    return first, per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["vllm", "llama.cpp"])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for engine in args.engines:
        print(f"\n== {engine}", flush=True)
        for key, value in run_engine(engine, args.tokens, args.runs).items():
            shown = f"{value:.3g}" if isinstance(value, float) else value
            print(f"  {key}: {shown}", flush=True)


if __name__ == "__main__":
    main()
