"""Settings: environment variables and create_app overrides get the same types and checks."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from app import create_app
from app.config import Settings


def test_a_str_path_override_becomes_a_path(tmp_path):
    settings = Settings.from_env({}, model_root=str(tmp_path))
    assert settings.model_root == tmp_path
    assert isinstance(settings.model_root, Path)


def test_create_app_with_a_str_model_root_serves_models(model_root):
    client = create_app({"model_root": str(model_root), "default_model": "tiny-gpt2"}).test_client()
    answer = client.post("/tokenize", json={"prompt": "Hello"})
    assert answer.status_code == 200, answer.get_json()


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("cache_size", "3", 3),
        ("cache_size", " 3 ", 3),
        ("model_ttl", "2.5", 2.5),
        ("allow_hub", "no", False),
        ("public_docs", "on", True),
        (
            "cors_origins",
            "http://a.example, http://b.example",
            ("http://a.example", "http://b.example"),
        ),
        ("api_keys", "", ()),
        ("device", "cpu", "cpu"),
    ],
)
def test_a_str_override_is_parsed_exactly_as_its_environment_variable(key, raw, expected):
    from_override = Settings.from_env({}, **{key: raw})
    from_env = Settings.from_env({f"LLMVIZ_{key.upper()}": raw})
    assert getattr(from_override, key) == getattr(from_env, key) == expected
    assert type(getattr(from_override, key)) is type(expected)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("cache_size", 3, 3),
        ("model_ttl", 2, 2.0),  # an int widens to a float
        ("sse_ping_seconds", 0.5, 0.5),
        ("cors_origins", ["http://a.example"], ("http://a.example",)),  # a list becomes a tuple
        ("stream_compat", True, True),
    ],
)
def test_an_override_of_the_right_type_is_kept(key, value, expected):
    got = getattr(Settings.from_env({}, **{key: value}), key)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cache_size", "three"),  # does not parse, as LLMVIZ_CACHE_SIZE=three does not
        ("cache_size", 2.5),  # no silent truncation
        ("cache_size", True),  # a bool is not a count
        ("allow_hub", 1),  # nor a count a flag
        ("allow_hub", "maybe"),
        ("model_root", 42),
        ("cors_origins", ("ok", 3)),
        ("default_model", Path("tiny-gpt2")),
        ("cache_size", "0"),  # parses, but validate() refuses it as it refuses the variable
        ("device", "tpu"),
    ],
)
def test_a_wrong_override_is_refused_when_the_app_is_created(key, value):
    with pytest.raises(ValueError, match=f"LLMVIZ_{key.upper()}"):
        create_app({key: value})


def test_an_unknown_override_key_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown setting.*'model_rot'"):
        create_app({"model_rot": "/models"})


def test_an_environment_variable_is_overridden_and_the_rest_kept():
    env = {"LLMVIZ_CACHE_SIZE": "5", "LLMVIZ_MAX_BATCH": "4"}
    settings = Settings.from_env(env, cache_size="7")
    assert (settings.cache_size, settings.max_batch) == (7, 4)


def test_a_bad_environment_variable_names_itself():
    with pytest.raises(ValueError, match="LLMVIZ_MAX_BATCH='x' is not valid"):
        Settings.from_env({"LLMVIZ_MAX_BATCH": "x"})


@pytest.mark.parametrize("raw", [" , ", ","])
def test_an_allowlist_that_names_no_model_stops_startup(raw):
    """agentfield #424's kind: LLMVIZ_MODEL_ALLOWLIST=" , " once allowed every model."""
    with pytest.raises(ValueError, match="LLMVIZ_MODEL_ALLOWLIST is set but names no model"):
        Settings.from_env({"LLMVIZ_MODEL_ALLOWLIST": raw})
    with pytest.raises(ValueError, match="LLMVIZ_MODEL_ALLOWLIST is set but names no model"):
        create_app({"model_allowlist": raw})


@pytest.mark.parametrize("field", [f.name for f in fields(Settings)])
@pytest.mark.parametrize("blank", ["", "  "])
def test_an_empty_variable_is_unset_for_every_setting(field, blank):
    """`LLMVIZ_X=` (compose, systemd EnvironmentFile) means "not given": the default holds."""
    settings = Settings.from_env({"LLMVIZ_" + field.upper(): blank})
    assert getattr(settings, field) == getattr(Settings(), field)
