"""Where a client's model_id points: a folder under the model root or a hub repository.

Resolution never leaves the model root: absolute paths, `..` and the like are refused.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from app.config import Settings
from app.errors import BadRequest, ModelNotAllowed, ModelNotFound

# The demo models trained by scripts/ and kept in the repository, under ids of their own.
DEMO_ROOT = Path(__file__).resolve().parents[2] / "demo_models"
DEMO_PREFIX = "llmviz/"

# Hugging Face repo ids: "name" or "owner/name", letters, digits, "-", "_", ".".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model_id points: a folder under the model root, or a hub repository."""

    model_id: str
    source: str
    local: bool


def resolve(model_id: str, settings: Settings) -> ModelSpec:
    """Map client input to a model location without ever leaving the model root.

    Demo model ids (`llmviz/shakespeare`) come first, then folders under the model
    root, then hub ids. Every spelling of one model gets one id (the spec's `model_id`): empty path
    parts are dropped ("org//name/" is "org/name") and a local folder reached
    through a symlink in the root is named by its real folder.

    The allowlist is checked against the id as sent (empty parts dropped), before a symlink
    is followed: it holds the names the operator allowed, and a link's target may be a
    name they did not (DesktopCommanderMCP PR #595).

    Raises BadRequest (an unsafe id), ModelNotAllowed (not in the allowlist; the message
    names the id as sent) or ModelNotFound (neither a folder nor, when the hub is
    allowed, a valid hub id).
    """
    path = PurePosixPath(model_id)
    if (
        "\\" in model_id
        or "\x00" in model_id
        or path.is_absolute()
        or Path(model_id).is_absolute()
        or any(part in ("..", ".") for part in model_id.split("/"))
    ):
        raise BadRequest(
            "model_id must be a folder name under LLMVIZ_MODEL_ROOT or a Hugging Face id; "
            "absolute paths and '..' are not allowed"
        )
    model_id = "/".join(part for part in model_id.split("/") if part)  # "a//b/" is "a/b"
    if not allowed(model_id, settings):
        raise ModelNotAllowed(f"model {model_id!r} is not in this server's LLMVIZ_MODEL_ALLOWLIST")
    if model_id in list_demo():
        return ModelSpec(model_id, str(DEMO_ROOT / model_id.removeprefix(DEMO_PREFIX)), local=True)
    folder = settings.model_root / model_id
    if model_id and _is_dir(folder):
        model_id = _canonical_folder(settings.model_root, folder, model_id)
        return ModelSpec(model_id, str(settings.model_root / model_id), local=True)
    if not settings.allow_hub:
        raise ModelNotFound(
            f"model {model_id!r} is not a folder under LLMVIZ_MODEL_ROOT and "
            "Hugging Face hub models are turned off (LLMVIZ_ALLOW_HUB=0)"
        )
    if not _HUB_ID.match(model_id) or "--" in model_id or ".." in model_id:
        raise ModelNotFound(f"model {model_id!r} is not a local folder or a valid Hugging Face id")
    if _exists(Path(model_id)):
        # transformers would read a path relative to the server's own folder as a local
        # model: that must go through LLMVIZ_MODEL_ROOT, never around it.
        raise ModelNotFound(
            f"model {model_id!r} is not a folder under LLMVIZ_MODEL_ROOT or a demo model, and "
            "names a path on the server, so it is not taken as a Hugging Face id either"
        )
    return ModelSpec(model_id, model_id, local=False)


def list_demo() -> list[str]:
    """The demo models' ids (`llmviz/<folder>`): always available, never downloaded."""
    if not DEMO_ROOT.is_dir():
        return []
    return sorted(DEMO_PREFIX + path.parent.name for path in DEMO_ROOT.glob("*/config.json"))


def allowed(model_id: str, settings: Settings) -> bool:
    """Whether LLMVIZ_MODEL_ALLOWLIST (empty: any model) lets clients use `model_id`.

    `model_id` is a name as a client sends it (or a model list offers it), never a
    symlink's target: `resolve` and the model lists both ask with that name, so a list
    offers exactly the ids that are then accepted.
    """
    patterns = settings.model_allowlist
    return not patterns or any(fnmatch.fnmatchcase(model_id, pattern) for pattern in patterns)


def list_local(root: Path) -> list[str]:
    """Model ids under the model root: folders (or owner/name folders) with a config.json."""
    if not root.is_dir():
        return []
    found = [*root.glob("*/config.json"), *root.glob("*/*/config.json")]
    return sorted(str(path.parent.relative_to(root).as_posix()) for path in found)


def _canonical_folder(root: Path, folder: Path, model_id: str) -> str:
    """One id per folder: a symlink inside the root is named by the folder it points to."""
    try:
        real, real_root = folder.resolve(strict=True), root.resolve(strict=True)
    except OSError:
        return model_id
    if real.is_relative_to(real_root) and real != real_root:
        return real.relative_to(real_root).as_posix()
    return model_id  # a link out of the root, placed there by whoever runs the server


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long for the file system is simply not a folder
        return False
