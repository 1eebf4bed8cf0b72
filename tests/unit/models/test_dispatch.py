"""LLMVIZ_DEVICE_MAP / LLMVIZ_MAX_MEMORY / LLMVIZ_OFFLOAD_DIR: parsed and checked at startup,
and a model split by them is described, kept off packing and lean steps, and generates what
the model loaded whole generates."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from app.config import Settings
from app.devicemap import parse_device_map, parse_max_memory
from app.engine import GenerationJob, SamplingParams, TokenEvent
from app.engine.lean import LeanStep
from app.errors import ModelLoadFailed
from app.models import dispatch
from app.models.loading import load, load_profile
from app.models.resolution import ModelSpec

# tiny-gpt2's modules, the last block and the final norm left on disk.
MAP = {
    "transformer.wte": "cpu",
    "lm_head": "cpu",
    "transformer.wpe": "cpu",
    "transformer.drop": "cpu",
    "transformer.h.0": "cpu",
    "transformer.h.1": "disk",
    "transformer.ln_f": "disk",
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ("auto", "auto"),
        ("sequential", "sequential"),
        ('{"": "disk"}', {"": "disk"}),
        (
            '{"model.layers.0": 0, "lm_head": "cpu", "x": "1"}',
            {"model.layers.0": 0, "lm_head": "cpu", "x": 1},
        ),
        ('{"a": "cuda:1"}', {"a": "cuda:1"}),
    ],
)
def test_device_maps_read_as_accelerate_takes_them(raw, expected):
    assert parse_device_map(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ('{"cpu": "150MB"}', {"cpu": "150MB"}),
        ('{"0": "70GiB", "1": 1000, "cpu": "1.5 GB"}', {0: "70GiB", 1: 1000, "cpu": "1.5 GB"}),
    ],
)
def test_memory_budgets_read_with_gpu_indices_as_ints(raw, expected):
    assert parse_max_memory(raw) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMVIZ_DEVICE_MAP": "everywhere"}, "LLMVIZ_DEVICE_MAP is not valid JSON"),
        ({"LLMVIZ_DEVICE_MAP": "[0, 1]"}, "LLMVIZ_DEVICE_MAP must be one of auto"),
        ({"LLMVIZ_DEVICE_MAP": "{}"}, "non-empty JSON object"),
        ({"LLMVIZ_DEVICE_MAP": '{"lm_head": "gpu"}'}, "'gpu' is not a device"),
        ({"LLMVIZ_DEVICE_MAP": '{"lm_head": true}'}, "True is not a device"),
        (
            {"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": "150MB"},
            "LLMVIZ_MAX_MEMORY is not valid",
        ),
        (
            {"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"cpu": "150Mb"}'},
            "the budget of 'cpu'",
        ),
        ({"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"cpu": 0}'}, "the budget of 'cpu'"),
        (
            {"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"ram": "1GB"}'},
            "'ram' is not a device to budget",
        ),
        # accelerate budgets GPUs by index only; a key with spaces would shadow another.
        (
            {"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"cuda:0": "1GB"}'},
            "'cuda:0' is not",
        ),
        ({"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{" cpu": "1GB"}'}, "' cpu' is not"),
        ({"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"cpu": "0MB"}'}, "the budget of"),
        ({"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_MAX_MEMORY": '{"cpu": "1TB"}'}, "units KB, MB, GB"),
        ({"LLMVIZ_MAX_MEMORY": '{"cpu": "1GB"}'}, "LLMVIZ_MAX_MEMORY applies only with"),
        ({"LLMVIZ_OFFLOAD_DIR": "/tmp/x"}, "LLMVIZ_OFFLOAD_DIR applies only with"),
        ({"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_DEVICE": "cpu"}, "leave LLMVIZ_DEVICE at auto"),
        ({"LLMVIZ_DEVICE_MAP": "auto", "LLMVIZ_QUANTIZE": "int8"}, "LLMVIZ_QUANTIZE cannot"),
    ],
)
def test_bad_placement_settings_stop_startup_naming_the_setting(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_loading_options_pass_the_settings_to_from_pretrained(tmp_path):
    settings = Settings.from_env(
        {
            "LLMVIZ_DEVICE_MAP": "auto",
            "LLMVIZ_MAX_MEMORY": '{"cpu": "150MB"}',
            "LLMVIZ_OFFLOAD_DIR": str(tmp_path),
        }
    )
    assert dispatch.loading_options(settings, "org/model") == {
        "device_map": "auto",
        "max_memory": {"cpu": "150MB"},
        "offload_folder": str(tmp_path / "org%2Fmodel"),  # a folder per model
    }
    assert dispatch.loading_options(Settings(), "org/model") == {}


@pytest.fixture
def bin_checkpoint(model_root, tmp_path):
    """tiny-gpt2 as a PyTorch pickle (`pytorch_model.bin`): accelerate must copy its disk
    layers into an offload folder before it can read them a layer at a time."""
    folder = tmp_path / "tiny-gpt2-bin"
    shutil.copytree(model_root / "tiny-gpt2", folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_a_map_that_must_copy_weights_to_disk_asks_for_the_offload_folder(bin_checkpoint):
    spec = ModelSpec("tiny-gpt2-bin", str(bin_checkpoint), local=True)
    settings = Settings.from_env({"LLMVIZ_DEVICE_MAP": json.dumps(MAP)})
    with pytest.raises(ModelLoadFailed, match="set LLMVIZ_OFFLOAD_DIR"):
        load(spec, settings)


def test_the_offload_folder_takes_the_copied_weights(bin_checkpoint, tmp_path):
    spec = ModelSpec("tiny-gpt2-bin", str(bin_checkpoint), local=True)
    offload = tmp_path / "offload"
    settings = Settings.from_env(
        {"LLMVIZ_DEVICE_MAP": json.dumps(MAP), "LLMVIZ_OFFLOAD_DIR": str(offload)}
    )
    loaded = load(spec, settings)
    try:
        written = sorted(p.name for p in (offload / "tiny-gpt2-bin").iterdir())
        assert "transformer.h.1.attn.c_attn.weight.safetensors" in written
        assert "transformer.h.0.attn.c_attn.weight.safetensors" not in written  # in memory
        ids = loaded.tokenizer("Hello")["input_ids"]
        assert len(_generate(loaded, ids, 5)) == 5
    finally:
        loaded.worker.close(cancel=True)
        loaded.worker.join(30)


def _generate(loaded, prompt_ids: list[int], tokens: int) -> list[int]:
    job = GenerationJob(prompt_ids, SamplingParams(max_new_tokens=tokens, temperature=0))
    loaded.enqueue(job)
    return [e.token_id for e in job.events(60.0) if isinstance(e, TokenEvent)]


def test_a_split_model_is_described_unpacked_and_generates_as_the_whole_one(model_root):
    spec = ModelSpec("tiny-gpt2", str(model_root / "tiny-gpt2"), local=True)
    profile = load_profile(spec)
    whole = load(spec, Settings(), profile)
    split = load(spec, Settings.from_env({"LLMVIZ_DEVICE_MAP": json.dumps(MAP)}), profile)
    try:
        placement = split.device_map
        assert placement is not None and whole.device_map is None
        assert placement["map"] == MAP
        assert placement["offloaded"] == ["transformer.h.1", "transformer.ln_f"]
        model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2")
        block = sum(p.numel() * 4 for p in model.transformer.h[1].parameters())
        norm = sum(p.numel() * 4 for p in model.transformer.ln_f.parameters())
        assert placement["bytes"]["disk"] == block + norm
        assert placement["bytes"]["cpu"] == split.memory_bytes
        assert split.packed_layers == 0 and whole.packed_layers > 0
        assert split.device == "cpu"
        assert split.describe()["device_map"] == placement
        ids = profile.tokenizer("Hello world")["input_ids"]
        assert _generate(split, ids, 10) == _generate(whole, ids, 10)
    finally:
        for loaded in (whole, split):
            loaded.worker.close(cancel=True)
            loaded.worker.join(30)


def test_a_split_model_has_no_lean_step(model_root, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        model_root / "tiny-gpt2", device_map=MAP, offload_folder=str(tmp_path)
    ).eval()
    assert dispatch.is_split(model)
    assert LeanStep.make(model) is None
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]))  # runs, reading the disk layers in


def test_a_map_onto_one_device_is_a_model_loaded_whole(model_root):
    model = AutoModelForCausalLM.from_pretrained(model_root / "tiny-gpt2", device_map="cpu")
    assert dispatch.device_map(model) is None and dispatch.describe(model) is None
    assert not dispatch.is_split(model)


_TIED_SPLIT = {**MAP, "transformer.h.1": "cpu", "transformer.ln_f": "cpu"}
_TIED = "tied weights 'lm_head.weight', 'transformer.wte.weight' must be on one device"


@pytest.mark.parametrize(
    ("device_map", "said"),
    [
        # An LM head tied to the embedding, on another device than it: accelerate loads a
        # model that fails at its first pass (head on disk), or refuses with a riddle.
        ({**_TIED_SPLIT, "lm_head": "disk"}, _TIED + ", not ['cpu', 'disk']"),
        ({**_TIED_SPLIT, "transformer.wte": "disk"}, _TIED),
        ({**MAP, "transformer.h.9": "disk"}, "no module named 'transformer.h.9' in this model"),
        ({"": "cpu", "transformer.h.1": "disk"}, "('transformer.h.1' inside '')"),
        (
            {k: v for k, v in MAP.items() if k != "transformer.wpe"},
            "1 parameters are placed by no entry ('transformer.wpe.weight')",
        ),
        # A map written for another architecture: a short message, not every parameter.
        ({"model.embed_tokens": "cpu", "model.layers": "disk"}, "no module named 'model."),
    ],
)
def test_a_map_that_does_not_fit_the_model_fails_its_load_naming_why(model_root, device_map, said):
    spec = ModelSpec("tiny-gpt2", str(model_root / "tiny-gpt2"), local=True)
    settings = Settings.from_env({"LLMVIZ_DEVICE_MAP": json.dumps(device_map)})
    with pytest.raises(ModelLoadFailed, match="does not fit GPT2LMHeadModel") as caught:
        load(spec, settings)
    assert said in caught.value.message and len(caught.value.message) < 400


def test_an_offload_folder_that_cannot_be_made_fails_the_load(model_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    spec = ModelSpec("tiny-gpt2", str(model_root / "tiny-gpt2"), local=True)
    settings = Settings.from_env(
        {"LLMVIZ_DEVICE_MAP": json.dumps(MAP), "LLMVIZ_OFFLOAD_DIR": str(blocker / "offload")}
    )
    with pytest.raises(ModelLoadFailed, match="LLMVIZ_OFFLOAD_DIR: cannot make"):
        load(spec, settings)
