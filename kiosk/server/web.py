"""The browser client: the files of kiosk/web served at /app/ (plain ES modules, no build step)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
_INDEX_NAME = "web-index"


async def _index(request: web.Request) -> web.FileResponse:
    # no-cache: a kiosk browser left open must pick up a new client after an upgrade.
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _to_index(request: web.Request) -> web.StreamResponse:
    # An old sign-in link's token goes to the fragment, which browsers never send to a server.
    query = request.rel_url.query.copy()
    token = query.popall("token", [])
    rest = urlencode(list(query.items()))
    fragment = "#" + urlencode({"token": token[0]}) if token else ""
    raise web.HTTPFound("/app/" + (f"?{rest}" if rest else "") + fragment)


def add_web_routes(app: web.Application) -> None:
    """Serve the web client at /app/. Calling it twice on one app is harmless."""
    if _INDEX_NAME in app.router.named_resources():
        return
    app.router.add_get("/app", _to_index)
    app.router.add_get("/app/", _index, name=_INDEX_NAME)
    app.router.add_static("/app/", WEB_DIR, append_version=False)
