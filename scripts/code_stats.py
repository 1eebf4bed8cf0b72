"""Code statistics for the architecture work: module sizes, function lengths, request path.

    .venv/bin/python scripts/code_stats.py [--root PATH]

Static figures come from the source of `PATH/app` (default: this checkout):
modules per package, lines per module, and the median and longest function
(every `def`, methods included, decorators excluded, in lines).

The dynamic figure runs one streamed request in-process against a tiny offline
GPT-2 (built with the tests' `save_gpt2`), with a profiler on every thread
(the engine's native threads included), and lists the app modules whose code
ran for it. `--root` can point at an older checkout (e.g. a `git worktree`) to
measure the same figures before a change.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs inside the measured checkout: profile the second of two identical streamed requests.
_PROBE = r"""
import _thread, json, os, sys, tempfile, threading
os.environ["HF_HUB_OFFLINE"] = "1"
root = os.path.abspath("app") + os.sep
seen, recording = set(), [False]

def profile(frame, event, arg):
    if recording[0] and event == "call" and frame.f_code.co_filename.startswith(root):
        seen.add(os.path.relpath(frame.f_code.co_filename, os.path.dirname(root)))

_start = _thread.start_new_thread
def start_new_thread(fn, args, kwargs={}):
    def run(*a, **k):
        sys.setprofile(profile)
        return fn(*a, **k)
    return _start(run, args, kwargs)
_thread.start_new_thread = start_new_thread  # the engine takes its thread starter from here
threading.setprofile(profile)
sys.setprofile(profile)

try:
    from tests.support.tiny_models import save_gpt2
except ImportError:
    from tests.tiny_models import save_gpt2
from app import create_app

from pathlib import Path
folder = Path(tempfile.mkdtemp())
save_gpt2(folder / "tiny-gpt2")
client = create_app({"model_root": folder, "default_model": "tiny-gpt2"}).test_client()
body = {"prompt": "Hello world", "max_new_tokens": 4, "temperature": 0}
client.post("/generate/stream", json=body).get_data()  # load the model, warm up
recording[0] = True
response = client.post("/generate/stream", json=body)
assert response.status_code == 200, response.get_data()
data = response.get_data()
recording[0] = False
sys.setprofile(None)
print(json.dumps(sorted(seen)))
"""


def static_figures(app_dir: Path) -> dict:
    """Modules per package, lines per module, and function lengths."""
    packages: dict[str, list[tuple[str, int]]] = defaultdict(list)
    lengths: list[int] = []
    for path in sorted(app_dir.rglob("*.py")):
        relative = path.relative_to(app_dir.parent)
        package = str(relative.parent)
        source = path.read_text(encoding="utf-8")
        packages[package].append((relative.name, len(source.splitlines())))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths.append(node.end_lineno - node.lineno + 1)
    modules = [lines for entries in packages.values() for _, lines in entries]
    return {
        "packages": {name: dict(entries) for name, entries in sorted(packages.items())},
        "modules": len(modules),
        "lines": sum(modules),
        "median_module_lines": statistics.median(modules),
        "max_module_lines": max(modules),
        "functions": len(lengths),
        "median_function_lines": statistics.median(lengths),
        "max_function_lines": max(lengths),
    }


def request_path(root: Path) -> list[str]:
    """The app modules whose code runs for one streamed request (measured in `root`)."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"the request probe failed in {root}:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    """Print the figures for one checkout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="checkout to measure")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    figures = static_figures(args.root / "app")
    figures["stream_request_modules"] = request_path(args.root)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for package, modules in figures["packages"].items():
        sizes = ", ".join(f"{name} {lines}" for name, lines in modules.items())
        print(f"{package}/ ({len(modules)} modules): {sizes}")
    print(
        f"{figures['modules']} modules, {figures['lines']} lines; "
        f"module lines median {figures['median_module_lines']}, max {figures['max_module_lines']}"
    )
    print(
        f"{figures['functions']} functions; lines median {figures['median_function_lines']}, "
        f"max {figures['max_function_lines']}"
    )
    path = figures["stream_request_modules"]
    print(f"one streamed request runs code in {len(path)} modules: {', '.join(path)}")


if __name__ == "__main__":
    main()
