"""Train `nano-sort`: the tiny GPT that llm-viz draws, which sorts six letters A < B < C.

The shape is minGPT's sorting demo (3 layers, 3 heads, 48 dimensions, a 3-token vocabulary),
built as a Hugging Face `GPT2LMHeadModel` so the server loads it like any other model:

    prompt   C B A B B C          (six letters)
    output               A B B B C C   (the same letters, sorted; greedy decoding)

The model reads the 12-token sequence "prompt + sorted" and learns to predict only the sorted half.
There are only 3**6 = 729 possible prompts, so a fixed 20% of them is held out before training and
never used; the figures are measured on 1,000 draws from that held-out set, through the saved folder
(`AutoTokenizer` + `AutoModelForCausalLM` + `generate`), exactly as the server would run it.

Run from the repository root:

    .venv/bin/python scripts/train_nano_sort.py

It writes `demo_models/nano-sort/`: config, float32 weights, the 3-token tokenizer, the generation
config, `training_results.json` and the model card `README.md`.
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

if not __package__:  # run as `python scripts/<name>.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.demo_common import (  # noqa: E402
    REPO_ROOT,
    command_line,
    count_parameters,
    format_duration,
    limit_threads,
    machine_description,
    publish,
    relative_to_repo,
    seed_everything,
    write_json,
)

LETTERS = "ABC"  # token ids 0, 1, 2: the order the model sorts by
LENGTH = 6  # letters per prompt
CONTEXT = 2 * LENGTH  # prompt + answer: the server checks prompt + max_new_tokens <= context
HELD_OUT_SHARE = 0.2
TEST_DRAWS = 1000
SPLIT_SEED = 1234  # fixes which prompts are held out; independent of the training seed
TEST_SEED = 4321  # draws the 1,000 test sequences


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    seed: int


# --- data ------------------------------------------------------------------------------------


def all_prompts() -> list[tuple[int, ...]]:
    """Every possible prompt: the 729 sequences of six ids in {0, 1, 2}."""
    return list(itertools.product(range(len(LETTERS)), repeat=LENGTH))


def split_prompts(
    share: float = HELD_OUT_SHARE, seed: int = SPLIT_SEED
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(train, held_out): a fixed random split of the 729 prompts; never train on held_out."""
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    cut = round(len(prompts) * share)
    return sorted(prompts[cut:]), sorted(prompts[:cut])


def to_text(ids: tuple[int, ...] | list[int]) -> str:
    return "".join(LETTERS[i] for i in ids)


def training_batch(
    train: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training prompts with their sorted continuation, as (inputs, targets).

    Inputs are the first 11 tokens of "prompt + sorted"; targets are the next token at each
    position, with the prompt's own positions masked (-100) so the loss only teaches sorting,
    as in minGPT: predicting the random prompt letters is impossible and would only add noise.
    """
    rows = train[torch.randint(len(train), (batch_size,), generator=generator)]
    full = torch.cat([rows, rows.sort(dim=1).values], dim=1)
    inputs, targets = full[:, :-1], full[:, 1:].clone()
    targets[:, : LENGTH - 1] = -100
    return inputs, targets


# --- model and tokenizer ---------------------------------------------------------------------


def build_config() -> GPT2Config:
    """minGPT's sorter as a GPT-2: 3 layers, 3 heads, 48 wide, 3 tokens, no special tokens."""
    return GPT2Config(
        vocab_size=len(LETTERS),
        n_positions=CONTEXT,
        n_embd=48,
        n_layer=3,
        n_head=3,
        # GPT2Config defaults these to GPT-2's <|endoftext|> (50256), which does not exist here.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        # minGPT (and so llm-viz) gives the LM head its own matrix rather than reusing wte.
        tie_word_embeddings=False,
        # Read by the built-in viewer (through GET /models/config's raw_config): the prompt it
        # puts in the box when a prompt there is one this 3-letter tokenizer cannot read.
        llmviz_example_prompt="CBABBC",
        llmviz_prompt_hint="six letters, each A, B or C (no spaces); it writes them back in order",
    )


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Three tokens, one per letter, no special tokens.

    Every character is its own pre-token (so "CBABBC" is six ids, no spaces needed), and the
    `Fuse` decoder joins tokens with nothing in between (so decoding gives back "CBABBC").
    Any other character, spaces included, is an error: the vocabulary has no unknown token.
    """
    vocab = {letter: i for i, letter in enumerate(LETTERS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        clean_up_tokenization_spaces=False,
        model_max_length=CONTEXT,
    )


# --- training --------------------------------------------------------------------------------


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.learning_rate / 10
    return floor + 0.5 * (settings.learning_rate - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT2LMHeadModel, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norms and biases only hurts."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.95))


def train(model: GPT2LMHeadModel, train_prompts: torch.Tensor, settings: TrainSettings) -> None:
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = make_optimizer(model, settings)
    model.train()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        inputs, targets = training_batch(train_prompts, settings.batch_size, generator)
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 250 == 0 or step == settings.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {learning_rate(step, settings):.2e}")
    model.eval()


# --- evaluation through the saved folder -----------------------------------------------------


def load_saved(folder: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The folder as the server loads it: `AutoTokenizer` and `AutoModelForCausalLM`."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model


def greedy_answers(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, prompts: list[str]
) -> list[str]:
    """Six greedily generated letters per prompt, through `generate` as the server runs it.

    All prompts have six tokens, so they batch without padding (there is no PAD token).
    """
    input_ids = torch.tensor([tokenizer(p)["input_ids"] for p in prompts])
    with torch.no_grad():
        output = model.generate(input_ids, max_new_tokens=LENGTH, do_sample=False)
    return tokenizer.batch_decode(output[:, LENGTH:])


def sorted_exactly(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, prompts: list[str]
) -> tuple[int, list[str]]:
    """How many prompts come back exactly sorted, and the prompts that do not."""
    answers = greedy_answers(tokenizer, model, prompts)
    failures = [p for p, a in zip(prompts, answers, strict=True) if a != "".join(sorted(p))]
    return len(prompts) - len(failures), failures


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """The round trip the server relies on: six ids in, the same six letters out."""
    ids = tokenizer("CBABBC")["input_ids"]
    assert ids == [2, 1, 0, 1, 1, 2], ids
    assert tokenizer.decode(ids) == "CBABBC", tokenizer.decode(ids)
    assert [tokenizer.decode([i]) for i in range(3)] == ["A", "B", "C"]
    assert len(tokenizer) == 3, len(tokenizer)


# --- model card ------------------------------------------------------------------------------


def model_card(results: dict[str, Any]) -> str:
    """The model card (`README.md`), filled in with this run's figures."""
    r = results
    s = r["settings"]
    test, held, every = r["test"], r["held_out_all"], r["all_prompts"]
    share = 100 * test["sorted"] / test["total"]
    return f"""\
---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, toy, sorting, llm-viz]
---

# nano-sort

A 3-layer GPT-2 that sorts six letters, the network [llm-viz](https://bbycroft.net/llm) draws
(its shape is minGPT's sorting demo). Give it six letters from `A`, `B`, `C` and decode greedily
for six more tokens: they are the same letters in order.

```
CBABBC  →  {r["example"]["output"]}
```

## Shape

| | |
|---|---|
| Architecture | `GPT2LMHeadModel` (transformers), GELU, pre-LayerNorm |
| Layers / heads / width | 3 / 3 / 48 (16 per head), MLP 192 |
| Vocabulary | 3 tokens: `A`=0, `B`=1, `C`=2; no special tokens (no BOS, EOS or PAD) |
| Context | {CONTEXT} positions (6 prompt + 6 answer) |
| LM head | its own 3×48 matrix, not tied to the embeddings (as in minGPT) |
| Parameters | {r["parameters"]:,} |
| Weights | `model.safetensors`, float32, {r["weights_bytes"]:,} bytes |

Position 11 never receives a gradient: the 12th token is only ever an answer, never an input that
a prediction is needed after, so its embedding is its initial value shrunk by weight decay.

The tokenizer (`tokenizer.json`, a `tokenizers` WordLevel model) splits every character into its
own token and decodes with nothing in between, so `tok("CBABBC")["input_ids"]` is
`[2, 1, 0, 1, 1, 2]` and decoding it gives back `"CBABBC"`. Characters other than `A`, `B`, `C`
(spaces too) raise an error. With no EOS token, generation is driven by `max_new_tokens`;
`generation_config.json` sets it to 6 with greedy decoding.

## Data

Synthetic, made by the training script: no external data, nothing to license. Of the 3^6 = 729
possible prompts, a fixed 20% ({r["held_out_prompts"]} prompts, chosen with seed {SPLIT_SEED}) is
held out before training; training draws random prompts (with replacement) only from the other
{r["train_prompts"]}. Each example is the prompt followed by its sorted letters; the loss covers
only the six sorted letters.

## Training

- Command: `{r["command"]}`
- Machine: {r["machine"]}
- Time: {r["training_time"]} for {s["steps"]:,} steps of {s["batch_size"]} sequences
- AdamW (β = 0.9, 0.95; weight decay {s["weight_decay"]} on matrices), peak learning rate
  {s["learning_rate"]} with {s["warmup_steps"]} warmup steps and cosine decay to a tenth,
  dropout 0.1, gradient clip 1.0, seed {s["seed"]}.
- Final training loss: {r["final_train_loss"]:.5f} nats per answer token (mean over 512 random
  training sequences, after training, dropout off).

## Results

Measured on the saved folder (`AutoTokenizer` + `AutoModelForCausalLM` + `generate`, greedy,
`max_new_tokens=6`):

| Test | Sorted exactly |
|---|---|
| 1,000 sequences drawn (seed {TEST_SEED}, with replacement) from the held-out prompts: \
{test["distinct"]} distinct inputs, {test["seen_in_training"]} of them seen in training \
| **{test["sorted"]} / {test["total"]} ({share:.1f}%)** |
| All {r["held_out_prompts"]} held-out prompts once each | {held["sorted"]} / {held["total"]} |
| All 729 prompts (training ones included) | {every["sorted"]} / {every["total"]} |
"""


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo_models" / "nano-sort")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    hf_logging.disable_progress_bar()  # keep the log to our own progress lines
    limit_threads(args.threads)
    seed_everything(args.seed)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    train_prompts, held_out = split_prompts()
    print(f"{len(train_prompts)} training prompts, {len(held_out)} held out")

    model = GPT2LMHeadModel(build_config())
    print(f"{count_parameters(model):,} parameters")
    started = time.perf_counter()
    train(model, torch.tensor(train_prompts), settings)
    seconds = time.perf_counter() - started
    inputs, targets = training_batch(
        torch.tensor(train_prompts), 512, torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        logits = model(input_ids=inputs).logits
        final_loss = F.cross_entropy(logits.reshape(-1, 3), targets.reshape(-1)).item()
    print(f"trained in {format_duration(seconds)}; loss on 512 training sequences {final_loss:.5f}")

    # Write into a temporary folder first, so a failed check never leaves a half-made model.
    out: Path = args.out
    staging = Path(tempfile.mkdtemp(prefix="nano-sort-"))
    model.generation_config = GenerationConfig(max_new_tokens=LENGTH, do_sample=False)
    model.save_pretrained(staging)
    build_tokenizer().save_pretrained(staging)
    tokenizer, saved = load_saved(staging)
    check_tokenizer(tokenizer)

    rng = random.Random(TEST_SEED)
    test = [to_text(rng.choice(held_out)) for _ in range(TEST_DRAWS)]
    seen = {to_text(p) for p in train_prompts}
    test_sorted, failures = sorted_exactly(tokenizer, saved, test)
    held_sorted, _ = sorted_exactly(tokenizer, saved, [to_text(p) for p in held_out])
    all_sorted, _ = sorted_exactly(tokenizer, saved, [to_text(p) for p in all_prompts()])
    example = greedy_answers(tokenizer, saved, ["CBABBC"])[0]
    print(f"CBABBC -> {example}")
    print(f"held-out test: {test_sorted}/{TEST_DRAWS} sorted; failures: {sorted(set(failures))}")
    print(f"all held-out prompts: {held_sorted}/{len(held_out)}; all 729: {all_sorted}/729")

    results = {
        "parameters": count_parameters(model),
        "weights_bytes": (staging / "model.safetensors").stat().st_size,
        "train_prompts": len(train_prompts),
        "held_out_prompts": len(held_out),
        "settings": asdict(settings),
        "training_seconds": round(seconds, 1),
        "training_time": format_duration(seconds),
        "final_train_loss": final_loss,
        "command": command_line(),
        "machine": machine_description(),
        "example": {"prompt": "CBABBC", "output": example},
        "test": {
            "sorted": test_sorted,
            "total": TEST_DRAWS,
            "distinct": len(set(test)),
            "seen_in_training": len(set(test) & seen),
            "split_seed": SPLIT_SEED,
            "test_seed": TEST_SEED,
        },
        "held_out_all": {"sorted": held_sorted, "total": len(held_out)},
        "all_prompts": {"sorted": all_sorted, "total": len(all_prompts())},
    }
    write_json(staging / "training_results.json", results)
    (staging / "README.md").write_text(model_card(results))

    publish(staging, out)
    print(f"wrote {relative_to_repo(out)}")


if __name__ == "__main__":
    main()
