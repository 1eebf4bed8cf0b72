"""/inspect's work is bounded by what it returns: no [positions, vocab] tensor for a whole
input, let alone [layers, positions, vocab] (a 1024-token inspection of GPT-2 small's
shape raised the worker's memory by 1.7 GB, for a 32 MB answer)."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM

from app.analysis import inspection
from app.engine import HeadSelection
from tests.support.tiny_models import save_gpt2, save_llama

ROWS = 64  # positions per chunk, set through CHUNK_BYTES below
TOKENS = 3 * ROWS + 5  # several chunks of positions, one of them partial


class LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any torch operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.numel = max(self.numel, value.numel())
        return out


@pytest.fixture
def small_chunks(monkeypatch, gpt2):
    # tiny-gpt2's 400-token vocabulary fits a whole input in one chunk of the real size.
    monkeypatch.setattr(inspection, "CHUNK_BYTES", ROWS * 4 * gpt2.config.vocab_size)


@pytest.fixture(scope="module")
def gpt2(model_root):
    return AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2").eval()


@torch.inference_mode()
def test_logit_lens_never_holds_a_whole_inputs_logits(gpt2, small_chunks):
    vocab, width = gpt2.config.vocab_size, gpt2.config.n_embd
    layers = [0, 1]
    residuals = {i: (torch.randn(TOKENS, width), torch.randn(TOKENS, width)) for i in layers}
    ids = [i % vocab for i in range(TOKENS)]
    with LargestTensor() as largest:
        inspection._logit_lens(gpt2, ids, layers, residuals, 5, [])
    assert largest.numel <= ROWS * vocab < TOKENS * vocab


@torch.inference_mode()
def test_next_token_works_through_the_logits_a_chunk_at_a_time(gpt2, small_chunks):
    vocab = gpt2.config.vocab_size
    logits = torch.randn(TOKENS, vocab)  # what the forward pass returns: the input here
    with LargestTensor() as largest:
        answer = inspection._next_token(logits, 5, [])
    assert largest.numel <= ROWS * vocab
    assert answer["ids"]["shape"] == [TOKENS, 5]


def test_a_chunk_is_mapped_memory_whatever_the_vocabulary():
    for vocab in (50_257, 128_256, 256_000):
        rows = inspection.positions_per_chunk(vocab)
        assert 32 << 20 <= rows * vocab * 4 <= inspection.CHUNK_BYTES
    assert inspection.positions_per_chunk(10**9) == 1


class LiveAttentionWeights(TorchDispatchMode):
    """Records how many [.., T, T] tensors (one layer's attention weights, or bigger) are
    alive at once while it is on."""

    def __init__(self, tokens: int, heads: int) -> None:
        super().__init__()
        self.size = heads * tokens * tokens
        self.tokens = tokens
        self.alive: list[weakref.ref] = []
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if (
                isinstance(value, torch.Tensor)
                and value.dim() >= 2
                and value.shape[-2:] == (self.tokens, self.tokens)
                and value.numel() >= self.size
            ):
                self.alive.append(weakref.ref(value))
        self.alive = [ref for ref in self.alive if ref() is not None]
        # Views (an indexed layer, a transpose) share their base's memory: count memory.
        storages = {
            t.untyped_storage().data_ptr() for ref in self.alive if (t := ref()) is not None
        }
        self.most = max(self.most, len(storages))
        return out


@pytest.fixture(scope="module")
def six_layers(tmp_path_factory):
    """GPT-2 and Llama with 6 layers: enough that holding them all shows."""
    root = tmp_path_factory.mktemp("six-layers")
    return {
        "gpt2": save_gpt2(root / "gpt2", n_layer=6),
        "llama": save_llama(root / "llama", layers=6),
    }


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("attention_format", ["topk", "dense"])
def test_attention_is_reduced_a_layer_at_a_time(six_layers, family, attention_format):
    """output_attentions kept every layer's [H, T, T] weights to the end of the pass (0.6 GB
    at 1024 tokens on GPT-2 small); each layer's are now reduced as they are made."""
    model = AutoModelForCausalLM.from_pretrained(six_layers[family]).eval()
    text = model.config.get_text_config()
    n_layers, heads, tokens = text.num_hidden_layers, text.num_attention_heads, 40
    sel = inspection.Selection(
        include=frozenset({"attention"}),
        scope=HeadSelection(layers=tuple(range(n_layers))),
        attention_format=attention_format,
    )
    with LiveAttentionWeights(tokens, heads) as live:
        answer = inspection.inspect(model, None, list(range(tokens)), sel)
    # One layer's weights and its temporaries (scores, softmax); a dense answer also keeps
    # each layer's float16 copy, which is the answer itself.
    kept = n_layers if attention_format == "dense" else 0
    assert live.most <= 3 + kept
    assert answer["attention"]["format"] == attention_format
