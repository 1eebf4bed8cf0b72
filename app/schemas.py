"""Request bodies: validation lives here and nowhere else."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import BadRequest

__all__ = ["GenerateRequest", "TokenizeRequest", "parse_body"]


class _Body(BaseModel):
    # Strict types: "5" is not an int and 1 is not a bool. Unknown fields are ignored.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model_id: str | None = Field(
        None, min_length=1, max_length=256, description="Model folder or Hugging Face id."
    )


class TokenizeRequest(_Body):
    """Body of POST /tokenize."""

    prompt: str = Field(description="Text to tokenize.")


class GenerateRequest(_Body):
    """Body of POST /generate and POST /generate/stream."""

    prompt: str = Field(description="Input text.")
    max_new_tokens: int = Field(128, ge=1, description="Most tokens to generate.")
    temperature: float = Field(0.7, ge=0, description="0 means greedy decoding.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Keep the k likeliest tokens; 0 turns it off.")
    repetition_penalty: float = Field(1.0, gt=0, description="1.0 means no penalty.")
    seed: int | None = Field(None, ge=0, lt=2**63, description="Seed for reproducible sampling.")
    ignore_eos: bool = Field(False, description="Keep generating past end-of-sequence.")
    return_full_text: bool = Field(True, description="Prefix the prompt to the answer.")


def parse_body(model: type[_Body], payload: object) -> _Body:
    """Validate a decoded JSON body, turning every problem into one 400 message."""
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise BadRequest(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "body"
        problems.append(f"{where}: {err['msg']}")
    return "invalid request: " + "; ".join(problems)
