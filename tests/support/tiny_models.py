"""Tiny offline models with real architectures and real tokenizers (random weights).

Used by the tests and the benchmarks: nothing here touches the network.
- "tiny-gpt2": GPT-2 architecture, byte-level BPE tokenizer (like GPT-2's).
- "tiny-llama": Llama architecture (GQA, gated MLP, RMSNorm, rotary), a
  SentencePiece-style tokenizer: "▁" for spaces, BPE with byte fallback (like Llama 2).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# One model per family, built for every test run by tests/conftest.py's `model_root`.
MODEL_IDS = ("tiny-gpt2", "tiny-llama")

CORPUS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a beautiful princess who lived in a castle.",
    "Transformers turn tokens into vectors, mix them with attention, and predict the next token.",
    "Numbers like 1, 2, 3 and 42 appear too; so do   double  spaces and tabs\there.",
    "Accents: café, naïve, résumé. CJK: 你好，世界。日本語のテキスト。",
    "Emoji: 😀 🚀 👩‍💻 🎉 and a newline\nin the middle of a line.",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _corpus(repeat: int = 20) -> list[str]:
    rng = random.Random(0)
    lines = CORPUS * repeat
    rng.shuffle(lines)
    return lines


def _synthetic_lines(count: int = 4000) -> list[str]:
    """Random words, enough for a byte-level BPE to reach GPT-2's 50,257 tokens."""
    rng = random.Random(1)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(60000)]
    return [" ".join(rng.choice(words) for _ in range(60)) for _ in range(count)]


def build_gpt2_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE, as GPT-2: spaces are part of the following token ("Ġworld")."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _corpus() + (_synthetic_lines() if vocab_size > 1000 else [])
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def build_llama_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE with byte fallback, laid out like Llama 2's tokenizer.json."""
    specials = ["<unk>", "<s>", "</s>"]
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    # The 256 byte tokens come on top of what the trainer learns.
    learned_size = vocab_size - 256 if vocab_size > 1000 else vocab_size
    trainer = trainers.BpeTrainer(
        vocab_size=learned_size, special_tokens=specials, show_progress=False, max_token_length=8
    )
    lines = _corpus() + (_synthetic_lines() if vocab_size > 1000 else [])
    trained.train_from_iterator(lines, trainer=trainer)
    learned = trained.get_vocab()
    # Llama's layout: specials, then the 256 byte tokens <0x00>..<0xFF>, then the pieces.
    vocab = {token: i for i, token in enumerate(specials)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token, _ in sorted(learned.items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) for m in _merges(trained)]
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    tok.normalizer = trained.normalizer
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )


def _merges(tok: Tokenizer) -> list[list[str]]:
    import json

    model = json.loads(tok.to_str())["model"]
    return [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]


def save_gpt2(
    path: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 2048,
    vocab_size: int | None = None,
    seed: int = 0,
    activation: str = "gelu_new",
) -> Path:
    """Save a GPT-2 under `path`: tiny by default, any size on request."""
    tokenizer = build_gpt2_tokenizer(vocab_size or 400)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        activation_function=activation,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_llama(
    path: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    context: int = 2048,
    seed: int = 0,
    intermediate: int | None = None,
    vocab_size: int | None = None,
) -> Path:
    """Save a tiny Llama (grouped-query attention, gated MLP) under `path`."""
    tokenizer = build_llama_tokenizer(vocab_size or 300)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_gpt2_small_shape(path: Path) -> Path:
    """Random weights in GPT-2 small's exact shape (124M parameters, 50,257 tokens)."""
    return save_gpt2(path, n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)


def save_llama_1b_shape(path: Path) -> Path:
    """Random weights in TinyLlama-1.1B's shape (22 layers, GQA 32/4, 32,000 tokens)."""
    return save_llama(
        path,
        layers=22,
        hidden=2048,
        heads=32,
        kv_heads=4,
        context=2048,
        intermediate=5632,
        vocab_size=32000,
    )
