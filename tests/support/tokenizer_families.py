"""Small tokenizers of every family, laid out and declared as the real checkpoints are.

Each family is saved as a folder that `AutoTokenizer.from_pretrained` loads through the
class the real checkpoints name in their tokenizer_config.json, so transformers builds
the same pipeline (pre-tokenizer, normalizer, decoder) for them as for the real ones:
- "gpt2": GPT-2's own vocabulary (50,257 tokens), `GPT2Tokenizer`.
- "llama2-legacy": `LlamaTokenizerFast` (in transformers 5 the same class as
  `LlamaTokenizer`) with `legacy: true`: Metaspace prepends "▁" to every piece of text,
  after special tokens too, as many Llama 2 derived checkpoints declare.
- "tinyllama": `LlamaTokenizer` with `legacy: false` (TinyLlama, Llama 2): "▁" in front of
  the text only; its decoder strips that one leading space.
- "llama2-json": Llama 2's converted tokenizer.json (Prepend and Replace normalizers, a
  Strip decoder) loaded as a plain `PreTrainedTokenizerFast`, as the repo's tiny-llama is.
- "gemma": `GemmaTokenizer`: SentencePiece BPE with byte fallback and no prefix space.
- "qwen2": `Qwen2Tokenizer`: byte-level BPE, NFC normalizer, no BOS token.
- "llama3": Llama 3's tokenizer.json (byte-level BPE, `<|begin_of_text|>` added in front)
  loaded as `PreTrainedTokenizerFast`, as Meta ships it.

The SentencePiece-style vocabularies are BPEs trained with the `tokenizers` library on a
few paragraphs of public-domain English, with byte fallback for everything else; the
Llama one is trained without splitting words, so pieces such as "o▁" and a lone "▁"
exist, the other with SentencePiece's whitespace split.
"""

from __future__ import annotations

import atexit
import json
import random
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoTokenizer,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tests.support.chain_models import gpt2_tokenizer_folder

FAMILIES = ("gpt2", "llama2-legacy", "tinyllama", "llama2-json", "gemma", "qwen2", "llama3")

# Byte-level BPEs; the others are SentencePiece BPEs with byte fallback ("<0x..>" tokens).
BYTE_LEVEL = frozenset({"gpt2", "qwen2", "llama3"})
# Decoders that strip one space from the front of the decoded text (SentencePiece's prefix space).
STRIPS_LEADING_SPACE = frozenset({"llama2-legacy", "tinyllama", "llama2-json"})
# Metaspace pre-tokenizers that add no prefix space to a text that starts with one, so the
# decoder strips the prompt's own: " Hi" decodes to "Hi".
DROPS_LEADING_SPACE = frozenset({"llama2-legacy", "tinyllama"})
# Legacy SentencePiece: "▁" in front of the text after each special token, too.
INSERTS_SPACE_AFTER_SPECIALS = frozenset({"llama2-legacy", "llama2-json"})
# Normalizers that rewrite text (Qwen2: NFC).
NORMALIZATION = {"qwen2": "NFC"}
# SentencePiece: "▁" (U+2581) in a text reads as a space.
METASPACE = frozenset(set(FAMILIES) - BYTE_LEVEL)

# Prompts that have broken tokenizers before: spaces, line breaks, emoji, scripts.
HARD_STRINGS = (
    "Hello world",
    "a 🦙 Ω  two  spaces",
    "\nfoo",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "repeated    spaces   inside",
    "   ",
    "tabs\tbetween\t\twords\t",
    "\tleading tab",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nbreaks\r\n",
    "old mac\rline\rbreaks",
    "\r\nstarts with CRLF",
    "\n\n\nthree newlines",
    "emoji 😀 rocket 🚀 party🎉",
    "ZWJ 👩‍💻 family 👨‍👩‍👧‍👦 rainbow 🏳️‍🌈",
    "flags 🇫🇷🇯🇵 🇺🇸 skin 👍🏽 keycap 1️⃣",
    "CJK 你好，世界。日本語のテキスト 한국어",
    "combining cafe\u0301 nai\u0308ve A\u030a",
    "precomposed café naïve Å",
    "RTL مرحبا بالعالم and שלום עולם",
    "mixed abc שלום 123 عربي xyz",
    "🦙",
    " 🦙 ",
    "U+FFFD in the text: a\ufffdb \ufffd",
    "U+2581 in the text: a\u2581b \u2581 c\u2581",
    "",
)

PARAGRAPHS = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
    "money in my purse, and nothing particular to interest me on shore, I thought I would "
    "sail about a little and see the watery part of the world.",
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife.",
    "Hello world! The quick brown fox jumps over the lazy dog. Once upon a time there was "
    "a princess who lived in a castle by the sea.",
    "    indented  with   spaces\tand\ttabs\nnew lines\r\nwindows lines\rold lines\n\n",
    "Words from elsewhere: 你好，世界。 café naïve Ω 🦙 שלום مرحبا 👍",  # pieces, not bytes
)

LLAMA_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GEMMA_CHAT = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
QWEN_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3_CHAT = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
    "<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

QWEN_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus() -> list[str]:
    """The training lines: the paragraphs, shuffled and repeated."""
    rng = random.Random(0)
    lines = list(PARAGRAPHS) * 8
    rng.shuffle(lines)
    return lines


@cache
def family_root() -> Path:
    """A model root with every family's tokenizer and tiny model, built once per test run."""
    root = Path(tempfile.mkdtemp(prefix="tokenizer-families-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for family in FAMILIES:
        save_model(family, root / family)
    return root


@cache
def family_tokenizer(family: str) -> PreTrainedTokenizerBase:
    """`family`'s tokenizer from `family_root()`, loaded once."""
    return load_tokenizer(family_root() / family)


def save_tokenizer(family: str, folder: Path) -> Path:
    """Write `family`'s tokenizer files into `folder`, as its real checkpoints lay them out."""
    folder.mkdir(parents=True, exist_ok=True)
    _BUILDERS[family](folder)
    return folder


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer in `folder`, loaded as the server loads it."""
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def save_model(family: str, folder: Path, *, seed: int = 0) -> Path:
    """Save `family`'s tokenizer and a tiny random model of its architecture into `folder`."""
    save_tokenizer(family, folder)
    tokenizer = load_tokenizer(folder)
    torch.manual_seed(seed)
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    model = _MODELS[family](len(tokenizer), ids)
    if family not in BYTE_LEVEL:
        _prefer_pieces(model, tokenizer)
    model.save_pretrained(folder)
    return folder


def _prefer_pieces(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make byte tokens unlikely: a random model says few runs of bytes that are no UTF-8.

    (Such a run decodes whole as one "�" per byte, which a stream cannot match; see
    test_an_invalid_byte_run_differs_only_inside_it.)
    """
    byte_ids = [i for token, i in tokenizer.get_vocab().items() if token.startswith("<0x")]
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.mul_(25.0)  # logits spread out: the likeliest tokens take most of the mass
        head[byte_ids] = 0.0


# -- SentencePiece-style BPE (Llama 1/2, TinyLlama, Gemma) --


def _sentencepiece_bpe(specials: list[str], split: bool, prepend: bool) -> Tokenizer:
    """A byte-fallback BPE over "▁" text, vocabulary laid out as Llama's and Gemma's."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = _llama_json("", 0, prepend)[0]
    if split:  # SentencePiece's own split: "▁" starts a piece
        trained.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=["▁"],
        max_token_length=8,
        show_progress=False,
    )
    trained.train_from_iterator(corpus(), trainer=trainer)
    learned = json.loads(trained.to_str())["model"]
    vocab = {token: i for i, token in enumerate(specials)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    return Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )


def _llama_json(bos: str, bos_id: int, prepend: bool) -> list:
    """Llama 2's converted normalizer, decoder and post-processor (Gemma's: no prefix space)."""
    parts = [normalizers.Replace(" ", "▁")]
    chain = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prepend:
        parts.insert(0, normalizers.Prepend("▁"))
        chain.append(decoders.Strip(content=" ", left=1, right=0))
    template = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return [normalizers.Sequence(parts), decoders.Sequence(chain), template]


def _save_sentencepiece(
    folder: Path, specials: list[str], bos: str, split: bool, prepend: bool
) -> None:
    tok = _sentencepiece_bpe(specials, split, prepend)
    pipeline = _llama_json(bos, specials.index(bos), prepend)
    tok.normalizer, tok.decoder, tok.post_processor = pipeline
    tok.add_special_tokens(specials)
    tok.save(str(folder / "tokenizer.json"))


def _added(tokens: dict[int, str]) -> dict[str, dict]:
    """tokenizer_config.json's `added_tokens_decoder`, every token special."""
    return {
        str(i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, content in tokens.items()
    }


def _write_config(folder: Path, config: dict) -> None:
    text = json.dumps(config, indent=2, ensure_ascii=False)
    (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")


def _llama(folder: Path, *, legacy: bool | None, tokenizer_class: str) -> None:
    specials = ["<unk>", "<s>", "</s>"]
    _save_sentencepiece(folder, specials, "<s>", split=False, prepend=True)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": _added(dict(enumerate(specials))),
        "bos_token": "<s>",
        "chat_template": LLAMA_CHAT,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": tokenizer_class,
        "unk_token": "<unk>",
    }
    if legacy is not None:
        config["legacy"] = legacy
    _write_config(folder, config)


def _gemma(folder: Path) -> None:
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    _save_sentencepiece(folder, specials, "<bos>", split=True, prepend=False)
    _write_config(
        folder,
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": _added(dict(enumerate(specials))),
            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
            "bos_token": "<bos>",
            "chat_template": GEMMA_CHAT,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<eos>",
            "model_max_length": 8192,
            "pad_token": "<pad>",
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "GemmaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        },
    )


# -- byte-level BPE (GPT-2, Qwen2, Llama 3) --


def _byte_level_bpe(regex: str, specials: list[str], nfc: bool) -> Tokenizer:
    """A byte-level BPE whose pre-tokenizer splits with `regex`, as tiktoken-style models do."""
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens(specials)
    return tok


def _qwen2(folder: Path) -> None:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = _byte_level_bpe(QWEN_REGEX, specials, nfc=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(folder / "tokenizer.json"))
    first = tok.token_to_id(specials[0])
    _write_config(
        folder,
        {
            "add_prefix_space": False,
            "added_tokens_decoder": _added({first + i: s for i, s in enumerate(specials)}),
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "chat_template": QWEN_CHAT,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|endoftext|>",
            "errors": "replace",
            "model_max_length": 32768,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )


def _llama3(folder: Path) -> None:
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tok = _byte_level_bpe(LLAMA3_REGEX, specials, nfc=False)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))],
            ),
        ]
    )
    tok.save(str(folder / "tokenizer.json"))
    first = tok.token_to_id(specials[0])
    _write_config(
        folder,
        {
            "added_tokens_decoder": _added({first + i: s for i, s in enumerate(specials)}),
            "bos_token": "<|begin_of_text|>",
            "chat_template": LLAMA3_CHAT,
            "clean_up_tokenization_spaces": True,
            "eos_token": "<|end_of_text|>",
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )


def _gpt2(folder: Path) -> None:
    source = gpt2_tokenizer_folder()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "gpt2": _gpt2,
    "llama2-legacy": lambda folder: _llama(
        folder, legacy=True, tokenizer_class="LlamaTokenizerFast"
    ),
    "tinyllama": lambda folder: _llama(folder, legacy=False, tokenizer_class="LlamaTokenizer"),
    "llama2-json": lambda folder: _llama(
        folder, legacy=None, tokenizer_class="PreTrainedTokenizerFast"
    ),
    "gemma": _gemma,
    "qwen2": _qwen2,
    "llama3": _llama3,
}


# -- tiny random models of each family's architecture --

_SHAPE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
_HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}


def _llama_model(vocab: int, ids: dict) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **_SHAPE, **_HEADS, **ids))


def _gemma_model(vocab: int, ids: dict) -> GemmaForCausalLM:
    config = GemmaConfig(vocab_size=vocab, head_dim=8, pad_token_id=0, **_SHAPE, **_HEADS, **ids)
    return GemmaForCausalLM(config)


def _qwen2_model(vocab: int, ids: dict) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **_SHAPE, **_HEADS, **ids))


def _gpt2_model(vocab: int, ids: dict) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=512, **ids)
    return GPT2LMHeadModel(config)


_MODELS = {
    "gpt2": _gpt2_model,
    "llama2-legacy": _llama_model,
    "tinyllama": _llama_model,
    "llama2-json": _llama_model,
    "gemma": _gemma_model,
    "qwen2": _qwen2_model,
    "llama3": _llama_model,
}
