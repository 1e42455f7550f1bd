"""ALSA audio: one playback PCM per audio mode, capture PCMs, presence followed at run time.

`AlsaAudio(section)` reads `[audio]`: `modes` maps SPEAKER, EARPIECE, ... to a playback PCM (and
optionally the capture PCM of that mode, a headset's microphone); `capture` is the microphone used
otherwise. It is a MediaDevices with audio only (`open_camera` refuses); compose it with a camera
backend.

Presence: a device is listed while its PCM opens. The probe is snd_pcm_open(NONBLOCK) and close,
called through ctypes, with no hw_params: unlike pyalsaaudio's PCM() it does not truncate a `file`
PCM's output or start a stream, and a device busy (EBUSY, e.g. held by our own open sink) still
counts as present. snd_pcm_open re-reads alsa-lib's configuration when one of its files changed; alsa-lib
compares device, inode and mtime in whole seconds, so a file rewritten in place within the same second
goes unnoticed, while a new file renamed over it is seen at once. Measured here: 0.02 ms per probe
(0.14 ms to list six PCMs, 0.55 ms just after a configuration change); alsaaudio.pcms() takes 1.5-1.9 ms
per direction, listed our file PCMs under both directions, and says nothing of whether a card is there.

Timing: the file and null plugins neither block nor pace; a sound card does. Each stream finds out
which after its first period (a card's buffer fills or drains with time; null reports it full or empty
at once) and, for the plugins, paces itself by the monotonic clock instead.

A card's substream opens once at a time: with alsa-lib's stock `defaults.pcm.nonblock 1` a second open
fails with EBUSY, otherwise it waits (docs/device.md) - and pyalsaaudio waits holding the GIL, which
would stop every thread. So each open is preceded by the non-blocking probe, and a busy PCM is refused
with DeviceBusyError; `output_busy()` uses the same probe. Opening and closing PCMs is for worker
threads, never the event loop (kiosk/calls/audio_output.py).

Underruns: when playback falls behind, the card plays silence and pyalsaaudio's write() returns -EPIPE
(it re-prepares the stream and drops what that call carried). The period is written again, and the
echo canceller's reference gets what was really played: the silence of the gap, then the period.

Volume: `hardware_volume(device_id)` is the output's mixer element (pyalsaaudio's Mixer) where the card
has one; kiosk.media.volume falls back to a software gain, which the playback thread applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import cache

import alsaaudio
import av
import numpy as np

from kiosk.audio_modes import AudioMode
from kiosk.config import AudioModeDevice, AudioSection
from kiosk.media.devices import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_MODES,
    AUDIO_SAMPLE_RATE,
    CameraSource,
    DeviceBusyError,
    DeviceError,
    HardwareVolume,
    MediaDeviceInfo,
    MediaDevices,
    MicrophoneSource,
    SpeakerSink,
)
from kiosk.media.mixer import ParticipantMixer
from kiosk.media.soundcards import PLAYBACK_CONTROLS, SoundCard, propose_audio, read_cards
from kiosk.media.volume import level_to_db

log = logging.getLogger(__name__)

ReferenceTap = Callable[[np.ndarray], None]

_STREAM_PLAYBACK = 0  # snd_pcm_stream_t
_STREAM_CAPTURE = 1
_OPEN_NONBLOCK = 1  # SND_PCM_NONBLOCK
_PLAYBACK_PERIODS = 3  # a card's buffer: the output latency, and the margin against underruns
_CAPTURE_PERIODS = 4
_RESYNC_AFTER = 0.2  # seconds behind the clock before restarting it rather than catching up in a burst
_JOIN_TIMEOUT = 1.0

# void (*)(const char *file, int line, const char *func, int err, const char *fmt, va_list arg)
_LocalErrorHandler = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p
)


def _text(value: bytes | None) -> str:
    return (value or b"").decode(errors="replace")


@_LocalErrorHandler
def _alsa_lib_message(file: bytes, line: int, function: bytes, err: int, fmt: bytes, _args: int) -> None:
    # alsa-lib prints to stderr by default ("Unknown PCM ..." at every probe of an absent device).
    log.debug("alsa-lib %s:%d (%s) %s", _text(file), line, _text(function), _text(fmt))


class _AlsaLib:
    """What pyalsaaudio does not offer: a cheap open/close probe and quieting alsa-lib's stderr."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libasound.so.2")
        lib.snd_pcm_open.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.snd_pcm_open.restype = ctypes.c_int
        lib.snd_pcm_close.argtypes = [ctypes.c_void_p]
        lib.snd_strerror.argtypes = [ctypes.c_int]
        lib.snd_strerror.restype = ctypes.c_char_p
        self._lib = lib
        # Thread-local handler (alsa-lib >= 1.1.6): other users of alsa-lib in the process keep theirs.
        self._set_local = getattr(lib, "snd_lib_error_set_local", None)
        if self._set_local is not None:
            self._set_local.argtypes = [ctypes.c_void_p]
            self._set_local.restype = ctypes.c_void_p
        self._handler = ctypes.cast(_alsa_lib_message, ctypes.c_void_p)

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """alsa-lib's messages go to the debug log, in this thread, for the duration."""
        if self._set_local is None:
            yield
            return
        previous = self._set_local(self._handler)
        try:
            yield
        finally:
            self._set_local(previous)

    def quiet_thread(self) -> None:
        """For our own audio threads: their alsa-lib messages go to the debug log for good."""
        if self._set_local is not None:
            self._set_local(self._handler)

    def open_error(self, pcm: str, capture: bool) -> int:
        """0 if the PCM opens now (it is closed again at once), else alsa-lib's negative errno."""
        handle = ctypes.c_void_p()
        stream = _STREAM_CAPTURE if capture else _STREAM_PLAYBACK
        with self.quiet():
            err = int(self._lib.snd_pcm_open(ctypes.byref(handle), pcm.encode(), stream, _OPEN_NONBLOCK))
            if err == 0:
                self._lib.snd_pcm_close(handle)
        return err

    def probe(self, pcm: str, capture: bool) -> str | None:
        """None if the PCM opens (or is busy) now, else alsa-lib's reason."""
        err = self.open_error(pcm, capture)
        if err in (0, -errno.EBUSY):
            return None
        return _text(self._lib.snd_strerror(err))


@cache
def _alsa() -> _AlsaLib:
    return _AlsaLib()


def _alsa_message(exc: alsaaudio.ALSAAudioError, pcm: str) -> str:
    """pyalsaaudio's message without the "[pcm]" it appends (we name the PCM ourselves)."""
    message = str(exc)
    suffix = f" [{pcm}]"
    return message[: -len(suffix)] if message.endswith(suffix) else message


class _Stream:
    """One open PCM in S16_LE at 48 kHz, as the device granted it."""

    def __init__(
        self, device_id: str, pcm: str, capture: bool, channels: int, period: int, periods: int
    ) -> None:
        self.device_id = device_id
        self.pcm_name = pcm
        what = "capture" if capture else "playback"
        # pyalsaaudio calls snd_pcm_open holding the GIL, and where the configuration says
        # `defaults.pcm.nonblock 0` that open waits for a busy card for as long as it is held: every
        # thread of the process would stop, the event loop with them. So a busy card is found out
        # first with a non-blocking open (through ctypes, which lets go of the GIL) and refused.
        if _alsa().open_error(pcm, capture) == -errno.EBUSY:
            raise DeviceBusyError(
                device_id, f"cannot open ALSA PCM {pcm!r} for {what}: Device or resource busy"
            )
        with _alsa().quiet():
            try:
                self.pcm = alsaaudio.PCM(
                    type=alsaaudio.PCM_CAPTURE if capture else alsaaudio.PCM_PLAYBACK,
                    mode=alsaaudio.PCM_NORMAL,
                    device=pcm,
                    rate=AUDIO_SAMPLE_RATE,
                    channels=channels,
                    format=alsaaudio.PCM_FORMAT_S16_LE,
                    periodsize=period,
                    periods=periods,
                )
            except alsaaudio.ALSAAudioError as exc:
                reason = _alsa_message(exc, pcm)
                error = DeviceBusyError if "busy" in reason.lower() else DeviceError
                raise error(device_id, f"cannot open ALSA PCM {pcm!r} for {what}: {reason}") from None
        # pyalsaaudio applies what the device accepts and ignores the rest: check what we got.
        info = self.pcm.info()
        if info["rate"] != AUDIO_SAMPLE_RATE or info["format"] != alsaaudio.PCM_FORMAT_S16_LE:
            self.pcm.close()
            raise DeviceError(
                device_id,
                f"ALSA PCM {pcm!r} does not take {AUDIO_SAMPLE_RATE} Hz S16_LE for {what} "
                f"(it offers {info['rate']} Hz {info['format_name']}); use a plug PCM (plughw:, default)",
            )
        self.channels = int(info["channels"])
        self.period = int(info["period_size"])
        self.buffer_size = int(info["buffer_size"])

    def failure(self, exc: alsaaudio.ALSAAudioError) -> DeviceError:
        return DeviceError(
            self.device_id, f"ALSA PCM {self.pcm_name!r} failed: {_alsa_message(exc, self.pcm_name)}"
        )

    def close(self) -> None:
        with _alsa().quiet(), contextlib.suppress(alsaaudio.ALSAAudioError):
            self.pcm.close()  # pyalsaaudio drains playback first: what is queued still plays


class _Clock:
    """Deadlines for a stream that does not pace itself: period k is due at start + k * period."""

    def __init__(self, period_seconds: float, stop: threading.Event) -> None:
        self.period_seconds = period_seconds
        self.start = time.monotonic()
        self.count = 0
        self._stop = stop

    def wait_next(self) -> bool:
        """Sleep until the next period is due; False if stopped meanwhile."""
        self.count += 1
        delay = self.start + self.count * self.period_seconds - time.monotonic()
        if delay > 0:
            return not self._stop.wait(delay)
        if delay < -_RESYNC_AFTER:
            self.start = time.monotonic() - self.count * self.period_seconds
        return not self._stop.is_set()


class AlsaMicrophone(MicrophoneSource):
    """A capture PCM read on its own thread; `next_frame()` returns 20 ms mono frames.

    The thread hands each period to the event loop, where at most two periods (at least one frame) wait:
    if nobody reads, the oldest samples go, so the microphone never lags behind the room.
    """

    def __init__(self, device: MediaDeviceInfo, pcm: str, period_ms: int) -> None:
        self.device = device
        self.pcm_name = pcm
        period = period_ms * AUDIO_SAMPLE_RATE // 1000
        self._stream = _Stream(device.device_id, pcm, True, 1, period, _CAPTURE_PERIODS)
        self.period = self._stream.period
        self.max_buffered = max(2 * self.period, AUDIO_FRAME_SAMPLES)
        self.dropped_samples = 0
        self.overruns = 0
        self.paced_by_device: bool | None = None
        self._buffer = np.zeros(0, dtype=np.int16)
        self._error: DeviceError | None = None
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None

    @property
    def buffered_samples(self) -> int:
        return len(self._buffer)

    async def next_frame(self) -> av.AudioFrame:
        if self._closed:
            raise DeviceError(self.device.device_id, "microphone closed")
        if self._thread is None:
            self._start()
        while len(self._buffer) < AUDIO_FRAME_SAMPLES:
            if self._closed:
                raise DeviceError(self.device.device_id, "microphone closed")
            if self._error is not None:
                raise self._error
            assert self._ready is not None
            self._ready.clear()
            await self._ready.wait()
        chunk, self._buffer = self._buffer[:AUDIO_FRAME_SAMPLES], self._buffer[AUDIO_FRAME_SAMPLES:]
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        return frame

    def _start(self) -> None:
        # Started by the first read, on the loop that reads: the frames go to that loop.
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"alsa-capture-{self.pcm_name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _alsa().quiet_thread()
        stream = self._stream
        clock = _Clock(stream.period / AUDIO_SAMPLE_RATE, self._stop)
        try:
            while not self._stop.is_set():
                length, data = stream.pcm.read()
                if length < 0:  # overrun: samples were lost, the stream goes on
                    self.overruns += 1
                    continue
                samples = np.frombuffer(data, dtype="<i2")
                if stream.channels > 1:
                    samples = samples.reshape(-1, stream.channels).mean(axis=1).astype(np.int16)
                if self.paced_by_device is None:
                    # A card has about nothing left right after a read; null always has a full buffer.
                    self.paced_by_device = stream.pcm.avail() < stream.buffer_size
                if not self.paced_by_device and not clock.wait_next():
                    break
                if not self._hand_over(self._push, samples):
                    break
        except alsaaudio.ALSAAudioError as exc:
            error = stream.failure(exc)
            log.warning("%s", error)
            self._hand_over(self._fail, error)
        finally:
            stream.close()

    def _hand_over(self, callback: Callable[..., None], *args: object) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody will read
            return False
        return True

    def _push(self, samples: np.ndarray) -> None:
        if self._closed:
            return
        joined = np.concatenate((self._buffer, samples))
        if len(joined) > self.max_buffered:
            self.dropped_samples += len(joined) - self.max_buffered
            joined = joined[-self.max_buffered :]
        self._buffer = joined
        assert self._ready is not None
        self._ready.set()

    def _fail(self, error: DeviceError) -> None:
        self._error = error
        if self._ready is not None:
            self._ready.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._ready is not None:
            self._ready.set()
        if self._thread is None:
            self._stream.close()
        elif self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT)


class AlsaSpeaker(SpeakerSink):
    """A playback PCM with its own thread mixing every participant, one period at a time.

    Output is stereo when the device grants it (the mono mix on both channels): HDMI and most USB
    headsets take only two channels on their hw: PCMs, while mono-only devices are still served.
    """

    def __init__(self, device: MediaDeviceInfo, pcm: str, period_ms: int) -> None:
        self.device = device
        self.pcm_name = pcm
        period = period_ms * AUDIO_SAMPLE_RATE // 1000
        self._stream = _Stream(device.device_id, pcm, False, 2, period, _PLAYBACK_PERIODS)
        self.period = self._stream.period
        self.channels = self._stream.channels
        # Two periods, but never less than two network frames, or each 20 ms frame would push out the last.
        self.mixer = ParticipantMixer(max(2 * self.period, 2 * AUDIO_FRAME_SAMPLES))
        self.periods_written = 0
        self.underruns = 0
        self.paced_by_device: bool | None = None
        self._drained_at = 0.0  # when the card will have played everything written so far
        self._tap: ReferenceTap | None = None
        self._tap_failed = False
        self._error: DeviceError | None = None
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"alsa-playback-{pcm}", daemon=True)
        self._thread.start()

    def set_reference_tap(self, callback: ReferenceTap | None) -> None:
        """`callback(samples)` gets each period as it is written: int16 mono at 48 kHz, a fresh array.

        It runs on the playback thread and must return quickly (the echo canceller's far end)."""
        self._tap = callback
        self._tap_failed = False

    def write(self, participant_uid: str, frame: av.AudioFrame) -> None:
        if self._error is not None:
            raise self._error
        if not self._closed:
            self.mixer.push(participant_uid, frame)

    def _run(self) -> None:
        _alsa().quiet_thread()
        stream = self._stream
        clock = _Clock(stream.period / AUDIO_SAMPLE_RATE, self._stop)
        try:
            self._play(np.zeros(stream.period, dtype=np.int16))  # starts the stream
            # A card now holds the period it has not played yet; null has taken it all.
            self.paced_by_device = stream.pcm.avail() < stream.buffer_size
            while not self._stop.is_set():
                if not self.paced_by_device and not clock.wait_next():
                    break
                self._play(self.mixer.mix(stream.period))  # a card blocks here while its buffer is full
        except alsaaudio.ALSAAudioError as exc:
            self._error = stream.failure(exc)
            log.warning("%s", self._error)
        finally:
            stream.close()

    def _play(self, mono: np.ndarray) -> None:
        gain = self.gain
        if gain != 1.0:
            mono = np.clip(mono.astype(np.float32) * gain, -32768, 32767).astype(np.int16)
        channels = self._stream.channels
        out = mono if channels == 1 else np.repeat(mono, channels)  # interleaved: each sample on all channels
        if not self._write(out.astype("<i2", copy=False).tobytes()):
            return
        self.periods_written += 1
        self._report(mono)

    def _write(self, data: bytes) -> bool:
        """Write one period whole; False if the card would not take it after an underrun."""
        frame_bytes = 2 * self._stream.channels
        retried = False
        while data:
            result = self._stream.pcm.write(data)
            if result == -errno.EPIPE:
                # Underrun: the card played silence meanwhile and this call's data was dropped
                # (pyalsaaudio has re-prepared the stream). The reference gets the silence; the period
                # is written again, once.
                self.underruns += 1
                gap = time.monotonic() - self._drained_at
                if gap > 0 and self._drained_at > 0:
                    self._report(np.zeros(round(gap * AUDIO_SAMPLE_RATE), dtype=np.int16))
                self._drained_at = 0.0
                if retried:
                    return False
                retried = True
                continue
            if result <= 0:
                return False  # nothing taken (a non-blocking stream): not played, not reported
            data = data[result * frame_bytes :]
        # The card plays what it holds, then starves: that moment is where an underrun's gap starts.
        try:
            queued = self._stream.buffer_size - max(0, int(self._stream.pcm.avail()))
        except alsaaudio.ALSAAudioError:
            queued = self._stream.period
        self._drained_at = time.monotonic() + queued / AUDIO_SAMPLE_RATE
        return True

    def _report(self, mono: np.ndarray) -> None:
        """What the card played, to the reference tap (the echo canceller's far end)."""
        tap = self._tap
        if tap is None or not len(mono):
            return
        try:
            tap(mono)
        except Exception:
            if not self._tap_failed:  # once, not fifty times a second
                self._tap_failed = True
                log.exception("reference tap of %s failed", self.device.device_id)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT)


class AlsaMixerVolume(HardwareVolume):
    """A simple mixer element's playback volume (pyalsaaudio's Mixer), in the kiosk's percent.

    Where the element has a dB range the percent follows kiosk.media.volume's loudness curve in dB
    (a linear percent of a dB range, as pyalsaaudio's PERCENTAGE units give, is inaudible below half);
    elsewhere the element's own percent is used."""

    def __init__(self, control: str, ctl_device: str) -> None:
        self.name = f"{control} on {ctl_device}"
        try:
            with _alsa().quiet():
                self._mixer = alsaaudio.Mixer(control=control, device=ctl_device)
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceError(ctl_device, f"no mixer element {control!r}: {exc}") from None
        self._db_range: tuple[int, int] | None = None
        try:
            low, high = self._mixer.getrange(units=alsaaudio.VOLUME_UNITS_DB)
            if high > low:
                self._db_range = (int(low), int(high))
        except alsaaudio.ALSAAudioError:
            pass  # no dB scale: percent of the raw range
        self._percent: int | None = None

    def get(self) -> int:
        if self._percent is not None:
            return self._percent
        values = self._mixer.getvolume(units=alsaaudio.VOLUME_UNITS_PERCENTAGE)
        return round(sum(values) / len(values)) if values else 0

    def set(self, percent: int) -> None:
        percent = max(0, min(100, percent))
        try:
            if self._db_range is not None:
                low, high = self._db_range  # hundredths of a dB
                top = min(high, 0)
                value = low if percent == 0 else round(top + 100 * level_to_db(percent, (low - top) / 100))
                self._mixer.setvolume(max(low, min(high, value)), units=alsaaudio.VOLUME_UNITS_DB)
            else:
                self._mixer.setvolume(percent, units=alsaaudio.VOLUME_UNITS_PERCENTAGE)
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceError(self.name, f"cannot set the volume: {exc}") from None
        self._percent = percent

    def close(self) -> None:
        with contextlib.suppress(alsaaudio.ALSAAudioError):
            self._mixer.close()


def ctl_for_pcm(pcm: str) -> str | None:
    """The control device of a playback PCM's card: `plughw:CARD=X,DEV=0` -> `hw:CARD=X`,
    `hw:1,0` -> `hw:1`, `default` -> `default`; None when the name does not say (a plugin of the
    configuration, bluealsa)."""
    if pcm == "default":
        return "default"
    prefix, _, args = pcm.partition(":")
    if prefix not in ("hw", "plughw", "default", "hdmi", "sysdefault", "front", "iec958"):
        return None
    for part in args.split(","):
        key, _, value = part.partition("=")
        if value and key.upper() == "CARD":
            return f"hw:CARD={value}"
        if not value and key:
            return f"hw:{key}"  # positional: the card comes first
    return None


def resolve_auto(section: AudioSection, cards: list[SoundCard]) -> AudioSection:
    """`section` with each "auto" PCM replaced by the one suiting the cards present (modes with no
    card for them are left out; an "auto" microphone with none becomes "", no microphone)."""
    needs = section.capture == "auto" or any(
        "auto" in (spec.playback, spec.capture) for spec in section.modes.values()
    )
    if not needs:
        return section
    proposal = propose_audio(cards)
    speaker = proposal.modes.get("SPEAKER")
    modes: dict[AudioMode, AudioModeDevice] = {}
    for mode, spec in section.modes.items():
        playback, capture = spec.playback, spec.capture
        if playback == "auto":
            chosen = proposal.modes.get(mode) or (speaker if mode == section.default_mode else None)
            if chosen is None:
                log.info("audio.modes.%s: no sound card for it now", mode)
                continue
            playback = chosen.playback
            spec = dataclasses.replace(spec, label=spec.label or chosen.label)
        if capture == "auto":
            capture = proposal.capture
        modes[mode] = dataclasses.replace(spec, playback=playback, capture=capture)
    capture = proposal.capture if section.capture == "auto" else section.capture
    for note in proposal.notes:
        log.info("audio: %s", note)
    return dataclasses.replace(section, capture=capture, modes=modes)


class AlsaAudio(MediaDevices):
    """The audio devices of `[audio]` that are present now, and opening them. No cameras.

    "auto" PCMs in the section are resolved once, here, from the sound cards present (`cards`, by
    default the kernel's list)."""

    def __init__(self, section: AudioSection, cards: list[SoundCard] | None = None) -> None:
        section = resolve_auto(section, read_cards() if cards is None else cards)
        self.section = section
        # Modes in fallback order; configured modes left out of it come last.
        ordered = [m for m in section.fallback_order if m in section.modes]
        ordered += [m for m in AUDIO_MODES if m in section.modes and m not in ordered]
        self._modes = ordered

    @staticmethod
    def output_id(mode: str) -> str:
        return f"alsa-out:{mode}"

    @staticmethod
    def input_id(pcm: str) -> str:
        return f"alsa-in:{pcm}"

    def _configured_outputs(self) -> list[tuple[MediaDeviceInfo, str]]:
        outputs = []
        for mode in self._modes:
            spec = self.section.modes[mode]
            label = spec.label or f"{mode.title()} ({spec.playback})"
            outputs.append(
                (MediaDeviceInfo(self.output_id(mode), label, "audiooutput", audio_mode=mode), spec.playback)
            )
        return outputs

    def _configured_inputs(self) -> list[tuple[MediaDeviceInfo, str]]:
        # The default microphone first: the session opens the first input it is offered.
        inputs: list[tuple[MediaDeviceInfo, str]] = []
        if self.section.capture:
            inputs.append(
                (
                    MediaDeviceInfo(
                        self.input_id(self.section.capture),
                        f"Microphone ({self.section.capture})",
                        "audioinput",
                    ),
                    self.section.capture,
                )
            )
        for mode in self._modes:
            spec = self.section.modes[mode]
            if spec.capture and all(pcm != spec.capture for _, pcm in inputs):
                label = f"{spec.label or mode.title()} microphone ({spec.capture})"
                inputs.append(
                    (MediaDeviceInfo(self.input_id(spec.capture), label, "audioinput"), spec.capture)
                )
        return inputs

    def list_devices(self) -> list[MediaDeviceInfo]:
        alsa = _alsa()
        present = [d for d, pcm in self._configured_inputs() if alsa.probe(pcm, capture=True) is None]
        present += [d for d, pcm in self._configured_outputs() if alsa.probe(pcm, capture=False) is None]
        return present

    def audio_modes(self) -> list[str]:
        """Present modes in the configured fallback order (the base class uses AUDIO_MODES order)."""
        return [d.audio_mode for d in self.audio_outputs() if d.audio_mode]

    def _mode_spec(self, mode: str | None) -> AudioModeDevice | None:
        """`[audio.modes.<mode>]`, if `mode` names a configured one."""
        if mode is None:
            return None
        try:
            return self.section.modes.get(AudioMode(mode))
        except ValueError:  # not a mode at all ("")
            return None

    def input_for_mode(self, mode: str) -> MediaDeviceInfo | None:
        """The microphone to use in `mode`: its own capture PCM if configured and present, else the default."""
        spec = self._mode_spec(mode)
        inputs = {d.device_id: d for d in self.audio_inputs()}
        if spec is not None and spec.capture and self.input_id(spec.capture) in inputs:
            return inputs[self.input_id(spec.capture)]
        return inputs.get(self.input_id(self.section.capture))

    def _pcm_for(
        self, device_id: str, configured: list[tuple[MediaDeviceInfo, str]]
    ) -> tuple[MediaDeviceInfo, str]:
        for device, pcm in configured:
            if device.device_id == device_id:
                return device, pcm
        raise DeviceError(device_id, "no such ALSA device in the configuration")

    def open_camera(self, device_id: str) -> CameraSource:
        raise DeviceError(device_id, "the ALSA backend has no cameras")

    def open_microphone(self, device_id: str) -> AlsaMicrophone:
        device, pcm = self._pcm_for(device_id, self._configured_inputs())
        return AlsaMicrophone(device, pcm, self.section.period_ms)

    def open_speaker(self, device_id: str) -> AlsaSpeaker:
        device, pcm = self._pcm_for(device_id, self._configured_outputs())
        return AlsaSpeaker(device, pcm, self.section.period_ms)

    def output_busy(self, device_id: str) -> bool:
        for device, pcm in self._configured_outputs():
            if device.device_id == device_id:
                return _alsa().open_error(pcm, capture=False) == -errno.EBUSY
        return False

    def shares_substream(self, device_id: str, other_id: str) -> bool | None:
        pcms = {device.device_id: pcm for device, pcm in self._configured_outputs()}
        if device_id not in pcms or other_id not in pcms:
            return None
        # The same PCM is the same substream; different names may still reach one card.
        return True if pcms[device_id] == pcms[other_id] else None

    def hardware_volume(self, device_id: str) -> HardwareVolume | None:
        """The mode's mixer element: the configured one, or with "auto" the first of the usual
        playback elements its card has; None for "none" or a card with none (software gain)."""
        mode = next((d.audio_mode for d, _ in self._configured_outputs() if d.device_id == device_id), None)
        spec = self._mode_spec(mode)
        if spec is None or spec.mixer == "none":
            return None
        ctl = spec.mixer_device or ctl_for_pcm(spec.playback)
        if ctl is None:
            log.info("audio.modes.%s: no control device known for %r: software volume", mode, spec.playback)
            return None
        if spec.mixer != "auto":
            return AlsaMixerVolume(spec.mixer, ctl)  # raises DeviceError naming what is missing
        try:
            with _alsa().quiet():
                present = alsaaudio.mixers(device=ctl)
        except alsaaudio.ALSAAudioError as exc:
            log.info("audio.modes.%s: no mixer on %s (%s): software volume", mode, ctl, exc)
            return None
        for control in PLAYBACK_CONTROLS:
            if control in present:
                try:
                    return AlsaMixerVolume(control, ctl)
                except DeviceError:
                    continue
        log.info("audio.modes.%s: %s has no playback volume element: software volume", mode, ctl)
        return None
