"""The API's OpenAPI 3 document, built from the registered routes and the pydantic models
that validate requests and shape answers, and a Swagger UI page for it.

Swagger UI's files come from the flask-swagger-ui package (its `dist` folder: Swagger UI
5.34.0 for flask-swagger-ui 5.34.0), served from here: no CDN, so the page works offline.
Swagger UI reads OpenAPI 3.1 from version 5 on; 4.x (swagger-ui-bundle 1.1.0's 4.15.5)
showed "Unable to render this definition" for this document."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, send_from_directory
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.web import auth, sse
from app.web.answers import ErrorResponse

bp = Blueprint("docs", __name__)
F = TypeVar("F", bound=Callable[..., Any])

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
_PUBLIC = "ops.health"  # the one operation that never needs a key
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>llmviz-server API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""


@dataclass(frozen=True)
class Operation:
    """What the document says of one view: its body, its answer, its query parameters,
    the model of its errors, and whether it can answer with a stream instead."""

    request: type[BaseModel] | None
    answer: type[BaseModel] | str  # a response model, or a media type
    query: tuple[str, ...] = ()
    errors: type[BaseModel] = ErrorResponse
    streams: bool = False  # `stream: true` answers text/event-stream


def documented(
    request: type[BaseModel] | None,
    answer: type[BaseModel] | str,
    query: tuple[str, ...] = (),
    errors: type[BaseModel] = ErrorResponse,
    streams: bool = False,
) -> Callable[[F], F]:
    """Mark a view as part of the API, with its request and response (model or media type)."""

    def mark(view: F) -> F:
        view.openapi = Operation(request, answer, query, errors, streams)  # type: ignore[attr-defined]
        return view

    return mark


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of every endpoint."""
    return jsonify(build_document(current_app, auth.required(current_app)))


@bp.get("/docs")
def page():
    """A human-readable page for the OpenAPI document."""
    return Response(_PAGE, mimetype="text/html")


@bp.get("/docs/assets/<path:filename>")
def asset(filename: str):
    """Swagger UI's own files (swagger-ui-bundle.js, swagger-ui.css, ...)."""
    return send_from_directory(str(resources.files("flask_swagger_ui") / "dist"), filename)


def build_document(app: Flask, with_keys: bool) -> dict[str, Any]:
    """The OpenAPI document of every `documented` route; `with_keys` adds the key requirement."""
    routes = list(_documented_routes(app))
    schemas: list[type[BaseModel]] = [ErrorResponse]
    for _, _, _, operation in routes:
        shown = (operation.request, operation.answer, operation.errors)
        schemas += [m for m in shown if isinstance(m, type)]
    keyed: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (m, "validation") for m in dict.fromkeys(schemas)
    ]
    _, top = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    for method, path, endpoint, operation in routes:
        described = _operation(app.view_functions[endpoint], path, operation)
        if with_keys and endpoint != _PUBLIC:
            described["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[method] = described
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "llmviz-server", "version": "1.0"},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {})},
    }
    if with_keys:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


def _documented_routes(app: Flask):
    """(method, OpenAPI path, endpoint, Operation) for every documented URL rule."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        operation = getattr(app.view_functions[rule.endpoint], "openapi", None)
        if operation is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield method.lower(), path, rule.endpoint, operation


def _operation(view: Any, path: str, operation: Operation) -> dict[str, Any]:
    summary = (view.__doc__ or "").strip().splitlines()[0]
    described: dict[str, Any] = {"summary": summary, "responses": {"200": _success(operation)}}
    error_schema = {"$ref": f"#/components/schemas/{operation.errors.__name__}"}
    for status, why in _ERRORS.items():
        described["responses"][status] = {
            "description": why,
            "content": {_JSON: {"schema": error_schema}},
        }
    parameters = [_param(name, "path", True) for name in re.findall(r"{(\w+)}", path)]
    if not parameters:
        parameters = [_param(name, "query", False) for name in operation.query]
    if parameters:
        described["parameters"] = parameters
    if operation.request is not None:
        schema = {"$ref": f"#/components/schemas/{operation.request.__name__}"}
        described["requestBody"] = {"required": True, "content": {_JSON: {"schema": schema}}}
    return described


def _success(operation: Operation) -> dict[str, Any]:
    if isinstance(operation.answer, str):
        return {"description": "OK", "content": {operation.answer: {"schema": {"type": "string"}}}}
    schema = {"$ref": f"#/components/schemas/{operation.answer.__name__}"}
    content: dict[str, Any] = {_JSON: {"schema": schema}}
    if operation.streams:
        content[sse.MIMETYPE] = {"schema": {"type": "string"}}
    return {"description": "OK", "content": content}


def _param(name: str, where: str, required: bool) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": {"type": "string"}}
