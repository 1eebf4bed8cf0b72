"""Requests gunicorn refuses before the app sees them (issue 23, kind 6), over real sockets:
each gets the API's JSON error with the right status, and the server keeps serving.

gunicorn once answered these with its own HTML page ("414 Request Line is too large"),
which the viewer and the openai SDK cannot read.
"""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.support import nginx
from tests.support.server import LiveServer


def exchange(live: LiveServer | nginx.Nginx, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the answer until gunicorn closes: (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (h.split(":", 1) for h in lines)}
    return int(status_line.split()[1]), headers, body


def _head(request_line: bytes, *headers: bytes) -> bytes:
    return request_line + b"\r\n" + b"".join(h + b"\r\n" for h in (b"Host: x", *headers)) + b"\r\n"


NATIVE_CASES = {
    # The viewer's URL with a 5,000-character prompt: over limit_request_line (4094).
    "request line over the limit": (
        _head(b"GET /?prompt=" + b"a" * 5000 + b" HTTP/1.1"),
        414,
        "request_uri_too_long",
    ),
    "a header over limit_request_field_size": (
        _head(b"GET /health HTTP/1.1", b"X-Big: " + b"a" * 9000),
        431,
        "request_header_fields_too_large",
    ),
    "more headers than limit_request_fields": (
        _head(b"GET /health HTTP/1.1", *(b"X-H%d: 1" % i for i in range(120))),
        431,
        "request_header_fields_too_large",
    ),
    "a request line that is no request line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "an invalid method": (_head(b"G@T /health HTTP/1.1"), 400, "bad_request"),
    "an invalid HTTP version": (_head(b"GET /health HTTP/3.0"), 400, "bad_request"),
    "an invalid header name": (_head(b"GET /health HTTP/1.1", b"Bad Name: y"), 400, "bad_request"),
}


@pytest.mark.parametrize("case", list(NATIVE_CASES))
def test_a_request_gunicorn_refuses_gets_a_json_error(server, case):
    data, status, code = NATIVE_CASES[case]
    got, headers, body = exchange(server, data)
    assert got == status, body[:300]
    assert headers["content-type"] == "application/json", body[:300]
    answer = json.loads(body)
    assert answer["code"] == code
    assert isinstance(answer["error"], str) and answer["error"]
    assert len(answer["error"]) < 400  # the client's own text is not echoed back in full
    assert headers["access-control-allow-origin"] == "*"  # the test server allows every origin
    assert len(headers["x-request-id"]) == 32
    assert requests.get(server.url("/health"), timeout=10).status_code == 200


def test_a_refused_v1_request_gets_openai_s_error_shape(server):
    """Where gunicorn read the path, a /v1 request gets the shape the openai SDK reads."""
    data = _head(b"POST /v1/completions HTTP/1.1", b"Transfer-Encoding: gzip")
    status, headers, body = exchange(server, data)
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "bad_request"
    assert error["param"] is None and "Transfer-Encoding".upper() in error["message"].upper()


def test_with_listed_origins_a_refused_request_says_it_varies_by_origin(start_server):
    """gunicorn may not have read the Origin header: no Allow-Origin, but `Vary: Origin`."""
    live = start_server(LLMVIZ_CORS_ORIGINS="http://good.example", LLMVIZ_DEFAULT_MODEL="x")
    status, headers, body = exchange(live, _head(b"GET /?q=" + b"a" * 5000 + b" HTTP/1.1"))
    assert status == 414 and json.loads(body)["code"] == "request_uri_too_long"
    assert "access-control-allow-origin" not in headers
    assert headers["vary"] == "Origin"


# --- nginx (deploy/nginx.conf) in front: what nginx refuses itself -------------------------

NGINX_CASES = {
    # Over large_client_header_buffers (4 x 8k): nginx's own 414, where a named error
    # location once failed ("empty URI in redirect") and answered an HTML 500.
    "a URL over nginx's buffers": (
        _head(b"GET /?prompt=" + b"a" * 9000 + b" HTTP/1.1"),
        414,
        "request_uri_too_long",
    ),
    "a header over nginx's buffers": (
        _head(b"GET /health HTTP/1.1", b"X-Big: " + b"a" * 9000),
        431,
        "request_header_fields_too_large",
    ),
    "a request line that is no request line": (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    "an unknown HTTP version": (_head(b"GET /health HTTP/3.0"), 505, "http_version_not_supported"),
    "an unknown transfer coding": (
        _head(b"POST /generate HTTP/1.1", b"Transfer-Encoding: gzip"),
        501,
        "not_implemented",
    ),
}


@pytest.fixture(scope="module")
def proxy(server):
    if not nginx.installed():
        pytest.skip("nginx is not installed")
    with nginx.Nginx([f"127.0.0.1:{server.port}"]) as running:
        yield running


@pytest.mark.parametrize("case", list(NGINX_CASES))
def test_a_request_nginx_refuses_gets_a_json_error(server, proxy, case):
    data, status, code = NGINX_CASES[case]
    got, headers, body = exchange(proxy, data)
    assert got == status, body[:300]
    assert headers["content-type"] == "application/json", body[:300]
    assert json.loads(body)["code"] == code
    assert len(headers["x-request-id"]) == 32
    assert requests.get(proxy.url("/health"), timeout=10).status_code == 200


def test_under_v1_nginx_refuses_in_openai_s_shape(server, proxy):
    """Read from the request line: nginx's own 414 under /v1 is OpenAI's shape."""
    status, headers, body = exchange(proxy, _head(b"GET /v1/models?" + b"a" * 9000 + b" HTTP/1.1"))
    assert status == 414 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "request_uri_too_long"
    assert error["type"] == "invalid_request_error" and error["param"] is None


BODY_CASES = {
    # gunicorn parses the chunked coding while the app reads the body, not before.
    "a chunk size that is no number": b"zz\r\n{}\r\n0\r\n\r\n",
    "a chunk without its CRLF": b"2\r\n{}XX0\r\n\r\n",
    "a chunk extension with a bare CR": b"2;a\rb\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("case", list(BODY_CASES))
@pytest.mark.parametrize("path", ["/tokenize", "/v1/completions"])
def test_a_malformed_chunked_body_is_a_400(server, case, path):
    """A body the client encoded wrongly is the client's error (it was a 500 `internal_error`)."""
    data = _head(
        b"POST " + path.encode() + b" HTTP/1.1",
        b"Transfer-Encoding: chunked",
        b"Content-Type: application/json",
        b"Connection: close",
    )
    status, headers, body = exchange(server, data + BODY_CASES[case])
    assert status == 400, body[:300]
    assert headers["content-type"] == "application/json"
    answer = json.loads(body)
    code = answer["error"]["code"] if path.startswith("/v1") else answer["code"]
    assert code == "bad_request"
    assert requests.get(server.url("/health"), timeout=10).status_code == 200
