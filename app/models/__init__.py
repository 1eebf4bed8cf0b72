"""The model registry: which models exist, which are in memory, and how to reach them.

- `resolution`: a client's model_id to a folder or hub repository, safely;
- `loading`: configs and weights, with loading errors translated once;
- `cache`: the LRU of loaded models under one lock (`cache` is the process's one);
- `loaded`: a `LoadedModel`, the interface the layers above use;
- `prompts`: chat templates, encoding and tokenization for display.
"""

from app.models import progress
from app.models.cache import ModelCache, cache, submit
from app.models.loaded import LoadedModel, ModelProfile
from app.models.loading import check_available, load, load_profile, read_config
from app.models.prompts import PromptInput, Tokens
from app.models.resolution import ModelSpec, allowed, list_demo, list_local, resolve

__all__ = [
    "LoadedModel",
    "ModelCache",
    "ModelProfile",
    "ModelSpec",
    "PromptInput",
    "Tokens",
    "allowed",
    "cache",
    "check_available",
    "list_demo",
    "list_local",
    "load",
    "load_profile",
    "progress",
    "read_config",
    "resolve",
    "submit",
]
