"""docs/api.md's conformance table (section 5) is true: every test it names exists and mentions the names
of its row, and every setter of CallSettingsBuilder and MainVideoContainerSetting has a row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from kiosk.calls import CallSettingsBuilder, MainVideoContainerSetting

ROOT = Path(__file__).resolve().parents[1]
TABLE_START = "## 5. Conformance"
# Code the tests reach the SDK through: a name used there counts for the tests that use them.
HARNESSES = (ROOT / "tests" / "calls_support.py", ROOT / "kiosk" / "endpoint.py")
APP_JS = ROOT / "kiosk" / "web" / "app.js"


def _rows() -> list[list[str]]:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index(TABLE_START) :]
    rows = [
        line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| element")
    ]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _test_source(reference: str) -> str:
    path, name = reference.split("::")
    tree = ast.parse((ROOT / path).read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return ast.get_source_segment((ROOT / path).read_text(), node) or ""
    raise AssertionError(f"docs/api.md names {reference}, which does not exist")


def _module_helpers(path: str) -> str:
    """A test file's code outside its tests (scripts, fixtures, helpers they call)."""
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    parts = [
        ast.get_source_segment(source, node) or ""
        for node in tree.body
        if not (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"))
    ]
    return "\n".join(parts)


def test_every_test_the_table_names_exists_and_uses_the_names_of_its_row() -> None:
    rows = _rows()
    assert len(rows) > 40
    harness = "\n".join(path.read_text() for path in HARNESSES)
    problems: list[str] = []
    for element, python, browser, tests in rows:
        references = re.findall(r"`(tests/[a-z_0-9]+\.py::test_[a-z_0-9]+)`", tests)
        assert references, f"{element}: no test named"
        code = "\n".join(_test_source(r) + _module_helpers(r.split("::")[0]) for r in references) + harness
        if any(r.startswith("tests/test_web.py::") for r in references):
            code += APP_JS.read_text()  # those tests drive the page's app, which calls the SDK
        names = re.findall(r"`([A-Za-z_][A-Za-z_0-9]*)", python)
        names += [] if browser in ("—", "the same") else re.findall(r"`([A-Za-z_][A-Za-z_0-9]*)", browser)
        missing = [name for name in names if name not in code]
        if missing:
            problems.append(f"{element}: {missing} appear in none of {references}")
    assert not problems, "\n".join(problems)


def test_every_setter_has_a_row() -> None:
    table = "\n".join(" ".join(row[:3]) for row in _rows())
    setters = [
        name
        for cls in (CallSettingsBuilder, MainVideoContainerSetting)
        for name in vars(cls)
        # the canonical setters: an alias (`set_is_audio_only = set_is_audio_only_call`) has another name
        if not name.startswith("_")
        and name != "build"
        and getattr(getattr(cls, name), "__name__", "") == name
    ]
    assert len(setters) > 25
    missing = [name for name in setters if f"`{name}`" not in table and f" {name}`" not in table]
    assert not missing, f"setters with no row in docs/api.md section 5: {missing}"
