"""The fused decoding step in C (app/engine/kernels): one unpadded row, within 1e-4 of
PyTorch's logits, used only where it builds and agrees."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from app.config import Settings
from app.engine.attention import HeadSelection
from app.engine.batch import DecodeBatch
from app.engine.kernels import build, gpt2
from app.engine.lean import LeanStep
from app.models.packing import pack_linear_layers
from app.models.quantizing import quantize_linear_layers, weight_bytes
from tests.conftest import SLOW_ACTIVATION
from tests.support.compiler import require_compiler

VOCAB = 300


@pytest.fixture(autouse=True)
def _compiler():
    require_compiler()


REPO = Path(__file__).resolve().parents[3]


def _gpt2(seed: int = 0, **config) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    options = dict(n_layer=3, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=160)
    model = GPT2LMHeadModel(GPT2Config(**(options | config))).eval()
    # Random weights of std 0.02 give logits under 1; twice that, logits up to about 3.
    # (At eight times, float32 rounding alone moves them 2e-3: oneDNN's products against
    # MKL's as much as the C step against either.)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(2.0)
    return model


class _Counting:
    """Wraps a fused step and counts its calls."""

    def __init__(self, fused: gpt2.FusedStep) -> None:
        self.fused, self.calls = fused, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fused(*args)


def _lean(model) -> tuple[LeanStep, _Counting]:
    lean = LeanStep.make(model)
    assert lean is not None and lean.fused is not None
    spy = _Counting(lean.fused)
    lean.fused = spy  # type: ignore[assignment]
    return lean, spy


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= 1e-4 * scale


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"packed": True},
        {"activation_function": "gelu"},
        {"activation_function": "relu"},
        {"scale_attn_by_inverse_layer_idx": True},
        {"n_inner": 96, "tie_word_embeddings": False},
    ],
    ids=["conv1d", "packed", "gelu-erf", "relu", "scaled-by-layer", "own-head-and-mlp-width"],
)
def test_one_row_decodes_fused_within_1e_4_of_transformers(variant):
    """Teacher-forced over 80 steps (past the cache's first headroom, so it grows in place
    under the C step): every step's logits within 1e-4 of transformers' forward."""
    options = dict(variant)
    packed = options.pop("packed", False)
    model = _gpt2(**options)
    if packed:
        assert pack_linear_layers(model, keep_plain=True) > 0
    lean, spy = _lean(model)
    fused, reference = DecodeBatch(model, lean), DecodeBatch(model)
    prompt = [(7 * i) % VOCAB for i in range(1, 36)]
    token = 0
    for batch in (fused, reference):
        token = int(batch.prefill([prompt], [None]).logits.argmax())
    for step in range(80):
        expected = reference.step([token]).logits
        got = fused.step([token]).logits
        _close(got, expected)
        assert int(got.argmax()) == int(expected.argmax()), f"step {step}"
        token = int(expected.argmax())
    assert spy.calls == 80


def test_a_row_left_alone_after_padding_is_fused_and_right():
    """Two rows of different lengths, then the long one leaves: the short one's cache was
    cut to a view of the padded buffer (strided), and the C step reads and extends it."""
    model = _gpt2(seed=1)
    lean, spy = _lean(model)
    batch = DecodeBatch(model, lean)
    long_prompt, short_prompt = list(range(10, 30)), [40, 41, 42]
    batch.prefill([long_prompt, short_prompt], [None, None])
    tokens, fed = [50, 51], []  # fed: the short row's tokens after its prompt
    for _ in range(3):
        fed.append(tokens[1])
        tokens = batch.step(tokens).logits.argmax(-1).tolist()
    assert spy.calls == 0  # two rows, one of them padded: the eager step
    batch.remove([0])
    keys = batch._state()[0].layers[0].keys
    assert not keys.is_contiguous()  # the padding columns were cut off a wider buffer
    reference = DecodeBatch(model)  # the short row decoded alone by transformers
    reference.prefill([short_prompt + fed], [None])
    token = tokens[1]
    for _ in range(5):
        expected = reference.step([token]).logits
        _close(batch.step([token]).logits, expected)
        token = int(expected.argmax())
    assert spy.calls == 5


def test_two_rows_take_the_eager_step():
    model = _gpt2(seed=2)
    lean, spy = _lean(model)
    batch = DecodeBatch(model, lean)
    batch.prefill([[1, 2, 3], [4, 5, 6]], [None, None])
    batch.step([7, 8])
    assert spy.calls == 0


def test_a_fused_step_that_differs_is_not_used(monkeypatch, caplog):
    real = gpt2.FusedStep.__call__

    def off(self, *args):
        return real(self, *args) + 1e-2

    monkeypatch.setattr(gpt2.FusedStep, "__call__", off)
    with caplog.at_level(logging.WARNING):
        lean = LeanStep.make(_gpt2())
    assert lean is not None and lean.fused is None
    assert "fused decoding step's logits differ" in caplog.text


def test_the_setting_turns_it_off():
    assert Settings.from_env({"LLMVIZ_FUSED_STEP": "0"}).fused_step is False
    assert Settings.from_env({}).fused_step is True
    lean = LeanStep.make(_gpt2(), fused=False)
    assert lean is not None and lean.fused is None


def test_no_compiler_means_no_fused_step(monkeypatch, caplog):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(build.KernelUnavailable, match="no C compiler"):
        build._build()

    def unavailable():
        raise build.KernelUnavailable("no C compiler found (looked for /nonexistent/cc)")

    monkeypatch.setattr(gpt2, "library", unavailable)
    with caplog.at_level(logging.WARNING):
        lean = LeanStep.make(_gpt2())
    assert lean is not None and lean.fused is None  # the lean step still runs
    assert "no fused decoding step: no C compiler" in caplog.text


def test_a_token_or_position_outside_the_model_is_refused_and_writes_nothing():
    model = _gpt2(n_positions=40)
    lean, _ = _lean(model)
    batch = DecodeBatch(model, lean)
    batch.prefill([[1, 2, 3]], [None])
    cache = batch._state()[0]
    fused = lean.fused
    assert fused is not None
    for token, position in ((VOCAB, 3), (-1, 3), (5, 40)):
        with pytest.raises(ValueError, match="outside the model"):
            fused(token, position, cache)
        assert cache.get_seq_length() == 3


def test_quantized_layers_have_no_fused_step():
    model = _gpt2()
    assert quantize_linear_layers(model, "int8") > 0
    lean = LeanStep.make(model)
    assert lean is None or lean.fused is None


def test_plain_copies_are_counted_once_in_memory():
    """Packing with plain copies kept adds the blocks' weights, not the tied head's again."""
    kept, dropped = _gpt2(), _gpt2()
    pack_linear_layers(kept, keep_plain=True)
    pack_linear_layers(dropped)
    config = kept.config
    d, mlp = config.n_embd, 4 * config.n_embd
    per_block = 4 * (3 * d * d + d * d + 2 * d * mlp)
    assert weight_bytes(kept) - weight_bytes(dropped) == config.n_layer * per_block


def test_it_builds_under_gevent_from_a_native_thread_and_a_pool_thread():
    """As gunicorn's gevent worker loads a model: on a native thread, where gevent's patched
    `subprocess` refuses to run (child watchers need gevent's default loop); and after the
    patched `subprocess` has run, whose SIGCHLD watcher reaps the compiler first."""
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import subprocess
        from app.engine.kernels import build
        from app.engine.threads import run_off_hub, run_on_new_thread
        subprocess.run(["true"], check=True)
        print(type(run_on_new_thread(build._build)).__name__,
              type(run_off_hub(build._build)).__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CDLL", "CDLL"]


def test_slow_gpt2_keeps_the_lean_pace(model_root):
    """The tests' slow-gpt2 must stay off the fused step (tests/conftest.py): tests of drains
    and of readers leaving need its generations to last. If the fused step learns its
    activation, give slow-gpt2 another."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_root / "slow-gpt2").eval()
    assert model.config.activation_function == SLOW_ACTIVATION
    lean = LeanStep.make(model)
    assert lean is not None and lean.fused is None


def test_a_model_of_a_few_tokens_and_positions_gets_both_steps():
    """The probes that check both steps keep their ids inside the vocabulary (the demo
    nano-sort has 3 tokens and 12 positions)."""
    lean = LeanStep.make(_gpt2(vocab_size=3, n_positions=12))
    assert lean is not None and lean.fused is not None


def test_a_watched_row_and_a_hooked_pass_keep_transformers_forward():
    """Requests that capture internals (live attention) or change them (interventions,
    whose passes run with lean=False) never take the fused step: their numbers stay exact."""
    model = _gpt2(seed=3)
    lean, spy = _lean(model)
    watched = DecodeBatch(model, lean)
    watched.prefill([[1, 2, 3]], [HeadSelection(layers=(0,), heads=None)])
    assert watched.step([4]).attention[0] is not None
    hooked = DecodeBatch(model, lean)
    hooked.prefill([[1, 2, 3]], [None])
    reference = DecodeBatch(model)
    reference.prefill([[1, 2, 3]], [None])
    assert torch.equal(hooked.step([4], lean=False).logits, reference.step([4]).logits)
    assert spy.calls == 0


def test_no_writable_temporary_folder_means_no_fused_step(monkeypatch, tmp_path):
    monkeypatch.setattr(build.tempfile, "tempdir", str(tmp_path / "missing"))
    with pytest.raises(build.KernelUnavailable, match="no folder to build"):
        build._build()


def test_a_compiler_command_with_arguments_and_clang_s_flag():
    """`CC` may be a command (`ccache gcc`); clang is asked for libgomp by name, not its
    own libomp (a second OpenMP runtime beside torch's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CC", "env gcc")
        compiler = build._compiler()
        assert compiler[1:] == ["gcc"] and compiler[0].endswith("/env")
        assert build._build() is not None
    assert build._openmp(["/usr/bin/clang-16"]) == ["-fopenmp=libgomp"]
    assert build._openmp(["/usr/bin/gcc"]) == ["-fopenmp"]
