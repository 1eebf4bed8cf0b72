"""API keys: every endpoint but /health and preflights needs one, and none reaches the logs."""

from __future__ import annotations

import logging

import pytest

from app import create_app
from app.config import Settings

KEY = "s3cret-key-0123"


# (method, path, body) for every endpoint.


ENDPOINTS = [
    ("GET", "/models", None),
    ("GET", "/models/tiny-gpt2/config", None),
    ("GET", "/models/config?model_id=tiny-gpt2", None),
    ("DELETE", "/models/tiny-llama", None),
    ("POST", "/tokenize", {"prompt": "Hi"}),
    ("POST", "/detokenize", {"token_ids": [40, 73]}),
    ("POST", "/generate", {"prompt": "Hi", "max_new_tokens": 2}),
    ("POST", "/generate/stream", {"prompt": "Hi", "max_new_tokens": 2}),
    ("POST", "/inspect", {"prompt": "Hi"}),
    ("GET", "/metrics", None),
    ("GET", "/openapi.json", None),
    ("GET", "/docs", None),
]


@pytest.fixture
def keyed(model_root, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# operators\nfile-key-456\n\n")
    app = create_app(
        {
            "model_root": model_root,
            "default_model": "tiny-gpt2",
            "api_keys": (KEY, "other-key"),
            "api_keys_file": str(keys_file),
        }
    )
    return app.test_client()


def _call(client, method, path, body, headers):
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_auth_matrix(keyed, method, path, body):
    missing = _call(keyed, method, path, body, {})
    wrong = _call(keyed, method, path, body, {"Authorization": "Bearer nope"})
    not_bearer = _call(keyed, method, path, body, {"Authorization": f"Basic {KEY}"})
    for response in (missing, wrong, not_bearer):
        assert response.status_code == 401
        assert response.get_json()["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith('Bearer realm="llmviz"')
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    for key in (KEY, "other-key", "file-key-456"):
        right = _call(keyed, method, path, body, {"Authorization": f"Bearer {key}"})
        assert right.status_code in (200, 404), (path, right.get_data(as_text=True)[:200])


def test_health_and_preflight_need_no_key(keyed):
    assert keyed.get("/health").get_json() == {"ok": True}
    preflight = keyed.options(
        "/generate",
        headers={
            "Origin": "http://viz.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_keys_never_reach_the_logs(keyed, caplog):
    caplog.set_level(logging.DEBUG)
    for key in (KEY, "wrong-k"):
        response = keyed.post(
            "/generate",
            json={"prompt": "Hi", "max_new_tokens": 2},
            headers={"Authorization": f"Bearer {key}"},
        )
        response.close()  # the request log line is written when the response closes
    assert caplog.records, "the request log wrote nothing"
    assert all(
        KEY not in r.getMessage() and "wrong-k" not in r.getMessage() for r in caplog.records
    )


def test_docs_can_be_made_public(model_root):
    client = create_app({"model_root": model_root, "api_keys": (KEY,), "public_docs": True})
    client = client.test_client()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/models").status_code == 401


def test_unreadable_keys_file_stops_startup(model_root, tmp_path):
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS_FILE"):
        create_app({"model_root": model_root, "api_keys_file": str(tmp_path / "missing")})


def test_the_viewer_page_and_its_files_need_no_key(model_root):
    client = create_app({"model_root": model_root, "api_keys": (KEY,)}).test_client()
    assert client.get("/").status_code == 200
    assert client.get("/viewer/client.js").status_code == 200
    assert client.get("/models").status_code == 401  # the data behind it still does


# Fail-open authentication (agentfield #424): a key source that is configured but yields no
# key must stop startup, naming the setting, instead of serving everything without a key.


@pytest.mark.parametrize(
    "content",
    ["# only a comment\n", "", "\n\n   \n", "\ufeff# keys\r\n\r\n", "   # indented comment\n"],
)
def test_a_keys_file_with_no_key_stops_startup(model_root, tmp_path, content):
    """agentfield #424: a keys file holding only comments or blanks once opened the server."""
    keys_file = tmp_path / "keys"
    keys_file.write_text(content, encoding="utf-8", newline="")
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS_FILE.*no key"):
        create_app({"model_root": model_root, "api_keys_file": str(keys_file)})


@pytest.mark.parametrize("raw", [" , ", ",", ",,, ,"])
def test_keys_that_yield_no_key_stop_startup(model_root, raw):
    """agentfield #424: LLMVIZ_API_KEYS=" , " is set, yet once gave no key and no check."""
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS .*no key"):
        Settings.from_env({"LLMVIZ_API_KEYS": raw})
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS .*no key"):
        create_app({"model_root": model_root, "api_keys": raw})


def test_a_blank_keys_setting_means_no_keys(model_root):
    """An empty (or all-blank) variable is unset, as for every other setting: no keys."""
    settings = Settings.from_env({"LLMVIZ_API_KEYS": "  ", "LLMVIZ_API_KEYS_FILE": ""})
    assert settings.all_api_keys() == ()


# A credentials file read so that what the operator wrote is not what is enforced
# (hermes-agent #65123): the file format is docs/operations.md's "API keys", rule by rule.


def _keys_in(tmp_path, data: bytes) -> tuple[str, ...]:
    keys_file = tmp_path / "keys"
    keys_file.write_bytes(data)
    return Settings.from_env({}, api_keys_file=str(keys_file)).all_api_keys()


def test_a_keys_file_saved_by_notepad_works_from_its_first_key(model_root, tmp_path):
    """hermes-agent #65123: with a BOM and CRLF line ends the first key always got 401."""
    keys_file = tmp_path / "keys"
    keys_file.write_bytes("\ufefffirst-key\r\nsecond-key\r\n".encode())
    app = create_app({"model_root": model_root, "api_keys_file": str(keys_file)})
    client = app.test_client()

    def status(key: str) -> int:
        return client.get("/models", headers={"Authorization": f"Bearer {key}"}).status_code

    assert (status("first-key"), status("second-key")) == (200, 200)
    assert status("\ufefffirst-key") == 401  # the BOM is no part of the key


@pytest.mark.parametrize(
    ("data", "keys"),
    [
        (b"\xef\xbb\xbfk1\r\nk2\r\n", ("k1", "k2")),  # a UTF-8 BOM is not part of the first key
        (b"k1\rk2\r", ("k1", "k2")),  # old Mac line ends
        (b"k1\nk2", ("k1", "k2")),  # no line end after the last key
        (b"  k1 \t\n\tk2\r\n", ("k1", "k2")),  # whitespace around a key is not part of it
        (b"# a comment\n  # an indented comment\nk1\n", ("k1",)),  # never a key "# ..."
        (b"\n \n\t\r\nk1\n\n", ("k1",)),  # blank lines
        (b"sk-A.b_c~d+e/f=\n", ("sk-A.b_c~d+e/f=",)),  # any visible ASCII but "#" first
    ],
)
def test_the_keys_file_format(tmp_path, data, keys):
    """hermes-agent #65123: each rule of the documented format, as read."""
    assert _keys_in(tmp_path, data) == keys


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"k1\nkey with space\n", 2),  # two words: a typo or an inline comment, never a key
        (b"k1 # note\n", 1),  # no comments after a key
        (b"ok\nk\xc3\xa9y\n", 2),  # non-ASCII: no client could be sure to send it
        (b"k1,k2\n", 1),  # a comma: one key a line, not a list
        (b"\xef\xbb\xbf\xef\xbb\xbfk1\n", 1),  # a second BOM is not a key character
    ],
)
def test_a_line_that_is_not_a_key_stops_startup_naming_the_line(tmp_path, data, line):
    """hermes-agent #65123: a line read as something else than written is refused, not kept."""
    with pytest.raises(ValueError, match=f"LLMVIZ_API_KEYS_FILE line {line}:") as refused:
        _keys_in(tmp_path, data)
    assert "k1" not in str(refused.value) and "key with" not in str(refused.value)


def test_a_keys_file_that_is_not_utf8_stops_startup(tmp_path):
    """hermes-agent #65123: a UTF-16 file (PowerShell 5's `>`) is not read as garbage keys."""
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS_FILE.*UTF-8"):
        _keys_in(tmp_path, "k1\r\n".encode("utf-16"))


@pytest.mark.parametrize("raw", ["key with space", "ok,k\u00e9y"])
def test_a_bad_key_in_the_variable_stops_startup(raw):
    """hermes-agent #65123: LLMVIZ_API_KEYS follows the same rule for what a key may hold."""
    with pytest.raises(ValueError, match="LLMVIZ_API_KEYS"):
        Settings.from_env({"LLMVIZ_API_KEYS": raw})


def test_the_docs_describe_the_keys_read_at_startup(model_root, tmp_path):
    """hermes-agent #65123's kind: the keys file is read once, at startup, for every use; the
    OpenAPI document read it again on each request, and a file edited since made it a 500."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("doc-key\n")
    app = create_app({"model_root": model_root, "api_keys_file": str(keys_file)})
    keys_file.write_text("# emptied after startup\n")
    answer = app.test_client().get("/openapi.json", headers={"Authorization": "Bearer doc-key"})
    assert answer.status_code == 200
    assert answer.get_json()["components"].get("securitySchemes")
