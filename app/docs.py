"""The API's OpenAPI 3 document, built from the same pydantic models that validate requests,
and a Swagger UI page for it (served from the swagger-ui-bundle package: no CDN)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, send_from_directory
from pydantic.json_schema import models_json_schema

from app import schemas

bp = Blueprint("docs", __name__)

_JSON = "application/json"
_ERRORS = {
    "400": "Bad input: invalid JSON, a missing, mistyped or out-of-range field",
    "401": "API keys are configured and the request has none, or a wrong one",
    "403": "The model is not in LLMVIZ_MODEL_ALLOWLIST",
    "404": "No such model (or it is not loaded, for DELETE)",
    "413": "The body, or an /inspect input or answer, is over its limit",
    "500": "A server fault: a model that failed to load or to run",
    "503": "Too much queued work, or the server is shutting down (see Retry-After)",
}
# (method, path, view, request model, success description, success model or media type)
_ENDPOINTS = [
    ("get", "/health", "api.health", None, schemas.HealthResponse),
    ("post", "/tokenize", "api.tokenize", schemas.TokenizeRequest, schemas.TokenizeResponse),
    (
        "post",
        "/detokenize",
        "api.detokenize",
        schemas.DetokenizeRequest,
        schemas.DetokenizeResponse,
    ),
    ("post", "/generate", "api.generate", schemas.GenerateRequest, schemas.GenerateResponse),
    (
        "post",
        "/generate/stream",
        "api.generate_stream",
        schemas.GenerateRequest,
        "text/event-stream",
    ),
    ("get", "/models", "viz.list_models", None, schemas.ModelsResponse),
    ("get", "/models/config", "viz.model_config", None, schemas.ArchitectureResponse),
    ("get", "/models/{model_id}/config", "viz.model_config", None, schemas.ArchitectureResponse),
    ("delete", "/models/{model_id}", "viz.unload_model", None, schemas.UnloadResponse),
    ("post", "/inspect", "viz.inspect", schemas.InspectRequest, schemas.InspectResponse),
    ("get", "/metrics", "ops.prometheus", None, "text/plain"),
]
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>llmviz-server API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of every endpoint."""
    return jsonify(build_document(current_app.view_functions, bool(_keys())))


@bp.get("/docs")
def page():
    """A human-readable page for the OpenAPI document."""
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/assets/<path:filename>")
def asset(filename: str):
    """Swagger UI's own files."""
    import swagger_ui_bundle

    return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)


def build_document(views: dict[str, Any], with_keys: bool) -> dict[str, Any]:
    """The OpenAPI document; `with_keys` adds the bearer-key requirement."""
    models = [schemas.ErrorResponse]
    for _, _, _, request_model, answer in _ENDPOINTS:
        models += [m for m in (request_model, answer) if isinstance(m, type)]
    keyed = [(m, "validation") for m in dict.fromkeys(models)]
    _, top = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    for method, path, view, request_model, answer in _ENDPOINTS:
        operation = _operation(views[view], path, request_model, answer)
        if with_keys and view != "api.health":
            operation["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "llmviz-server", "version": "1.0"},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {})},
    }
    if with_keys:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _operation(view: Any, path: str, request_model: Any, answer: Any) -> dict[str, Any]:
    summary = (view.__doc__ or "").strip().splitlines()[0]
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": _success(answer)}}
    for status, why in _ERRORS.items():
        operation["responses"][status] = {
            "description": why,
            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
        }
    if "{model_id}" in path:
        operation["parameters"] = [_param("path", True)]
    elif path == "/models/config":
        operation["parameters"] = [_param("query", False)]
    if request_model is not None:
        schema = {"$ref": f"#/components/schemas/{request_model.__name__}"}
        operation["requestBody"] = {"required": True, "content": {_JSON: {"schema": schema}}}
    return operation


def _success(answer: Any) -> dict[str, Any]:
    if isinstance(answer, str):
        return {"description": "OK", "content": {answer: {"schema": {"type": "string"}}}}
    schema = {"$ref": f"#/components/schemas/{answer.__name__}"}
    return {"description": "OK", "content": {_JSON: {"schema": schema}}}


def _param(where: str, required: bool) -> dict[str, Any]:
    return {"name": "model_id", "in": where, "required": required, "schema": {"type": "string"}}


def _keys() -> tuple[str, ...]:
    return current_app.config["LLMVIZ"].all_api_keys()
