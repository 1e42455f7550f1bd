"""The ringtone: while a call rings in, a ring plays through the current audio output.

A client of the controller like the screen and the LEDs: it watches the kiosk's phase and owns a
speaker only while ringing, so the call's own speaker can take the device the moment it is answered.
"""

from __future__ import annotations

import asyncio
import logging
import time

import av
import numpy as np

from kiosk.controller import KioskController, KioskState, Phase
from kiosk.media.devices import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE,
    DeviceError,
    MediaDevices,
    SpeakerSink,
)

log = logging.getLogger(__name__)

RING_ON_S, RING_OFF_S = 1.0, 2.0  # the classic ring cadence
RING_TONES_HZ = (440.0, 480.0)
RING_LEVEL = 0.25


def _ring_period() -> np.ndarray:
    """One ring cycle (tone, then silence) as int16 mono samples."""
    on = int(RING_ON_S * AUDIO_SAMPLE_RATE)
    t = np.arange(on) / AUDIO_SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * f * t) for f in RING_TONES_HZ) / len(RING_TONES_HZ)
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms ramps: no clicks
    silence = np.zeros(int(RING_OFF_S * AUDIO_SAMPLE_RATE))
    return (np.concatenate([tone * fade, silence]) * RING_LEVEL * 32767).astype(np.int16)


class Ringer:
    def __init__(self, controller: KioskController, devices: MediaDevices) -> None:
        self.controller = controller
        self.devices = devices
        self.periods_played = 0
        self._task: asyncio.Task[None] | None = None
        self._cycle = _ring_period()
        controller.add_observer(self._on_state)

    def _on_state(self, state: KioskState) -> None:
        if state.phase == Phase.RINGING_IN and self._task is None:
            self._task = asyncio.ensure_future(self._ring())
        elif state.phase != Phase.RINGING_IN and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _ring(self) -> None:
        mode = self.controller.starting_mode()  # where the call will be heard
        device = self.devices.output_for_mode(mode) if mode else None
        if device is None:
            outputs = self.devices.audio_outputs()
            device = outputs[0] if outputs else None
        if device is None:
            log.warning("no audio output to ring on")
            return
        loop = asyncio.get_running_loop()
        # Off the loop: a sound card's open can wait on a busy substream.
        opening = loop.run_in_executor(None, self.devices.open_speaker, device.device_id)
        try:
            speaker = await asyncio.shield(opening)
        except DeviceError as exc:
            log.warning("cannot ring: %s", exc)
            return
        except asyncio.CancelledError:
            opening.add_done_callback(_close_when_opened)  # answered while the speaker opened
            raise
        try:
            position, started = 0, time.monotonic()
            while True:
                chunk = np.take(self._cycle, np.arange(position, position + AUDIO_FRAME_SAMPLES), mode="wrap")
                position = (position + AUDIO_FRAME_SAMPLES) % len(self._cycle)
                frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = AUDIO_SAMPLE_RATE
                speaker.write("ringtone", frame)
                self.periods_played += 1
                due = started + self.periods_played * AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        except DeviceError as exc:
            log.warning("ringing stopped: %s", exc)
        finally:
            # Closed off the loop too (ALSA drains first); the call's speaker waits for the substream.
            loop.run_in_executor(None, speaker.close)

    def close(self) -> None:
        self.controller.remove_observer(self._on_state)
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _close_when_opened(opening: asyncio.Future[SpeakerSink]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        asyncio.get_running_loop().run_in_executor(None, opening.result().close)
