"""The documentation keeps up with the code: settings, routes, errors, links, commands.

The source of truth is the code: `Settings` (app/config.py) for the configuration table in
docs/operations.md, `create_app`'s url_map for docs/api.md and README's endpoint table, the
APIError family (app/errors.py) for the errors table. Each check reads the Markdown as a
reader would see it (table rows, headings), so removing a row or a heading fails it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from app import create_app
from app.config import Settings
from app.errors import APIError

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
OPERATIONS = DOCS / "operations.md"
API = DOCS / "api.md"
IGNORED_METHODS = {"HEAD", "OPTIONS"}  # answered for every route by Flask and flask-cors


def _section(path: Path, heading: str) -> str:
    """The text under a `## heading` up to the next heading of the same level."""
    text = path.read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{path.name} has no '## {heading}' section"
    return match.group(1)


def _table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= {"|", "-", " "}:
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _documented_default(value: object) -> str:
    """How the configuration table writes a default: as its variable would be set."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _configuration_table() -> dict[str, list[str]]:
    """The configuration table's rows keyed by variable name."""
    return {row[0].strip("`"): row for row in _table_rows(_section(OPERATIONS, "Configuration"))}


@pytest.mark.parametrize("field", fields(Settings), ids=lambda f: f.name)
def test_every_setting_has_a_row_with_its_default(field):
    rows = _configuration_table()
    name = "LLMVIZ_" + field.name.upper()
    assert name in rows, f"docs/operations.md's configuration table has no row for {name}"
    _, default, meaning = rows[name]
    expected = _documented_default(field.default)
    # An empty default (no keys, any model) is written as a word in parentheses.
    if expected:
        assert default == f"`{expected}`", f"{name}: the table says {default}, the code {expected}"
    else:
        assert re.fullmatch(r"\(\w+\)", default), f"{name}: default {default!r}"
    assert meaning, f"{name} has no meaning written"


def test_the_configuration_table_lists_only_settings():
    """A row for a setting that no longer exists misleads as much as a missing one."""
    settings = {"LLMVIZ_" + f.name.upper() for f in fields(Settings)}
    documented = {name for name in _configuration_table() if name.startswith("LLMVIZ_")}
    assert documented - settings == set()


def _route_entries() -> list[str]:
    """`METHOD /path` for every route and method, as the docs write it (`<model_id>`)."""
    entries = []
    for rule in create_app().url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)
        entries += [f"{method} {path}" for method in sorted(rule.methods - IGNORED_METHODS)]
    return sorted(entries)


@pytest.mark.parametrize("entry", _route_entries())
def test_every_route_has_an_entry_in_the_api_reference(entry):
    """A heading names it: `### \\`GET /models/<model_id>/config\\` and ...`."""
    headings = [line for line in API.read_text().splitlines() if line.startswith("#")]
    pattern = re.compile(rf"`{re.escape(entry)}[`?]")
    assert any(pattern.search(h) for h in headings), f"docs/api.md has no heading for {entry}"


@pytest.mark.parametrize("entry", _route_entries())
def test_every_route_is_in_the_readme_endpoint_table(entry):
    rows = _table_rows(_section(README, "Endpoints"))
    pattern = re.compile(rf"`{re.escape(entry)}[`?]")
    assert any(pattern.search(" | ".join(row)) for row in rows), f"README: no row for {entry}"


def _error_kinds() -> list[APIError]:
    kinds, todo = [], [APIError]
    while todo:
        kind = todo.pop()
        kinds.append(kind)
        todo += kind.__subclasses__()
    return sorted(kinds, key=lambda k: (k.status, k.code))


@pytest.mark.parametrize("kind", _error_kinds(), ids=lambda k: k.code)
def test_every_error_code_is_in_the_errors_table(kind):
    rows = _table_rows(_section(API, "Errors"))
    codes = {(cells[0], cells[1].strip("`")) for cells in rows if len(cells) > 2}
    assert (str(kind.status), kind.code) in codes, f"docs/api.md: no row {kind.status} {kind.code}"


def test_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 300


def _quick_start_commands() -> list[str]:
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no Quick start command block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_the_readme_has_two_commands_and_ci_runs_the_second_verbatim():
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, ".ci/run must run README's command 2 exactly as written"


def test_command_one_binds_loopback():
    """Command 1's own gunicorn arguments, read by gunicorn itself, bind loopback only.

    In a subprocess: gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR when it is read.
    """
    command = _quick_start_commands()[0].split("&&")[-1].split()
    assert command[0] == ".venv/bin/gunicorn", command
    ask = (
        "import sys\n"
        "from gunicorn.app.wsgiapp import WSGIApplication\n"
        "sys.argv = ['gunicorn', *sys.argv[1:]]\n"
        "print(WSGIApplication().cfg.bind)"
    )
    env = {k: v for k, v in os.environ.items() if k != "GUNICORN_CMD_ARGS"}
    answer = subprocess.run(
        [sys.executable, "-c", ask, *command[1:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert answer.stdout.strip() == "['127.0.0.1:8000']"


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "deploy" / "README.md"]


def test_flask_is_always_the_virtualenv_s():
    """A bare `flask` runs whichever is first on PATH, perhaps without these packages."""
    for path in _markdown_files():
        for line in path.read_text().splitlines():
            for match in re.finditer(r"(\S*)flask --app", line):
                assert match.group(1).endswith(".venv/bin/"), f"{path.name}: {line.strip()}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings in code
    return {_anchor(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert broken == []
