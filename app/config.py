"""Settings read from LLMVIZ_* environment variables; every default lives here."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from app.devicemap import parse_device_map, parse_max_memory
from app.remotes import parse_remote_models

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE = ("none", "int8", "float16")  # app/models/quantizing.py
# Numbers in ASCII only: int() and float() also read other scripts' digits ("٣" is 3),
# underscores, "nan" and "inf", none of which a setting means.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


@dataclass(frozen=True)
class Settings:
    """Server configuration. Field `x` is read from the variable `LLMVIZ_X`."""

    model_root: Path = Path("models")
    allow_hub: bool = True
    default_model: str = "llmviz/shakespeare"  # a demo model: works with no network
    cache_size: int = 2
    max_new_tokens: int = 1024
    cors_origins: tuple[str, ...] = ("*",)
    device: str = "auto"
    dtype: str = "auto"
    packed_weights: bool = True  # float32 on a CPU: linear layers run through oneDNN
    fused_step: bool = True  # GPT-2 on a CPU: a lone row's decoding step in C
    quantize: str = "none"  # int8 or float16 linear weights on a CPU (approximate)
    device_map: str = ""  # accelerate's device map: split a model over devices and disk
    max_memory: str = ""  # JSON: each device's budget for the device map
    offload_dir: str = ""  # where the device map's "disk" layers go when they must be copied
    remote_models: str = ""  # JSON: model ids served by remote OpenAI-compatible servers
    max_body_bytes: int = 1024 * 1024
    max_batch: int = 8
    max_queue: int = 32
    prefill_chunk: int = 128  # prompt tokens prefilled between two steps of running streams
    sse_ping_seconds: float = 10.0
    stream_compat: bool = False  # plain streams for whitespace-trimming SSE parsers
    max_inspect_tokens: int = 1024
    max_inspect_bytes: int = 32 * 1024 * 1024
    api_keys: tuple[str, ...] = ()
    api_keys_file: str = ""
    public_docs: bool = False
    model_allowlist: tuple[str, ...] = ()
    model_ttl: float = 0.0  # seconds; 0 keeps models until evicted or unloaded
    log_json: bool = False
    log_text: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply explicit overrides (tests, scripts).

        An override is keyed by field name (`model_root`, not `LLMVIZ_MODEL_ROOT`) and is
        converted like the environment value it replaces: a str goes through the same parser
        (so `"3"` becomes 3 and `"yes"` True), and any other value must already have the
        field's type, give or take a lossless widening (int to float, a path-like to Path, a
        list of str to a tuple).

        Raises:
            ValueError: an unknown override key, a value of the wrong type, or one that
                cannot be parsed or that `validate` refuses, or a restriction (keys, the
                model allowlist) given a value that names nothing (" , "), which would
                otherwise restrict nothing; the message names the setting.
        """
        env = os.environ if env is None else env
        defaults = {f.name: f.default for f in fields(cls)}
        values: dict[str, Any] = {}
        raws: dict[str, str] = {}  # the text each setting was given, where it was text
        for field_name, default in defaults.items():
            name = "LLMVIZ_" + field_name.upper()
            # Empty is unset, for every setting: `LLMVIZ_X=` in a compose file or a
            # systemd EnvironmentFile must not turn the hub off, allow no origin, or stop
            # startup on a number; it means "not given".
            if env.get(name, "").strip():
                values[field_name] = _parse(name, env[name], default)
                raws[field_name] = env[name]
        unknown = sorted(set(overrides) - set(defaults))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(defaults))}"
            )
        for field_name, value in overrides.items():
            values[field_name] = _coerce(field_name, value, defaults[field_name])
            if isinstance(value, str):
                raws[field_name] = value
        for field_name, what in _RESTRICTIONS.items():
            if raws.get(field_name, "").strip() and not values[field_name]:
                raise ValueError(
                    f"LLMVIZ_{field_name.upper()} is set but names no {what}; "
                    "give at least one, or leave the variable unset or empty"
                )
        settings = replace(cls(), **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings that cannot work, naming the variable at fault."""
        if self.device not in DEVICES:
            raise ValueError(f"LLMVIZ_DEVICE must be one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"LLMVIZ_DTYPE must be one of {', '.join(DTYPES)}")
        if self.quantize not in QUANTIZE:
            raise ValueError(f"LLMVIZ_QUANTIZE must be one of {', '.join(QUANTIZE)}")
        if self.quantize != "none" and (self.device == "cuda" or self.dtype not in _FLOAT32):
            raise ValueError(
                "LLMVIZ_QUANTIZE needs float32 weights on a CPU: "
                "leave LLMVIZ_DEVICE and LLMVIZ_DTYPE at auto, cpu or float32"
            )
        self._validate_device_map()
        parse_remote_models(self.remote_models)
        for f in fields(self):
            if f.type == "int" and getattr(self, f.name) < 1:
                raise ValueError(f"LLMVIZ_{f.name.upper()} must be at least 1")
        if self.sse_ping_seconds <= 0:
            raise ValueError("LLMVIZ_SSE_PING_SECONDS must be positive")
        if self.model_ttl < 0:
            raise ValueError("LLMVIZ_MODEL_TTL must be 0 (off) or a number of seconds")
        for key in self.api_keys:
            _check_key(key, "LLMVIZ_API_KEYS")

    def _validate_device_map(self) -> None:
        """A device map decides every device itself: it replaces LLMVIZ_DEVICE, and the
        layers it leaves on disk cannot be quantized."""
        device_map = parse_device_map(self.device_map)
        parse_max_memory(self.max_memory)
        if device_map is None:
            for name in ("max_memory", "offload_dir"):
                if getattr(self, name).strip():
                    raise ValueError(
                        f"LLMVIZ_{name.upper()} applies only with LLMVIZ_DEVICE_MAP; "
                        "set LLMVIZ_DEVICE_MAP=auto to split models by it"
                    )
            return
        if self.device != "auto":
            raise ValueError(
                "LLMVIZ_DEVICE_MAP places the model itself: leave LLMVIZ_DEVICE at auto"
            )
        if self.quantize != "none":
            raise ValueError("LLMVIZ_QUANTIZE cannot be used with LLMVIZ_DEVICE_MAP")

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from LLMVIZ_API_KEYS and LLMVIZ_API_KEYS_FILE (the format: docs/operations.md).

        Raises:
            ValueError: the file cannot be read, is not UTF-8, holds a line that is neither
                blank, a comment nor one valid key (the message names the line, never its
                text), or holds no key at all.
        """
        keys = list(self.api_keys)
        if self.api_keys_file:
            keys += read_keys_file(Path(self.api_keys_file))
        return tuple(keys)


_FLOAT32 = ("auto", "float32")  # dtypes that are float32 on a CPU

# Settings that, once given a value, restrict who may do what. Given a value that yields
# nothing, they would silently restrict nothing (agentfield #424): `from_env` refuses that.
# A blank value is the variable left empty, which means unset for every setting (from_env).
_RESTRICTIONS = {"api_keys": "key", "model_allowlist": "model id or pattern"}

# What a key may hold: visible ASCII (what any client can put in a header), but no comma
# (LLMVIZ_API_KEYS separates keys with it), and not "#" first (the file's comments).
_KEY_CHARS = re.compile(r"[!-+\--~]+")  # 0x21-0x7E but 0x2C, the comma


def _check_key(key: str, source: str) -> None:
    """Refuse a key outside the documented alphabet; the message never repeats the key."""
    if not _KEY_CHARS.fullmatch(key) or key.startswith("#"):
        raise ValueError(
            f"{source}: a key is visible ASCII characters with no spaces or commas, "
            "not starting with '#'"
        )


def read_keys_file(path: Path) -> list[str]:
    """The keys in a keys file, read exactly as docs/operations.md's "API keys" defines it.

    UTF-8, with or without a byte order mark (Notepad and PowerShell write one); lines end
    with LF, CRLF or CR; spaces and tabs around a line are not part of it; a blank line or
    one whose first visible character is "#" is skipped; every other line is one key.

    Raises:
        ValueError: unreadable, not UTF-8, a line that is not one valid key (named by its
            number, since its text may be a secret), or no key at all; each names
            LLMVIZ_API_KEYS_FILE.
    """
    name = "LLMVIZ_API_KEYS_FILE"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{name} cannot be read: {exc.strerror}") from None
    try:
        # utf-8-sig drops one leading BOM: left in, it would be part of the first key.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{name} ({path}) is not UTF-8 text") from None
    keys = []
    # Only these three line ends: str.splitlines would also split at form feeds, NEL,
    # U+2028 and others, which no editor writes as a line end and no operator could see.
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        line = line.strip(" \t")
        if not line or line.startswith("#"):
            continue
        _check_key(line, f"{name} line {number}")
        keys.append(line)
    if not keys:
        raise ValueError(
            f"{name} ({path}) holds no key: the server would need none. "
            "Add a key, or unset the variable to run without keys"
        )
    return keys


def _parse(name: str, raw: str, default: Any) -> Any:
    """Convert one variable to the type of its default, with a clear error."""
    raw = raw.strip()
    try:
        if isinstance(default, bool):
            return _parse_bool(raw)
        if isinstance(default, int):
            return int(_number(raw, _INT, "an integer"))
        if isinstance(default, float):
            return _finite(float(_number(raw, _FLOAT, "a decimal number")))
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, tuple):
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        return raw
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not valid: {exc}") from None


def _coerce(field_name: str, value: Any, default: Any) -> Any:
    """Convert one override to the type of its default, as `_parse` does an env value.

    A str is parsed exactly as the environment variable would be, so an override and its
    LLMVIZ_* variable agree. Anything else must be of the field's type already; the only
    conversions are the lossless ones (int to float, os.PathLike to Path, list to tuple).
    """
    name = "LLMVIZ_" + field_name.upper()
    if isinstance(value, str) and not isinstance(default, str):
        return _parse(name, value, default)
    expected = type(default).__name__
    # bool is a subclass of int: True must not pass for a cache size, nor 1 for a flag.
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, Path):
        ok = isinstance(value, os.PathLike)
        value = Path(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, tuple | list) and all(isinstance(item, str) for item in value)
        value = tuple(value) if ok else value
        expected = "tuple of str"
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"setting {field_name} ({name}) must be a {expected}, not {value!r}")
    return value


def _number(raw: str, form: re.Pattern[str], what: str) -> str:
    if not form.fullmatch(raw):
        raise ValueError(f"expected {what} in ASCII digits")
    return raw


def _finite(value: float) -> float:
    if not math.isfinite(value):  # "1e999"
        raise ValueError("expected a finite number")
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")
