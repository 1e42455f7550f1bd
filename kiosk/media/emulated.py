"""The emulated device: test-pattern cameras, a tone microphone, discarding or recording speakers.

Used on machines with no camera, sound card or GPIO (CI, a developer's laptop, the demo). Devices can
be plugged and unplugged at run time, so device loss and return can be exercised without hardware.

The sound devices keep the constraints of a real card (docs/device.md, "The emulation"):
- a substream opens once at a time: a second open of a held output or microphone fails at once with
  DeviceBusyError, as a `hw`/`plughw` PCM does with alsa-lib's stock `defaults.pcm.nonblock 1`
  (pcm_hw.c opens the device O_NONBLOCK and the kernel answers EBUSY), or, with
  `nonblocking_open=False` (a config with `defaults.pcm.nonblock 0`), waits until the holder closes
  it, as the kernel's snd_pcm_open sleeps on a busy substream; two outputs may share one substream
  (`shared_substreams`), as two modes mapped to the same card do;
- an open or close made on a thread running an event loop is recorded (`opened_on_loop`): a real
  open can block, and a blocked loop stops the call and starves the watchdog;
- outputs may have a hardware volume control (a mixer element), which scales what they play; the
  others are played at their software gain.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
import wave
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

from kiosk.media.aec import ReferenceCallback, ReferenceMixer
from kiosk.media.devices import (
    AUDIO_FRAME_SAMPLES,
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
from kiosk.media.pattern import TestPattern
from kiosk.media.sample_clock import SampleClock

OPENED_SPEAKERS_KEPT = 64  # the newest speakers opened, for tests and the demo to inspect
# Outputs that have a hardware volume control; the headphones (say, a plain USB DAC) have none.
MIXER_OUTPUTS = ("emulated-speaker", "emulated-earpiece")
DEFAULT_MIXER_PERCENT = 100


def _on_event_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
        if not self._closed:
            self._closed = True
            self._owner.open_cameras.discard(self.device.device_id)


VOICE_LOOP_SECONDS = 4.0  # every modulation below repeats a whole number of times in it


@functools.lru_cache(maxsize=1)
def speech_like_voice(pitch_hz: float = 140.0, formant_scale: float = 1.0) -> np.ndarray:
    """Four seconds of a synthetic voice, looping without a click: a glottal buzz whose pitch wanders
    around `pitch_hz` (a whole number of cycles in the loop), through three formants that glide as
    vowels do, in syllables four times a second.

    Not a tone, because what a call does with a microphone depends on it sounding like speech:
    Opus' voice activity detector soon takes a steady tone for background noise and then codes no
    in-band FEC for it, so a tone would hide how a lossy network sounds. Also the test signal for
    the speech-quality figure (bench/network.py).
    """
    rate = AUDIO_SAMPLE_RATE
    t = np.arange(int(rate * VOICE_LOOP_SECONDS)) / rate
    coarse = np.arange(int(1000 * VOICE_LOOP_SECONDS)) / 1000  # the formants change slowly: per ms
    pitch = pitch_hz + 30 * np.sin(2 * math.pi * 0.75 * t) + 15 * np.sin(2 * math.pi * 2.25 * t)
    pitch_coarse = (
        pitch_hz + 30 * np.sin(2 * math.pi * 0.75 * coarse) + 15 * np.sin(2 * math.pi * 2.25 * coarse)
    )
    phase = 2 * math.pi * np.cumsum(pitch) / rate
    # Centre and width, Hz: an open vowel (a higher voice's formants sit higher).
    formants = tuple((c * formant_scale, w) for c, w in ((700.0, 130.0), (1220.0, 70.0), (2600.0, 160.0)))
    voice = np.zeros_like(t)
    for harmonic in range(1, 40):
        frequency = harmonic * pitch_coarse
        gain = sum(
            1 / (1 + ((frequency - centre * (1 + 0.15 * np.sin(2 * math.pi * 4 * coarse + n))) / width) ** 2)
            for n, (centre, width) in enumerate(formants)
        )
        voice += np.repeat(gain, rate // 1000) * np.sin(harmonic * phase) / math.sqrt(harmonic)
    syllables = 0.2 + 0.8 * np.abs(np.sin(2 * math.pi * 2 * t))
    voice = voice / np.max(np.abs(voice)) * syllables * 0.5 * 32767
    return voice.astype(np.int16)


def second_voice() -> np.ndarray:
    """Another synthetic voice, higher (about 215 Hz, formants 18 % up): the other side of a measured
    call speaks it, so that each direction is told from the other (the mouth-to-ear and speech-quality
    figures) and an echo canceller does not take one talker for the other's echo, as it would with
    the same waveform coming both ways."""
    return speech_like_voice(pitch_hz=215.0, formant_scale=1.18)


class EmulatedMicrophone(MicrophoneSource):
    """A synthetic voice (speech_like_voice), a sine tone, or a sound file, played in a loop."""

    def __init__(
        self, owner: EmulatedDevices, device: MediaDeviceInfo, frequency: float, sound_file: Path | None
    ):
        self.device = device
        self._owner = owner
        self._pacer = _Pacer(AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE)
        self._closed = False
        self._samples = np.zeros(0, dtype=np.int16)
        self._position = 0
        # When each frame was produced: with the owner's speaker_dir, saved there on close as
        # microphone.clock.json, for the mouth-to-ear figure (kiosk/netlab/mouth_to_ear.py).
        # (Kept only then: a clock point a frame would grow without end in a kiosk left running.)
        self.clock = SampleClock(AUDIO_SAMPLE_RATE) if owner.speaker_dir is not None else None
        self._produced = 0
        owner._acquire(device.device_id, self)
        try:
            self._samples = self._load(frequency, sound_file)
        except DeviceError:
            owner._release(device.device_id, self)
            raise

    @staticmethod
    def _load(frequency: float, sound_file: Path | None) -> np.ndarray:
        if sound_file is not None:
            return _load_sound(sound_file)
        if frequency <= 0:
            return speech_like_voice()
        # One second of tone whose length is a whole number of periods, so it loops without a click.
        n = AUDIO_SAMPLE_RATE
        t = np.arange(n) / AUDIO_SAMPLE_RATE
        return (0.3 * 32767 * np.sin(2 * math.pi * round(frequency) * t)).astype(np.int16)

    async def next_frame(self) -> av.AudioFrame:
        await self._pacer.wait()
        if self._closed or not self._owner.is_present(self.device.device_id):
            raise DeviceError(self.device.device_id, "microphone disconnected")
        n, start = AUDIO_FRAME_SAMPLES, self._position
        if self.clock is not None:
            self.clock.mark(time.monotonic(), self._produced)
        self._produced += n
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
        if self._closed:
            return
        self._closed = True
        self._owner._release(self.device.device_id, self)
        if self._owner.speaker_dir is not None and self.clock is not None and self.clock.points:
            self._owner.speaker_dir.mkdir(parents=True, exist_ok=True)
            self.clock.save(self._owner.speaker_dir / "microphone.clock.json")


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
    """Discards audio, or writes each participant's audio as played to `<dir>/<uid>.wav`: scaled by
    the output's hardware volume, if it has one, and by the software gain."""

    def __init__(
        self, device: MediaDeviceInfo, record_dir: Path | None, owner: EmulatedDevices | None = None
    ) -> None:
        self.device = device
        self._owner = owner
        self._record_dir = record_dir
        self._files: dict[str, wave.Wave_write] = {}
        self._clocks: dict[str, SampleClock] = {}  # when each file's samples were played
        self.frames_written = 0
        self.closed = False
        self._reference: ReferenceMixer | None = None
        if owner is not None:
            owner._acquire(device.device_id, self)

    def _level(self) -> float:
        """What the output scales the signal by: its mixer (if any) times the software gain."""
        mixer = 1.0
        if self._owner is not None and self.device.device_id in self._owner.mixer_percent:
            mixer = self._owner.mixer_percent[self.device.device_id] / 100
        return mixer * self.gain

    def set_reference_tap(self, callback: ReferenceCallback | None) -> None:
        """Report what is "played" (all participants mixed, mono) to `callback`, e.g. an echo canceller."""
        self._reference = ReferenceMixer(callback) if callback is not None else None

    def write(self, participant_uid: str, frame: av.AudioFrame) -> None:
        if self.closed:
            raise DeviceError(self.device.device_id, "write to a closed speaker")
        if self._owner is not None and self.device.device_id in self._owner.broken:
            raise DeviceError(self.device.device_id, "write failed: Input/output error")
        self.frames_written += 1
        if self.gain != 1.0:
            frame = _scaled(frame, self.gain)  # the reference is what is played: after the gain
        if self._reference is not None:
            self._reference.add(participant_uid, frame)
        if self._record_dir is None:
            return
        level = self._level()
        if level != self.gain:
            frame = _scaled(frame, level / self.gain if self.gain else 0.0)  # the mixer's part
        out = self._files.get(participant_uid)
        if out is None:
            self._record_dir.mkdir(parents=True, exist_ok=True)
            out = wave.open(str(self._record_dir / f"{participant_uid}.wav"), "wb")
            out.setnchannels(len(frame.layout.channels))
            out.setsampwidth(2)
            out.setframerate(frame.sample_rate)
            self._files[participant_uid] = out
            self._clocks[participant_uid] = SampleClock(frame.sample_rate)
        self._clocks[participant_uid].mark(time.monotonic(), out.getnframes())
        out.writeframes(frame.to_ndarray().astype(np.int16).tobytes())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for out in self._files.values():
            out.close()
        self._files.clear()
        if self._record_dir is not None:
            for uid, clock in self._clocks.items():
                clock.save(self._record_dir / f"{uid}.clock.json")  # beside <uid>.wav
        self._clocks.clear()
        if self._owner is not None:
            self._owner._release(self.device.device_id, self)


def _scaled(frame: av.AudioFrame, level: float) -> av.AudioFrame:
    if frame.format.name not in ("s16", "s16p"):
        return frame  # aiortc decodes to s16; anything else is played as it is
    samples = frame.to_ndarray().astype(np.float32) * level
    out = av.AudioFrame.from_ndarray(
        np.clip(samples, -32768, 32767).astype(np.int16), format=frame.format.name, layout=frame.layout.name
    )
    out.sample_rate = frame.sample_rate
    out.pts = frame.pts
    if frame.time_base is not None:
        out.time_base = frame.time_base
    return out


class EmulatedMixer(HardwareVolume):
    """An emulated output's volume control: a level kept by the device, as a card keeps its controls."""

    def __init__(self, owner: EmulatedDevices, device_id: str) -> None:
        self._owner = owner
        self._device_id = device_id
        self.name = f"emulated mixer of {device_id}"

    def get(self) -> int:
        return self._owner.mixer_percent[self._device_id]

    def set(self, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise DeviceError(self._device_id, f"volume {percent} out of range")
        self._owner.mixer_percent[self._device_id] = percent


class EmulatedDevices(MediaDevices):
    """Two cameras (front, back), one microphone, speaker/earpiece/headphones outputs.

    `plug()` and `unplug()` add and remove devices at run time (a Bluetooth headset switched on,
    a USB camera pulled out); `screen=True` adds a shareable screen source. The sound devices are
    exclusive per substream (see the module's docstring): `nonblocking_open`, `shared_substreams`
    (device id -> the device id whose substream it uses) and `open_wait_timeout` (a blocking open gives
    up after this many seconds instead of waiting for ever: a test's guard, not a real behaviour).
    """

    def __init__(
        self,
        *,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        tone_hz: float = 0.0,  # the microphone's tone; 0: a synthetic voice
        sound_file: Path | None = None,
        speaker_dir: Path | None = None,
        screen: bool = False,
        nonblocking_open: bool = True,
        shared_substreams: dict[str, str] | None = None,
        mixer_outputs: Iterable[str] = MIXER_OUTPUTS,
        open_wait_timeout: float | None = None,
        camera_open_seconds: float = 0.0,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        # How long opening a camera takes (a Pi camera's Picamera2() and configure take a good part
        # of a second): the open blocks its thread that long, as the real one does.
        self.camera_open_seconds = camera_open_seconds
        self.tone_hz = tone_hz
        self.sound_file = sound_file
        self.speaker_dir = speaker_dir
        self.screen = screen
        self._devices: list[MediaDeviceInfo] = [
            MediaDeviceInfo("emulated-camera-front", "Emulated camera (front)", "videoinput", facing="front"),
            MediaDeviceInfo("emulated-camera-back", "Emulated camera (back)", "videoinput", facing="back"),
            MediaDeviceInfo("emulated-mic", "Emulated microphone", "audioinput"),
            MediaDeviceInfo("emulated-speaker", "Emulated speaker", "audiooutput", audio_mode="SPEAKER"),
            MediaDeviceInfo("emulated-earpiece", "Emulated handset", "audiooutput", audio_mode="EARPIECE"),
            MediaDeviceInfo(
                "emulated-headphones", "Emulated headphones", "audiooutput", audio_mode="HEADPHONES"
            ),
        ]
        self.opened_speakers: list[EmulatedSpeaker] = []
        self.broken: set[str] = set()
        self.nonblocking_open = nonblocking_open
        self.shared_substreams = dict(shared_substreams or {})
        self.open_wait_timeout = open_wait_timeout
        self.mixer_percent: dict[str, int] = {d: DEFAULT_MIXER_PERCENT for d in mixer_outputs}
        self.opened_on_loop: list[str] = []  # sound devices opened or closed on an event loop's thread
        self.busy_refusals = 0  # opens refused because the substream (or the camera) was held
        self.open_cameras: set[str] = set()  # cameras open now: one user each
        self.camera_opens = 0
        self._holders: dict[str, object] = {}  # substream -> the open source or sink holding it
        self._substreams = threading.Condition()

    # -- exclusive substreams

    def _substream(self, device_id: str) -> str:
        return self.shared_substreams.get(device_id, device_id)

    def _acquire(self, device_id: str, holder: object) -> None:
        if _on_event_loop_thread():
            self.opened_on_loop.append(device_id)
        key = self._substream(device_id)
        with self._substreams:
            if key in self._holders:
                if self.nonblocking_open:
                    self.busy_refusals += 1
                    raise DeviceBusyError(device_id, "cannot open: Device or resource busy")
                if not self._substreams.wait_for(lambda: key not in self._holders, self.open_wait_timeout):
                    self.busy_refusals += 1
                    raise DeviceBusyError(
                        device_id, f"open still blocked on a busy substream after {self.open_wait_timeout} s"
                    )
            self._holders[key] = holder

    def _release(self, device_id: str, holder: object) -> None:
        if _on_event_loop_thread():
            self.opened_on_loop.append(device_id)
        key = self._substream(device_id)
        with self._substreams:
            if self._holders.get(key) is holder:
                del self._holders[key]
                self._substreams.notify_all()

    def output_busy(self, device_id: str) -> bool:
        with self._substreams:
            return self._substream(device_id) in self._holders

    def shares_substream(self, device_id: str, other_id: str) -> bool | None:
        return self._substream(device_id) == self._substream(other_id)

    def hardware_volume(self, device_id: str) -> HardwareVolume | None:
        return EmulatedMixer(self, device_id) if device_id in self.mixer_percent else None

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
        # A camera is acquired by one user at a time, as libcamera does (picamera2's Picamera2()
        # fails with "Camera in use" while another holds it): a second open waits for nothing.
        if device_id in self.open_cameras:
            self.busy_refusals += 1
            raise DeviceBusyError(device_id, "camera in use: it can be open once at a time")
        self.open_cameras.add(device_id)  # acquired from the start of the open, as libcamera does
        if self.camera_open_seconds:
            time.sleep(self.camera_open_seconds)
        hue = 90 if device.facing == "back" else 0
        camera = EmulatedCamera(self, device, self.width, self.height, self.fps, hue)
        self.camera_opens += 1
        return camera

    def open_microphone(self, device_id: str) -> MicrophoneSource:
        return EmulatedMicrophone(self, self.find(device_id, "audioinput"), self.tone_hz, self.sound_file)

    def open_speaker(self, device_id: str) -> SpeakerSink:
        device = self.find(device_id, "audiooutput")
        speaker = EmulatedSpeaker(device, self.speaker_dir / device_id if self.speaker_dir else None, self)
        self.opened_speakers.append(speaker)
        del self.opened_speakers[:-OPENED_SPEAKERS_KEPT]  # a long-running emulated device stays bounded
        return speaker

    def has_screen(self) -> bool:
        return self.screen

    def open_screen(self) -> CameraSource:
        if not self.screen:
            return super().open_screen()
        device = MediaDeviceInfo("emulated-screen", "Emulated screen", "videoinput")
        return _ScreenCamera(self, device, self.width, self.height, min(self.fps, 15.0), hue=180)


class _ScreenCamera(EmulatedCamera):
    def _present(self) -> bool:
        return True  # the screen cannot be unplugged
