"""Real GPT-2 checkpoints whose greedy output is chosen by the test: "chain" models.

Every transformer block's output projections are zero, so the residual stream at
each position is just the token's embedding (position embeddings are zero too);
the untied unembedding row of token `j` points along the final-normed embedding
of the token that should come before it. Greedy decoding then follows a chain
of successors, `successor[token] -> next token`, through the real GPT-2 code, the
real tokenizer and any server, so a test can make the model say exactly "Dam" three
times, or a CR and then an LF.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

REPO = Path(__file__).resolve().parents[2]
_SHARED_GPT2 = REPO.parent / "shared" / "data" / "gpt2-tokenizer"
_DEMO_GPT2 = REPO / "demo_models" / "shakespeare"


@cache
def gpt2_tokenizer_folder() -> Path:
    """A folder holding GPT-2's real tokenizer (50,257 tokens), loaded as GPT2Tokenizer."""
    if (_DEMO_GPT2 / "tokenizer.json").is_file():
        return _DEMO_GPT2
    folder = Path(tempfile.mkdtemp(prefix="gpt2-tokenizer-"))
    with gzip.open(_SHARED_GPT2 / "tokenizer.json.gz") as packed:
        with open(folder / "tokenizer.json", "wb") as unpacked:
            shutil.copyfileobj(packed, unpacked)
    shutil.copy(_SHARED_GPT2 / "tokenizer_config.json", folder)
    return folder


def save_chain_gpt2(
    path: Path, successor: dict[int, int], *, n_embd: int = 128, n_positions: int = 1024
) -> Path:
    """Save a GPT-2 (real tokenizer) whose greedy next token after `t` is `successor[t]`.

    After a token missing from `successor`, the model says end-of-text.
    """
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_folder())
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=1,
        n_head=4,
        bos_token_id=eos,
        eos_token_id=eos,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:  # blocks add nothing to the residual stream
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                projection.weight.zero_()
                projection.bias.zero_()
        model.transformer.wpe.weight.zero_()
        hidden = model.transformer.ln_f(model.transformer.wte.weight)  # [vocab, n_embd]
        unit = hidden / hidden.norm(dim=-1, keepdim=True)
        rows = torch.zeros_like(model.lm_head.weight)
        for token, following in successor.items():
            rows[following] += 50.0 * unit[token]  # about 50·√n_embd after `token`, ~0 elsewhere
        # End-of-text: a constant lead through ln_f's bias, below any successor's score.
        towards = torch.randn(n_embd)
        towards /= towards.norm()
        model.transformer.ln_f.bias.copy_(3.0 * towards)
        rows[eos] = 80.0 * towards
        model.lm_head.weight.copy_(rows)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_chain_text(path: Path, chains: list[list[str]]) -> Path:
    """A chain model from chains of token texts: each text is followed by the next one.

    Every text must be one GPT-2 token (" cat", "\\r", "Dam"); a text that ends a chain
    without appearing again is followed by end-of-text.
    """
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_folder())
    successor: dict[int, int] = {}
    for chain in chains:
        ids = [_one_token(tokenizer, text) for text in chain]
        for token, following in zip(ids, ids[1:], strict=False):
            assert successor.setdefault(token, following) == following, f"{chain}: two successors"
    return save_chain_gpt2(path, successor)


def _one_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is {len(ids)} GPT-2 tokens, not one"
    return ids[0]


def save_gpt2_real_vocab(path: Path, *, n_layer: int, n_embd: int, n_head: int) -> Path:
    """A random-weight GPT-2 of the given shape with GPT-2's real 50,257-token tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_folder())
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=1024, n_embd=n_embd, n_layer=n_layer, n_head=n_head
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
