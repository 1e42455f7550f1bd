"""The real kiosk UI (`kiosk run`'s code path, Kivy offscreen) with two latency probes, for bench.latency.

Run as a script: `python bench/_ui_probe.py CONFIG SAMPLES SAFETY_SECONDS`. It runs
`kiosk.ui.app.run_kiosk_async` on the given kiosk.toml (a kiosk of the benchmark's call server that
answers calls by itself) until SIGTERM (or SAFETY_SECONDS), then writes SAMPLES (JSON):

- "on_screen": [monotonic seconds, latency ms] for every remote frame a video tile uploaded
  (VideoTile.on_upload), taken at the next buffer swap (Window.on_flip) once the GPU has finished
  drawing it (glFinish): the frame is on the glass then, save for the display's own scan-out;
- "uploaded": the same, taken when the tile uploads the frame to its texture (before it is drawn);
- "decoded": the same, taken when the SDK hands the decoded frame to the kiosk's view
  (FrameStore.render_frame, called by the SDK right after decoding), in this same process;
- "waited": [monotonic seconds, ms] from a remote frame's decode to its drawing (what the UI adds);
- "loop_fps": [monotonic seconds, Kivy Clock.get_fps()] once a second (main-loop iterations per second).

The environment (SDL_VIDEODRIVER=offscreen, KIVY_NO_ARGS=1, KIVY_HOME) is set by the caller.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import av


def main(config_path: Path, samples_path: Path, safety: float) -> int:
    from kiosk.config import load_config
    from kiosk.ui.env import prepare_kivy

    config = load_config(config_path)
    prepare_kivy(width=config.ui.width, height=config.ui.height, offscreen=True)

    from kivy.app import App
    from kivy.clock import Clock
    from kivy.core.window import Window
    from kivy.graphics.opengl import glFinish

    from kiosk.media.pattern import latency_ms, read_stamp
    from kiosk.ui.app import run_kiosk_async
    from kiosk.ui.frames import LOCAL, FrameStore
    from kiosk.ui.widgets import VideoTile

    on_screen: list[tuple[float, int]] = []
    uploads: list[tuple[float, int]] = []
    decoded: list[tuple[float, int]] = []
    loop_fps: list[tuple[float, float]] = []  # Kivy's main-loop iterations per second, once a second

    decoded_at: dict[int, float] = {}  # stamp -> when the frame was decoded (the newest few)
    waited: list[tuple[float, float]] = []  # [monotonic seconds, ms from decode to upload of that frame]

    uploaded_stamps: list[int] = []  # uploaded, not yet drawn

    def uploaded(tile: VideoTile, frame: av.VideoFrame) -> None:
        if tile.person == LOCAL:
            return
        stamp = read_stamp(frame)
        if stamp is not None:
            uploads.append((time.monotonic(), latency_ms(stamp)))
            uploaded_stamps.append(stamp)

    def drawn(*_: object) -> None:
        if not uploaded_stamps:
            return
        glFinish()  # the kiosk's own on_flip handler has waited already; this one is then at once
        now = time.monotonic()
        for stamp in uploaded_stamps:
            on_screen.append((now, latency_ms(stamp)))
            if stamp in decoded_at:
                waited.append((now, (now - decoded_at[stamp]) * 1000))
        uploaded_stamps.clear()

    original_render = FrameStore.render_frame

    def render_frame(store: FrameStore, uid: str, frame: av.VideoFrame) -> None:
        if uid != LOCAL:
            stamp = read_stamp(frame)
            if stamp is not None:
                now = time.monotonic()
                decoded.append((now, latency_ms(stamp)))
                decoded_at[stamp] = now
                if len(decoded_at) > 64:
                    del decoded_at[next(iter(decoded_at))]
        original_render(store, uid, frame)

    VideoTile.on_upload = uploaded
    Window.bind(on_flip=drawn)
    Clock.schedule_interval(lambda dt: loop_fps.append((time.monotonic(), Clock.get_fps())), 1.0)
    FrameStore.render_frame = render_frame  # type: ignore[method-assign]

    def stop() -> None:
        app = App.get_running_app()
        if app is not None:
            app.stop()

    async def run() -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)
        return await run_kiosk_async(config, duration=safety)

    try:
        code = asyncio.run(run())
    finally:
        samples_path.write_text(
            json.dumps(
                {
                    "on_screen": on_screen,
                    "uploaded": uploads,
                    "decoded": decoded,
                    "loop_fps": loop_fps,
                    "waited": waited,
                }
            )
        )
    return code


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])))
