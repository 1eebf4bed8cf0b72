"""Numeric LLMVIZ_* settings: the parse is exactly as strict as what uses the value (issue 23).

vLLM PR #16529's kind: Python's int() and float() read digits of every script ("٣" is 3,
"１０" is 10) and float() reads "nan" and "inf", which no check after them refused.
"""

from __future__ import annotations

import pytest

from app.config import Settings


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("LLMVIZ_MAX_BATCH", "٣"),  # Arabic-Indic three: was 3
        ("LLMVIZ_MAX_BATCH", "１０"),  # fullwidth ten: was 10
        ("LLMVIZ_MAX_BATCH", "1_0"),  # int() skips underscores: was 10
        ("LLMVIZ_CACHE_SIZE", "²"),
        ("LLMVIZ_SSE_PING_SECONDS", "nan"),  # nan <= 0 is false: was accepted
        ("LLMVIZ_SSE_PING_SECONDS", "inf"),
        ("LLMVIZ_SSE_PING_SECONDS", "٣.5"),  # was 3.5
        ("LLMVIZ_MODEL_TTL", "NaN"),  # nan < 0 is false: was accepted
        ("LLMVIZ_MODEL_TTL", "infinity"),
    ],
)
def test_a_number_setting_takes_ascii_decimal_finite_numbers_only(name, raw):
    """vLLM PR #16529's kind in the environment: refused, naming the variable."""
    with pytest.raises(ValueError, match=f"{name}="):
        Settings.from_env({name: raw})
    with pytest.raises(ValueError, match=name):
        Settings.from_env({}, **{name.removeprefix("LLMVIZ_").lower(): raw})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_float_override_is_refused(value):
    with pytest.raises(ValueError, match="LLMVIZ_SSE_PING_SECONDS"):
        Settings.from_env({}, sse_ping_seconds=value)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("LLMVIZ_MAX_BATCH", " 12 ", 12),
        ("LLMVIZ_MAX_BATCH", "+4", 4),
        ("LLMVIZ_SSE_PING_SECONDS", "2.5", 2.5),
        ("LLMVIZ_SSE_PING_SECONDS", ".5", 0.5),
        ("LLMVIZ_SSE_PING_SECONDS", "1e1", 10.0),
        ("LLMVIZ_MODEL_TTL", "3", 3.0),
        ("LLMVIZ_MODEL_TTL", "0", 0.0),
    ],
)
def test_plain_numbers_are_read_as_before(name, raw, expected):
    settings = Settings.from_env({name: raw})
    assert getattr(settings, name.removeprefix("LLMVIZ_").lower()) == expected
