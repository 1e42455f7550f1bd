"""Headless Chromium (Debian's binary, driven by Playwright) as a real WebRTC peer for the web client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

CHROMIUM = "/usr/lib/chromium/chromium"

# The flags measured in NOTES.md, plus what a loopback-only WebRTC test needs. Playwright adds the
# headless flag itself (headless=True) and a fresh temporary profile (it refuses --user-data-dir).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream=fps=30",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--mute-audio",
    # Gather 127.0.0.1 host candidates: the Python endpoints only listen there.
    "--allow-loopback-in-peer-connection",
    # Plain IP host candidates instead of mDNS .local names, which aiortc cannot resolve.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@asynccontextmanager
async def chromium(extra_args: list[str] | None = None) -> AsyncIterator[object]:
    """A fresh headless Chromium (with `extra_args` after the usual flags, which they may override);
    yields a Playwright Browser."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[*CHROMIUM_ARGS, *(extra_args or [])],
            headless=True,
            timeout=20_000,
        )
        try:
            yield browser
        finally:
            await browser.close()
