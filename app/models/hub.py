"""The Hugging Face hub: whether it can be reached, and downloading a model with progress.

Without a network, huggingface_hub retries each request with backoff (about 47 s
for one unknown id here). One HEAD request to the hub's endpoint
(`HF_ENDPOINT`), given 2 seconds in all and its answer kept for a minute, tells at
once; loads then use the local cache only (`local_files_only`) and fail fast with
a message that says how to serve offline.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import time
import urllib.error
import urllib.request

from app.engine.threads import NativeQueue, native_lock, start_native_thread
from app.models.progress import LoadProgress

_CHECK_SECONDS = 2.0
_REMEMBER_SECONDS = 60.0
# A real lock: loads on several of gevent's pool threads ask at once (a gevent lock shared
# between threads can leave a waiter asleep: see threads.native_logging_locks).
_lock = native_lock()
_last: tuple[float, bool] | None = None  # (when, reachable)

OFFLINE_HELP = (
    "to serve offline, put the model's folder under LLMVIZ_MODEL_ROOT, set HF_HUB_OFFLINE=1 "
    "to use the local hub cache without waiting, or use a demo model "
    "(llmviz/shakespeare, llmviz/nano-sort)"
)


def offline() -> bool:
    """True when hub downloads are off (HF_HUB_OFFLINE=1) or the hub cannot be reached."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or not reachable(constants.ENDPOINT)


def reachable(endpoint: str) -> bool:
    """Whether `endpoint` (a URL) answers HTTP within 2 s; the answer is kept a minute."""
    global _last
    with _lock:
        if _last is not None and time.monotonic() - _last[0] < _REMEMBER_SECONDS:
            return _last[1]
    answers = NativeQueue()
    # On a thread of its own: a name lookup is not bound by the socket's timeout.
    start_native_thread(lambda: answers.put(_connects(endpoint)))
    try:
        answer = answers.get(timeout=_CHECK_SECONDS)
    except queue.Empty:
        answer = False
    with _lock:
        _last = (time.monotonic(), answer)
    return answer


def _connects(endpoint: str) -> bool:
    # An HTTP answer of any status, not only an open socket: a proxy may accept every
    # connection and still fail every request.
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=_CHECK_SECONDS):
            return True
    except urllib.error.HTTPError:  # the hub answered, with an error status
        return True
    except (OSError, ValueError):  # no route, no name resolution, refused, timed out
        return False


def forget() -> None:
    """Ask again next time (tests)."""
    global _last
    with _lock:
        _last = None


# What transformers reads of a repository: its top-level configs and tokenizer files, and
# one format of weights (safetensors when there are any). Other files (ONNX exports, other
# formats, subfolders) are never fetched.
_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")
_FALLBACK_WEIGHTS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
_OTHERS = ("*.json", "*.txt", "*.model", "*.tiktoken")


def download(repo_id: str, progress: LoadProgress) -> None:
    """Download what transformers will read of `repo_id` into the hub cache, reporting each
    file's bytes to `progress`; files already cached are not fetched again.

    Raises what huggingface_hub raises (OSError subclasses for missing repos and files).
    """
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi().model_info(repo_id, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings or [] if "/" not in s.rfilename}
    wanted = _pick(list(sizes))
    progress.expect({name: sizes[name] for name in wanted})
    for name in wanted:
        path = hf_hub_download(repo_id, name, tqdm_class=progress.bar(name))
        progress.have(name, os.path.getsize(path))  # also a file the cache already held


def _pick(names: list[str]) -> list[str]:
    def matching(patterns: tuple[str, ...]) -> list[str]:
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    weights = matching(_WEIGHTS) or matching(_FALLBACK_WEIGHTS)
    return list(dict.fromkeys(matching(_OTHERS) + weights))
