"""Which output plays the call: the audio mode and its speaker, switched without blocking the loop.

A sound card's playback substream opens once at a time. With alsa-lib's stock configuration a
second open of a busy `hw`/`plughw` PCM fails at once (EBUSY); with `defaults.pcm.nonblock 0` it
waits until the holder closes it, for ever if the holder is ourselves. And closing an ALSA output
drains what it has queued. So:

- opening and closing speakers happens on worker threads, never on the event loop;
- selecting the output that already plays does not reopen it;
- a new output that is busy (it shares a substream with the current one: two modes on one card)
  gets the substream after the current one is closed; otherwise the new one opens while the old
  one plays, and the old one is closed after the swap, so the switch leaves no gap;
- an output held by someone else (the ringtone being stopped, another program) is retried for a
  moment, then reported, and the call falls back to another mode or keeps the one it had.

The selection (`mode`, `device_id`) changes at once, as the documents' set_audio_mode does; the
speaker follows as soon as it is open. `settled()` waits for that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import av

from kiosk.calls.constants import AudioMode, parse_enum
from kiosk.calls.errors import CallsError
from kiosk.calls.events import AudioModeInfo
from kiosk.media.devices import DeviceBusyError, DeviceError, MediaDeviceInfo, MediaDevices, SpeakerSink

log = logging.getLogger(__name__)

OPEN_TIMEOUT_SECONDS = 5.0  # an open still blocked after this is abandoned (and closed if it ever returns)
BUSY_RETRY_SECONDS = 1.0  # how long an output held by someone else is waited for
BUSY_RETRY_INTERVAL = 0.1


class AudioOutput:
    """The session's playback: the selected output and the open speaker that plays it.

    `on_error(exc)` reports a device that failed to open or play; `on_changed()` is called when the
    selection changed by itself (a fallback), so the session can emit on_audio_mode_changed;
    `on_microphone(device)` asks for the microphone that goes with the new mode (a handset's own).
    """

    def __init__(
        self,
        devices: MediaDevices,
        *,
        on_error: Callable[[DeviceError], None],
        on_changed: Callable[[], None],
        on_microphone: Callable[[MediaDeviceInfo], None],
    ) -> None:
        self.devices = devices
        self._on_error = on_error
        self._on_changed = on_changed
        self._on_microphone = on_microphone
        self.mode: str | None = None  # the selected audio mode
        self.device_id: str | None = None  # the selected output
        self.speaker: SpeakerSink | None = None  # what plays now (the previous output until the switch)
        self._speaker_id: str | None = None
        self._switching: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self._closed = False

    # ----------------------------------------------------------------- choosing

    def select(self, device: MediaDeviceInfo) -> None:
        """Play through `device` from now on (its audio mode becomes the current one)."""
        self.device_id = device.device_id
        if device.audio_mode:
            self.mode = device.audio_mode
            # A mode may bring its own microphone (a handset, a headset): capture follows the output.
            microphone = self.devices.input_for_mode(device.audio_mode)
            if microphone is not None:
                self._on_microphone(microphone)
        self._converge()

    def modes(self) -> list[AudioModeInfo]:
        """The modes present now, in the configured order, the selected one marked."""
        return [AudioModeInfo(m, m == self.mode) for m in self.devices.audio_modes()]

    def select_mode(self, mode: AudioMode | str) -> None:
        """The documents' set_audio_mode: the mode's output, if one is present now."""
        try:
            chosen = parse_enum(AudioMode, mode, "audio mode")
        except ValueError as exc:
            raise CallsError("INVALID_AUDIO_MODE", str(exc)) from None
        device = self.devices.output_for_mode(chosen)
        if device is None:
            raise CallsError("AUDIO_MODE_UNAVAILABLE", f"no {chosen} device is present now")
        self.select(device)  # the output that already plays is not reopened
        self._on_changed()

    def select_output(self, device_id: str) -> None:
        """An output device by id (DeviceError if there is none); its mode becomes the current one."""
        device = self.devices.find(device_id, "audiooutput")
        before = self.mode
        self.select(device)
        if self.mode != before:
            self._on_changed()

    def choose_initial(self, wanted: str | None) -> str | None:
        """At the start of a session: `wanted` (the settings' default mode) if present, else the
        first present mode, else any output. Returns why `wanted` could not be had, if it could not."""
        modes = self.devices.audio_modes()
        mode = wanted if wanted in modes else (modes[0] if modes else None)
        device = self.devices.output_for_mode(mode) if mode is not None else None
        outputs = self.devices.audio_outputs()
        if device is None and outputs:
            device = outputs[0]
        if device is not None:
            self.select(device)
        if wanted is not None and wanted not in modes:
            return f"default audio mode {wanted} has no device now; using {mode or 'none'}"
        return None

    def fall_back(self, failed: str | None = None) -> bool:
        """Select the first present mode in the configured order, other than `failed` (an output that
        opens but fails to play must not be reopened in a loop). False when no other is present."""
        if failed is not None and failed == self._speaker_id:
            self._drop_speaker()
        for mode in self.devices.audio_modes():
            device = self.devices.output_for_mode(mode)
            if device is not None and device.device_id != failed:
                self.select(device)
                return True
        self.device_id = self.mode = None
        return False

    def output_vanished(self, present: list[MediaDeviceInfo]) -> bool:
        """After a device list change: fall back if the selected output is gone. True if it was."""
        if self.device_id is None or any(d.device_id == self.device_id for d in present):
            return False
        self.fall_back(failed=self.device_id)
        return True

    # ----------------------------------------------------------------- playing

    def write(self, participant_uid: str, frame: av.AudioFrame) -> None:
        speaker = self.speaker
        if speaker is None:
            return
        try:
            speaker.write(participant_uid, frame)
        except DeviceError as exc:
            self._on_error(exc)
            self.fall_back(failed=self._speaker_id)
            self._on_changed()

    async def settled(self) -> None:
        """Wait until the speaker plays the selected output (or gave up on it)."""
        while self._switching is not None and not self._switching.done():
            await asyncio.shield(self._switching)

    async def close(self) -> None:
        self._closed = True
        if self._switching is not None:
            self._switching.cancel()
            await asyncio.gather(self._switching, return_exceptions=True)
        self._drop_speaker()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # ----------------------------------------------------------------- switching, off the loop

    def _converge(self) -> None:
        if self._closed or (self._switching is not None and not self._switching.done()):
            return  # the running switch goes on to the newest selection when it is done
        self._switching = asyncio.ensure_future(self._switch())
        self._switching.add_done_callback(self._switch_done)

    def _switch_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("audio output switch failed", exc_info=task.exception())

    async def _switch(self) -> None:
        failed: set[str] = set()
        while not self._closed and self.device_id is not None and self.device_id != self._speaker_id:
            target = self.device_id
            try:
                await self._switch_to(target)
            except DeviceError as exc:
                failed.add(target)
                if self.device_id != target:
                    log.info("%s (selected away meanwhile)", exc)
                    continue
                if not any(d.device_id == target for d in self.devices.audio_outputs()):
                    # Unplugged while it opened: the device poll reports that and falls back.
                    log.info("%s (unplugged meanwhile)", exc)
                else:
                    self._on_error(exc)
                if not self._choose_other(failed):
                    return

    def _choose_other(self, failed: set[str]) -> bool:
        """After `failed` outputs could not open: the one that plays, else the first other mode."""
        if self._speaker_id is not None and self._speaker_id not in failed:
            device = next((d for d in self.devices.audio_outputs() if d.device_id == self._speaker_id), None)
            if device is not None:
                self.device_id, self.mode = device.device_id, device.audio_mode or self.mode
                self._on_changed()
                return False  # it already plays: nothing more to open
        for mode in self.devices.audio_modes():
            device = self.devices.output_for_mode(mode)
            if device is not None and device.device_id not in failed:
                self.select(device)
                self._on_changed()
                return True
        self.device_id = self.mode = None
        self._on_changed()
        return False

    async def _switch_to(self, device_id: str) -> None:
        loop = asyncio.get_running_loop()
        if self._speaker_id is not None and await loop.run_in_executor(
            None, self.devices.output_busy, device_id
        ):
            if self.devices.shares_substream(self._speaker_id, device_id) is not False:
                # Our own speaker (probably) holds the substream the new output needs: free it first.
                self._drop_speaker()
                await asyncio.gather(*self._closing, return_exceptions=True)
        speaker = await self._open(device_id)
        if self._closed or self.device_id != device_id:
            self._close_later(speaker)  # selected away (or closed) meanwhile
            return
        old = self.speaker
        self.speaker, self._speaker_id = speaker, device_id
        if old is not None:
            self._close_later(old)

    async def _open(self, device_id: str) -> SpeakerSink:
        """Open on a worker thread; an output busy with someone else is retried for a moment."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_RETRY_SECONDS
        while True:
            future = loop.run_in_executor(None, self.devices.open_speaker, device_id)
            try:
                return await asyncio.wait_for(asyncio.shield(future), OPEN_TIMEOUT_SECONDS)
            except DeviceBusyError:
                if loop.time() >= deadline:
                    raise
            except TimeoutError:
                future.add_done_callback(self._close_abandoned)
                raise DeviceError(
                    device_id, f"opening it did not finish in {OPEN_TIMEOUT_SECONDS:.0f} s"
                ) from None
            await asyncio.sleep(BUSY_RETRY_INTERVAL)

    def _close_abandoned(self, future: asyncio.Future[SpeakerSink]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._close_later(future.result())

    def _drop_speaker(self) -> None:
        speaker, self.speaker, self._speaker_id = self.speaker, None, None
        if speaker is not None:
            self._close_later(speaker)

    def _close_later(self, speaker: SpeakerSink) -> None:
        """Close on a worker thread (an ALSA output drains first); tracked so close() can wait."""
        try:
            future = asyncio.get_running_loop().run_in_executor(None, _close_quietly, speaker)
        except RuntimeError:  # no loop any more: the process is ending
            _close_quietly(speaker)
            return
        self._closing.add(future)
        future.add_done_callback(self._closing.discard)


def _close_quietly(speaker: SpeakerSink) -> None:
    try:
        speaker.close()
    except Exception:
        log.exception("closing %s failed", speaker.device.device_id)
