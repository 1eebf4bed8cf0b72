"""Helpers shared by the demo-model training scripts (`train_nano_sort.py`, `train_shakespeare.py`).

Nothing here trains anything: it seeds, pins the thread count, describes the machine and the
command line for the model cards, and keeps the scripts' download/tokenization cache out of git.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / "scripts" / ".cache"


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators, so a rerun draws the same batches and weights."""
    random.seed(seed)
    torch.manual_seed(seed)


def limit_threads(threads: int) -> None:
    """Pin torch to `threads` CPU threads (the machine is shared with test runs)."""
    torch.set_num_threads(threads)
    # Inter-op parallelism would add threads beyond the limit for no gain on these small graphs.
    torch.set_num_interop_threads(1)


def cache_dir() -> Path:
    """The scripts' cache folder; it ignores itself in git, as `.pytest_cache` does."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    marker = CACHE_DIR / ".gitignore"
    if not marker.exists():
        marker.write_text("# Created by scripts/demo_common.py: downloads and token caches.\n*\n")
    return CACHE_DIR


def machine_description() -> str:
    """One line naming the CPU, its core count, the memory, and the torch build."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}, no GPU; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}"
    )


def command_line() -> str:
    """The command that is running, written as it would be typed at the repository root."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(REPO_ROOT))
    except ValueError:
        shown = str(python)
    script = Path(sys.argv[0]).resolve()
    try:
        script_shown = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_shown = str(script)
    return shlex.join([shown, script_shown, *sys.argv[1:]])


def format_duration(seconds: float) -> str:
    """`95.2` → `"1 min 35 s"`, for the model cards."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters; `parameters()` already yields a tied matrix once."""
    return sum(p.numel() for p in model.parameters())


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def relative_to_repo(path: Path) -> str:
    """`path` as the model card shows it: relative to the repository when it lies inside."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def publish(staging: Path, out: Path) -> None:
    """Replace `out` with the finished `staging` folder, readable by all like a normal checkout.

    Building in a temporary folder first means a failed check never leaves a half-made model.
    """
    staging.chmod(0o755)  # mkdtemp makes it private
    for file in staging.iterdir():
        file.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), out)
