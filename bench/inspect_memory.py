"""Peak memory of one /inspect pass on GPT-2 small's shape, part by part.

Each part (and all of them) is inspected over `--tokens` tokens in this process; the
figure is the rise of the process's peak resident memory (VmHWM, reset before each
run through /proc/self/clear_refs) over what was resident before the run.

Run from the repository root:  .venv/bin/python -m bench.inspect_memory
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.common import ensure_gpt2_small

PARTS = ["next_token", "logit_lens", "attention", "resid_norms"]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    """Print the peak memory rise and time of each selection."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--model", type=Path, default=None, help="default: GPT-2 small's shape")
    parser.add_argument("--parts", nargs="*", choices=PARTS, help="one selection of these parts")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app import analysis
    from app.analysis import inspection
    from app.engine import HeadSelection

    path = args.model or ensure_gpt2_small()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = model.config.get_text_config()
    vocab, n_layers = config.vocab_size, config.num_hidden_layers
    ids = [(i * 7919) % vocab for i in range(args.tokens)]
    torch.set_num_threads(torch.get_num_threads())

    def run(include: list[str]) -> tuple[float, float]:
        sel = analysis.Selection(
            frozenset(include), HeadSelection(tuple(range(n_layers))), top_k=args.top_k
        )
        inspection.inspect(model, tokenizer, ids[:2], sel)  # warm: lazy buffers, kernels
        before = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        started = time.perf_counter()
        inspection.inspect(model, tokenizer, ids, sel)
        seconds = time.perf_counter() - started
        return (_status_kb("VmHWM") - before) / 1024, seconds

    shape = f"{n_layers} layers, vocab {vocab}, {args.tokens} tokens, top_k {args.top_k}"
    print(f"{path.name}: {shape}")
    for include in [args.parts] if args.parts else [[part] for part in PARTS] + [PARTS]:
        rise, seconds = run(include)
        print(f"{'+'.join(include):50} peak +{rise:7.0f} MiB  {seconds:6.2f} s")


if __name__ == "__main__":
    main()
