"""Response bodies: handlers build every JSON answer through these models (see
`shaping.reply`), the OpenAPI document is generated from them, and schemathesis checks
the live server against it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(_Out):
    """Every error: a message for people and a machine-readable code."""

    error: str
    code: str


class HealthResponse(_Out):
    """GET /health."""

    ok: bool


class TokenizeResponse(_Out):
    """POST /tokenize."""

    token_ids: list[int]
    tokens: list[str] | None = Field(
        description="The text each token adds; they join to the text. Null for a remote"
        " model without a local tokenizer (so are `offsets` and `special`)."
    )
    count: int
    offsets: list[list[int]] | None = Field(description="[start, end) characters of the prompt.")
    special: list[bool] | None
    prompt: str | None = Field(description="The rendered chat, for `messages`; else null.")
    bos_token_id: int | None = Field(
        None,
        description="The token generation starts from when the prompt has no tokens "
        "(the tokenizer's BOS); null when the model has none, and an empty prompt is refused.",
    )


class DetokenizeResponse(_Out):
    """POST /detokenize."""

    text: str


class EncodedTensor(_Out):
    """A tensor: raw little-endian values in C order, base64-encoded."""

    shape: list[int]
    dtype: Literal["float16", "float32", "int32"]
    data: str


class TokenAlternative(_Out):
    """A token the model could have chosen."""

    id: int
    text: str
    logprob: float | None


class TokenDetail(_Out):
    """One generated token in `details.tokens` and in `token` events."""

    id: int
    text: str = Field(description="The text this token adds to the decoded sequence.")
    delta: str = Field(
        description="The text to append for /generate's answer: held back while it may "
        "begin a stop string, cut at one."
    )
    logprob: float | None
    special: bool
    top_logprobs: list[TokenAlternative]
    attention: EncodedTensor | None = Field(
        None, description="[layers, heads, keys]; only with `attention: last_row`."
    )


class GenerationEnd(_Out):
    """How a generation ended: the stream's `done` event."""

    finish_reason: Literal["length", "eos", "stop", "cancelled", "shutdown"]
    prompt_tokens: int
    generated_tokens: int
    timing: dict[str, float | None]


class StreamEnd(GenerationEnd):
    """The `done` event of a details stream."""

    delta: str = Field(description="The text held back until the end (see `delta`).")


class GenerationDetails(GenerationEnd):
    """How a generation went, token by token."""

    tokens: list[TokenDetail]


class GenerateResponse(_Out):
    """POST /generate (`details` only when asked for)."""

    text: str
    details: GenerationDetails | None = None


class DevicePlacement(_Out):
    """Where a model split by accelerate's device map (LLMVIZ_DEVICE_MAP) lives."""

    map: dict[str, str] = Field(
        description='Module name to device ("cpu", "disk", "cuda:0"); "" is the whole model.'
    )
    bytes: dict[str, int] = Field(description="Bytes of weights and buffers per device.")
    offloaded: list[str] = Field(
        description="Modules whose weights are read from disk for each pass (or kept on the"
        " CPU for a GPU)."
    )


class LoadedModelInfo(_Out):
    """One model in memory, in GET /models."""

    model_id: str
    source: Literal["local", "hub"]
    device: str
    dtype: str
    quantization: Literal["none", "int8", "float16"] = Field(
        description="`none`: the weights as loaded. `int8` or `float16`: the linear layers'"
        " weights stored smaller (LLMVIZ_QUANTIZE), so every number is approximate."
    )
    context_length: int | None
    load_seconds: float
    memory_bytes: int = Field(
        description="Bytes of weights and buffers in memory, on any device (not those a"
        " device map left on disk)."
    )
    packed_layers: int
    fused_step: bool = Field(
        description="Whether a single stream of it decodes through the fused step in C (GPT-2's"
        " architecture, float32 on a CPU; LLMVIZ_FUSED_STEP). Its logits differ from"
        " transformers' forward by rounding."
    )
    device_map: DevicePlacement | None = Field(
        description="Null for a model whole on `device`. For one split by LLMVIZ_DEVICE_MAP:"
        " where each part lives."
    )
    last_used: float
    retiring: bool = Field(
        description="Out of the cache (evicted or unloaded) and still in memory: it finishes "
        "its accepted work, then frees its memory; a request for it meanwhile takes it back."
    )
    active: int
    queued: int
    generated_tokens: int
    completed_jobs: int
    decode_steps: int
    prefills: int


class FileProgress(_Out):
    """One file of a model being downloaded."""

    name: str
    done_bytes: int
    total_bytes: int | None = Field(description="Null until the file's size is known.")


class LoadingProgress(_Out):
    """A model being loaded: its download, file by file, then reading its weights."""

    model_id: str
    phase: Literal["starting", "downloading", "loading_weights"]
    done_bytes: int
    total_bytes: int | None = Field(description="Null while a file's size is unknown.")
    files: list[FileProgress] = Field(
        description="The files fetched from the Hugging Face hub (none for a local model)."
    )


class RayPlacement(_Out):
    """The Ray Serve replica that answered (deploy/ray/, docs/scaling.md)."""

    node_id: str = Field(description="The Ray node the replica runs on.")
    application: str
    deployment: str
    replica_id: str = Field(description="The replica's id, unique in its deployment.")


class ServedBy(_Out):
    """The process that answered: each replica has its own models."""

    host: str
    pid: int
    ray: RayPlacement | None = Field(description="Its Serve replica; null outside Ray Serve.")


class RemoteModelInfo(_Out):
    """A remote model in GET /models: where it is served (never its key or URL path)."""

    model_id: str
    backend: Literal["remote"]
    host: str = Field(description="The remote server's host and port.")
    remote_model: str = Field(description="The remote's name for the model.")
    engine: Literal["vllm", "llama.cpp", "ollama", "llmviz", "openai"]
    local_tokenizer: bool = Field(description="Whether a local tokenizer was given.")
    started_jobs: int = Field(description="Generations sent to it by this process.")


class ModelsResponse(_Out):
    """GET /models."""

    loaded: list[LoadedModelInfo]
    loading: list[str]
    loading_progress: list[LoadingProgress] = Field(
        description="How far each load in `loading` has come."
    )
    available: list[str]
    remote: list[RemoteModelInfo] = Field(
        description="Models another server generates (LLMVIZ_REMOTE_MODELS)."
    )
    default_model: str
    served_by: ServedBy = Field(
        description="The process (and Ray node and replica) that answered, and so holds `loaded`."
    )


class UnloadResponse(_Out):
    """DELETE /models/<model_id>."""

    model_id: str
    unloaded: bool
    finishing: int


class Architecture(_Out):
    """A model's normalized architecture (docs/api.md explains every field)."""

    architecture: str | None
    family: str
    n_layers: int | None
    d_model: int | None
    n_heads: int | None
    n_kv_heads: int | None
    d_head: int | None
    d_mlp: int | None
    mlp_type: Literal["standard", "gated"]
    act_fn: str | None
    norm_type: Literal["layernorm", "rmsnorm"]
    positional: Literal["learned", "rotary", "alibi"] | None
    vocab_size: int | None
    context_length: int | None
    tie_word_embeddings: bool
    logit_softcap: float | None
    n_params: int | None
    llmviz_shape: dict[str, int | None]


class ArchitectureResponse(Architecture):
    """GET /models/<model_id>/config."""

    model_id: str
    raw_config: dict[str, Any]
    dtype: str | None = Field(None, description="Only when the model is loaded.")
    device: str | None = Field(None, description="Only when the model is loaded.")
    quantization: Literal["none", "int8", "float16"] | None = Field(
        None, description="Only when the model is loaded: see GET /models."
    )


class FrontendConfigResponse(BaseModel):
    """POST /config: config.json's own keys at the top level (any of them), with the keys the
    llm-viz fork's PromptBar reads filled in from the text model, and our description."""

    model_config = ConfigDict(extra="allow")

    model_id: str
    hidden_size: int | None
    num_attention_heads: int | None
    num_hidden_layers: int | None
    vocab_size: int | None
    max_position_embeddings: int | None
    llmviz: Architecture


class InspectToken(_Out):
    """One input position of /inspect."""

    id: int
    text: str
    offset: list[int]
    special: bool


class NextTokenPart(_Out):
    """The model's likeliest next tokens at each position."""

    ids: EncodedTensor
    probs: EncodedTensor
    other_prob: EncodedTensor
    entropy: EncodedTensor


class LogitLensPart(_Out):
    """Each layer's residual stream through the final norm and the unembedding."""

    ids: EncodedTensor
    probs: EncodedTensor
    next_token_rank: EncodedTensor


class AttentionPart(_Out):
    """Attention patterns: top-k rows, or dense matrices."""

    format: Literal["topk", "dense"]
    weights: EncodedTensor
    k: int | None = None
    indices: EncodedTensor | None = None


class ResidNormsPart(_Out):
    """The L2 norm of the residual stream entering and leaving each layer."""

    input: EncodedTensor
    output: EncodedTensor


class InspectResponse(_Out):
    """POST /inspect (docs/api.md explains every part)."""

    model_id: str
    token_ids: list[int]
    layers: list[int]
    tokens: list[InspectToken] | None = None
    next_token: NextTokenPart | None = None
    logit_lens: LogitLensPart | None = None
    attention: AttentionPart | None = None
    resid_norms: ResidNormsPart | None = None
    token_text: dict[str, str] | None = None
