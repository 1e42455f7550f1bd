"""The emulated device: test-pattern cameras, a tone microphone, discarding or recording speakers.

Used on machines with no camera, sound card or GPIO (CI, a developer's laptop, the demo). Devices can
be plugged and unplugged at run time, so device loss and return can be exercised without hardware.
"""

from __future__ import annotations

import asyncio
import math
import time
import wave
from pathlib import Path

import av
import numpy as np

from kiosk.media.aec import ReferenceCallback, ReferenceMixer
from kiosk.media.devices import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE,
    CameraSource,
    DeviceError,
    MediaDeviceInfo,
    MediaDevices,
    MicrophoneSource,
    SpeakerSink,
)
from kiosk.media.pattern import TestPattern

OPENED_SPEAKERS_KEPT = 64  # the newest speakers opened, for tests and the demo to inspect


class _Pacer:
    """Wall-clock pacing: `wait()` returns when item n is due, skipping ahead if we fell behind."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.start = time.monotonic()
        self.count = 0

    async def wait(self) -> None:
        due = self.start + self.count * self.interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.2:
            # Far behind (the loop was busy): restart the clock rather than burst.
            self.start = time.monotonic() - self.count * self.interval
        self.count += 1


class EmulatedCamera(CameraSource):
    def __init__(
        self, owner: EmulatedDevices, device: MediaDeviceInfo, width: int, height: int, fps: float, hue: int
    ) -> None:
        self.device = device
        self._owner = owner
        self._pattern = TestPattern(width, height, hue=hue)
        self._pacer = _Pacer(1.0 / fps)
        self._closed = False

    def _present(self) -> bool:
        return self._owner.is_present(self.device.device_id)

    async def next_frame(self) -> av.VideoFrame:
        await self._pacer.wait()
        if self._closed or not self._present():
            raise DeviceError(self.device.device_id, "camera disconnected")
        # The capture stamps pts; the source only draws.
        return self._pattern.draw(self._pacer.count)

    def close(self) -> None:
        self._closed = True


class ToneMicrophone(MicrophoneSource):
    """A sine tone, or the samples of a sound file played in a loop."""

    def __init__(
        self, owner: EmulatedDevices, device: MediaDeviceInfo, frequency: float, sound_file: Path | None
    ):
        self.device = device
        self._owner = owner
        self._pacer = _Pacer(AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE)
        self._closed = False
        if sound_file is not None:
            self._samples = _load_sound(sound_file)
        else:
            # One second of tone whose length is a whole number of periods, so it loops without a click.
            n = AUDIO_SAMPLE_RATE
            t = np.arange(n) / AUDIO_SAMPLE_RATE
            self._samples = (0.3 * 32767 * np.sin(2 * math.pi * round(frequency) * t)).astype(np.int16)
        self._position = 0

    async def next_frame(self) -> av.AudioFrame:
        await self._pacer.wait()
        if self._closed or not self._owner.is_present(self.device.device_id):
            raise DeviceError(self.device.device_id, "microphone disconnected")
        n, start = AUDIO_FRAME_SAMPLES, self._position
        end = start + n
        if end <= len(self._samples):
            chunk = self._samples[start:end]
        else:  # the loop point falls inside this frame
            chunk = np.concatenate((self._samples[start:], self._samples[: end - len(self._samples)]))
        self._position = end % len(self._samples)
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        return frame

    def close(self) -> None:
        self._closed = True


def _load_sound(path: Path) -> np.ndarray:
    """Decode a sound file to 48 kHz mono s16 samples."""
    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as exc:
        raise DeviceError(str(path), f"cannot open sound file: {exc}") from exc
    resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_SAMPLE_RATE)
    chunks = []
    with container:
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise DeviceError(str(path), "sound file has no audio")
    return np.concatenate(chunks).astype(np.int16)


class EmulatedSpeaker(SpeakerSink):
    """Discards audio, or writes each participant's decoded audio to `<dir>/<uid>.wav`."""

    def __init__(
        self, device: MediaDeviceInfo, record_dir: Path | None, owner: EmulatedDevices | None = None
    ) -> None:
        self.device = device
        self._owner = owner
        self._record_dir = record_dir
        self._files: dict[str, wave.Wave_write] = {}
        self.frames_written = 0
        self._reference: ReferenceMixer | None = None

    def set_reference_tap(self, callback: ReferenceCallback | None) -> None:
        """Report what is "played" (all participants mixed, mono) to `callback`, e.g. an echo canceller."""
        self._reference = ReferenceMixer(callback) if callback is not None else None

    def write(self, participant_uid: str, frame: av.AudioFrame) -> None:
        if self._owner is not None and self.device.device_id in self._owner.broken:
            raise DeviceError(self.device.device_id, "write failed: Input/output error")
        self.frames_written += 1
        if self._reference is not None:
            self._reference.add(participant_uid, frame)
        if self._record_dir is None:
            return
        out = self._files.get(participant_uid)
        if out is None:
            self._record_dir.mkdir(parents=True, exist_ok=True)
            out = wave.open(str(self._record_dir / f"{participant_uid}.wav"), "wb")
            out.setnchannels(len(frame.layout.channels))
            out.setsampwidth(2)
            out.setframerate(frame.sample_rate)
            self._files[participant_uid] = out
        out.writeframes(frame.to_ndarray().astype(np.int16).tobytes())

    def close(self) -> None:
        for out in self._files.values():
            out.close()
        self._files.clear()


class EmulatedDevices(MediaDevices):
    """Two cameras (front, back), one microphone, speaker/earpiece/headphones outputs.

    `plug()` and `unplug()` add and remove devices at run time (a Bluetooth headset switched on,
    a USB camera pulled out); `screen=True` adds a shareable screen source.
    """

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        tone_hz: float = 440.0,
        sound_file: Path | None = None,
        speaker_dir: Path | None = None,
        screen: bool = False,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.tone_hz = tone_hz
        self.sound_file = sound_file
        self.speaker_dir = speaker_dir
        self.screen = screen
        self._devices: list[MediaDeviceInfo] = [
            MediaDeviceInfo("emulated-camera-front", "Emulated camera (front)", "videoinput", facing="front"),
            MediaDeviceInfo("emulated-camera-back", "Emulated camera (back)", "videoinput", facing="back"),
            MediaDeviceInfo("emulated-mic", "Emulated microphone (tone)", "audioinput"),
            MediaDeviceInfo("emulated-speaker", "Emulated speaker", "audiooutput", audio_mode="SPEAKER"),
            MediaDeviceInfo("emulated-earpiece", "Emulated handset", "audiooutput", audio_mode="EARPIECE"),
            MediaDeviceInfo(
                "emulated-headphones", "Emulated headphones", "audiooutput", audio_mode="HEADPHONES"
            ),
        ]
        self.opened_speakers: list[EmulatedSpeaker] = []
        self.broken: set[str] = set()

    def list_devices(self) -> list[MediaDeviceInfo]:
        return list(self._devices)

    def is_present(self, device_id: str) -> bool:
        return any(d.device_id == device_id for d in self._devices)

    def plug(self, device: MediaDeviceInfo) -> None:
        if not self.is_present(device.device_id):
            self._devices.append(device)

    def break_device(self, device_id: str, broken: bool = True) -> None:
        """Make a device fail in use while it stays listed (an output that opens but cannot play)."""
        if broken:
            self.broken.add(device_id)
        else:
            self.broken.discard(device_id)

    def unplug(self, device_id: str) -> MediaDeviceInfo:
        device = next((d for d in self._devices if d.device_id == device_id), None)
        if device is None:
            raise DeviceError(device_id, "not present")
        self._devices.remove(device)
        return device

    def open_camera(self, device_id: str) -> CameraSource:
        device = self.find(device_id, "videoinput")
        hue = 90 if device.facing == "back" else 0
        return EmulatedCamera(self, device, self.width, self.height, self.fps, hue)

    def open_microphone(self, device_id: str) -> MicrophoneSource:
        return ToneMicrophone(self, self.find(device_id, "audioinput"), self.tone_hz, self.sound_file)

    def open_speaker(self, device_id: str) -> SpeakerSink:
        device = self.find(device_id, "audiooutput")
        speaker = EmulatedSpeaker(device, self.speaker_dir / device_id if self.speaker_dir else None, self)
        self.opened_speakers.append(speaker)
        del self.opened_speakers[:-OPENED_SPEAKERS_KEPT]  # a long-running emulated device stays bounded
        return speaker

    def open_screen(self) -> CameraSource:
        if not self.screen:
            return super().open_screen()
        device = MediaDeviceInfo("emulated-screen", "Emulated screen", "videoinput")
        return _ScreenCamera(self, device, self.width, self.height, min(self.fps, 15.0), hue=180)


class _ScreenCamera(EmulatedCamera):
    def _present(self) -> bool:
        return True  # the screen cannot be unplugged
