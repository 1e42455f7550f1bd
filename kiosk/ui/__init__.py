"""The kiosk's full-screen touch UI (Kivy), sharing one asyncio loop with the Calls SDK.

Importing this package does not import Kivy: Kivy reads its environment (window provider, KIVY_HOME,
argument parsing) at import time, so `kiosk.ui.env.prepare_kivy()` must run first. `kiosk.ui.app`
holds `run_kiosk()` (the `kiosk run` command) and, imported lazily, `KioskApp`.
"""
