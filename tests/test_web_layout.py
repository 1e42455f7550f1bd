"""The browser SDK's main video container (setMainVideoContainerSetting) in its default layout, in real
Chromium against a kiosk endpoint: the picture's fit, the name label's corner, colour and visibility, and
the zoom, user-list and full-screen buttons where the settings put them, each doing what it says."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from browser_support import chromium
from calls_support import endpoints, make_user, new_session_id, running_server, wait_until
from test_web import _open_app

pytestmark = pytest.mark.timeout(90)

_JOIN = """
async ([sessionId]) => {
  const Calls = window.kioskCalls;
  const container = new Calls.MainVideoContainerSetting()
    .setMainVideoAspectRatio(Calls.ASPECT_RATIO.COVER)
    .setNameLabelParams(Calls.POSITION.TOP_RIGHT, true, "#cc0000")
    .setZoomButtonParams(Calls.POSITION.TOP_LEFT, true)
    .setUserListButtonParams(Calls.POSITION.TOP_LEFT, true)
    .setFullScreenButtonParams(Calls.POSITION.BOTTOM_LEFT, true);
  const settings = new Calls.CallSettingsBuilder().setMainVideoContainerSetting(container).build();
  container.setZoomButtonParams(Calls.POSITION.TOP_LEFT, false);  // too late: the settings keep their copy
  document.getElementById("lobby").hidden = true;
  document.getElementById("call").hidden = false;
  const token = await Calls.generateToken(sessionId);
  await Calls.startSession(token.token, settings, document.getElementById("call-screen"));
}
"""

_REMOTE_TILE = """
() => {
  const tile = document.querySelector('.calls-tile[data-uid="ann"]');
  if (!tile) return null;
  const label = tile.querySelector(".calls-name"), video = tile.querySelector("video");
  const t = tile.getBoundingClientRect(), l = label.getBoundingClientRect();
  return { fit: getComputedStyle(video).objectFit, labelHidden: label.hidden,
           background: getComputedStyle(label).backgroundColor,
           rightGap: t.right - l.right, topGap: l.top - t.top, width: t.width, height: t.height };
}
"""

_CORNERS = """
() => Object.fromEntries([...document.querySelectorAll(".calls-corner")].map((group) =>
  [group.dataset.corner, [...group.querySelectorAll("button")].map((b) => b.textContent)]))
"""


async def test_the_main_video_container_settings_shape_the_page(tmp_path):
    async with (
        asyncio.timeout(80),
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "ann") as (ann,),
        chromium() as browser,
    ):
        page = await _open_app(browser, server.url, await make_user(server.url, "visitor", "Visitor"))
        session = new_session_id()
        await ann.join(session)
        await page.evaluate(_JOIN, [session])
        await wait_until(lambda: page.evaluate(_REMOTE_TILE), 20, "ann's tile in the page")

        tile: dict[str, Any] = await page.evaluate(_REMOTE_TILE)
        assert tile["fit"] == "cover" and not tile["labelHidden"]
        assert tile["background"] == "rgb(204, 0, 0)"
        assert 0 <= tile["rightGap"] < 0.1 * tile["width"] and 0 <= tile["topGap"] < 0.1 * tile["height"]
        assert await page.evaluate(_CORNERS) == {
            "top-left": ["Zoom", "People"],
            "bottom-left": ["Full screen"],
        }

        await page.click(".calls-corner .calls-zoom")
        assert (await page.evaluate(_REMOTE_TILE))["fit"] == "contain"
        await page.click(".calls-corner .calls-zoom")
        assert (await page.evaluate(_REMOTE_TILE))["fit"] == "cover"

        await page.click(".calls-corner .calls-users")
        names = await page.evaluate(
            "() => [...document.querySelectorAll('.calls-userlist li')].map((li) => li.textContent)"
        )
        assert names == ["Visitor (you)", "Ann"]
        await page.click(".calls-corner .calls-users")
        assert await page.evaluate("() => document.querySelector('.calls-userlist') === null")

        await page.click(".calls-corner .calls-fullscreen")
        hidden = "() => getComputedStyle(document.querySelector('.calls-controls')).display"
        assert await page.evaluate(hidden) == "none"
        assert await page.evaluate("() => document.querySelector('.calls-fullscreen').textContent") == (
            "Exit full screen"
        )
        await page.click(".calls-corner .calls-fullscreen")
        assert await page.evaluate(hidden) != "none"

        await page.evaluate("() => window.kioskCalls.endSession()")
        assert not await page.evaluate("() => window.kioskCalls.inSession()")
        assert await page.evaluate(
            "() => document.querySelector('.calls-layout') === null"
        )  # the layout goes
        await ann.events.wait_for("on_user_left")

        with pytest.raises(Exception, match="position must be one of"):
            await page.evaluate(
                "() => new window.kioskCalls.MainVideoContainerSetting().setZoomButtonParams('middle', true)"
            )
