"""docs/api.md's REST reference and the server's routes are the same list: every route the server's
application has (method and path) has an entry there, and every entry is a route the server has. A
route added without documentation, or documentation left behind by a route taken away, fails here."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from kiosk.server.app import create_app
from kiosk.server.config import ServerConfig

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## REST reference"
# An entry's heading: ### `METHOD /path`
_ENTRY = re.compile(r"^### `([A-Z]+) (/\S*)`", re.MULTILINE)
_PARAMETER = re.compile(r"\{[^}]*\}")

Route = tuple[str, str]  # (method, path with its parameters as {})


def _route(method: str, path: str) -> Route:
    # Parameter names are the documentation's to choose; where they are is the route's.
    return method, _PARAMETER.sub("{}", path)


def _served(app: web.Application) -> set[Route]:
    routes: set[Route] = set()
    gets = set()
    heads = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        path = resource.canonical
        if path == "/app" or path.startswith("/app/"):
            continue  # the browser client's page and files (docs/web.md)
        if route.method == "HEAD":
            heads.add(path)  # aiohttp adds one with every GET; api.md says so once for all
            continue
        if route.method == "OPTIONS":
            continue  # CORS preflight (protocol.md, "Cross-origin requests"), not an endpoint
        if route.method == "GET":
            gets.add(path)
        routes.add(_route(route.method, path))
    assert heads <= gets, f"HEAD routes without a GET, so not covered by api.md's note: {heads - gets}"
    return routes


def _reference() -> str:
    """The REST reference section of docs/api.md, up to the next section."""
    text = (ROOT / "docs" / "api.md").read_text()
    assert text.count(SECTION) == 1, f"docs/api.md needs one {SECTION!r} section"
    section = text[text.index(SECTION) + len(SECTION) :]
    following = re.search(r"^## ", section, re.MULTILINE)
    return section if following is None else section[: following.start()]


def _documented() -> list[Route]:
    return [_route(method, path) for method, path in _ENTRY.findall(_reference())]


def test_every_route_of_the_server_is_in_the_rest_reference_and_nothing_else(tmp_path: Path) -> None:
    # The application as `kiosk server` builds it; its routes exist before it starts.
    served = _served(create_app(ServerConfig(data_dir=tmp_path)))
    documented = _documented()
    assert len(documented) == len(set(documented)), f"an endpoint documented twice: {documented}"
    undocumented = served - set(documented)
    assert not undocumented, (
        f"routes with no entry in docs/api.md's REST reference: {sorted(undocumented)}; add a "
        f"'### `METHOD /path`' entry with its auth, body, answers and errors"
    )
    stale = set(documented) - served
    assert not stale, (
        f"docs/api.md's REST reference documents routes the server does not have: {sorted(stale)}"
    )


def test_each_entry_says_who_may_call_it_and_what_it_answers() -> None:
    entries = re.split(r"^### ", _reference(), flags=re.MULTILINE)[1:]
    assert entries
    for entry in entries:
        heading = entry.splitlines()[0]
        if heading.startswith("`GET /v1/ws`"):
            continue  # authenticated inside, by its first message
        assert re.search(r"^- Auth: (user|admin|none|pairing code)\b", entry, re.MULTILINE), (
            f"{heading}: no '- Auth: user|admin|none|pairing code'"
        )
        assert re.search(r"^- Answer: `\d{3}`", entry, re.MULTILINE), f"{heading}: no '- Answer: `status`'"
