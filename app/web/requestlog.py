"""One log line and one metrics update per request, with a request id the client can see."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, g, request

from app.ops import metrics

log = logging.getLogger("llmviz.requests")
_GOOD_ID = re.compile(r"^[\w.:@-]{1,128}$")
# Fields that hold request or generated text: logged only with LLMVIZ_LOG_TEXT=1.
_TEXT_FIELDS = ("prompt", "output")


def record() -> dict[str, Any]:
    """This request's log record; handlers add the model, token counts and timings."""
    return g.llmviz_record


def init_app(app: Flask) -> None:
    """Give every request an id, and log and count it when its response has been sent."""
    settings = app.config["LLMVIZ"]

    @app.before_request
    def _start():
        incoming = request.headers.get("X-Request-ID", "")
        g.llmviz_record = {"request_id": incoming if _GOOD_ID.match(incoming) else uuid.uuid4().hex}
        g.llmviz_started = time.perf_counter()

    @app.after_request
    def _finish(response):
        fields = getattr(g, "llmviz_record", None)
        if fields is None:  # a request that failed before _start ran
            return response
        response.headers["X-Request-ID"] = fields["request_id"]
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        fields.update(method=request.method, endpoint=endpoint, status=response.status_code)
        started = g.llmviz_started
        # A stream is done only when its last byte has gone: log then, not now.
        response.call_on_close(lambda: _emit(fields, started, settings.log_json, settings.log_text))
        return response


def _emit(fields: dict[str, Any], started: float, as_json: bool, with_text: bool) -> None:
    seconds = time.perf_counter() - started
    fields["duration_ms"] = round(seconds * 1000, 3)
    metrics.observe_request(fields["endpoint"], fields["method"], str(fields["status"]), seconds)
    shown = {k: v for k, v in fields.items() if with_text or k not in _TEXT_FIELDS}
    if as_json:
        log.info(json.dumps(shown, ensure_ascii=False))
    else:
        log.info(" ".join(f"{k}={_plain(v)}" for k, v in shown.items()))


def _plain(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    return text if " " not in text or text.startswith('"') else json.dumps(text)
