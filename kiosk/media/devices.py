"""The interfaces every media backend implements (emulated here; ALSA, V4L2 and picamera2 later).

A backend is a `MediaDevices`: it lists what is present and opens sources and sinks by device id.
Sources pace themselves: `next_frame()` returns when the next frame is due, so a track that reads
from one never needs its own clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import av

# The four audio modes, in their default fallback order (defined in kiosk.audio_modes; named here too
# for the backends).
from kiosk.audio_modes import AUDIO_MODES

AUDIO_SAMPLE_RATE = 48000
AUDIO_FRAME_SAMPLES = 960  # 20 ms at 48 kHz

DeviceKind = Literal["videoinput", "audioinput", "audiooutput"]


class DeviceError(Exception):
    """A device is missing, refused, or failed while in use."""

    def __init__(self, device_id: str, message: str) -> None:
        super().__init__(f"{device_id}: {message}")
        self.device_id = device_id


class DeviceBusyError(DeviceError):
    """The device is held by another user (a sound card's substream opens once at a time)."""


@dataclass(frozen=True)
class MediaDeviceInfo:
    """One device, shaped like the browser's MediaDeviceInfo the Web document returns."""

    device_id: str
    label: str
    kind: DeviceKind
    # For audio outputs: the audio mode this device serves (SPEAKER, EARPIECE, ...), if any.
    audio_mode: str | None = None
    # For cameras: "front" or "back" when known, so switch_camera() can flip between them.
    facing: str | None = None


class CameraSource(ABC):
    """An open camera. `next_frame()` waits for and returns the next picture."""

    device: MediaDeviceInfo

    @abstractmethod
    async def next_frame(self) -> av.VideoFrame:
        """Return the next frame; raise DeviceError if the camera failed or vanished."""

    @abstractmethod
    def close(self) -> None: ...


class MicrophoneSource(ABC):
    """An open microphone delivering 20 ms mono s16 frames at 48 kHz."""

    device: MediaDeviceInfo

    @abstractmethod
    async def next_frame(self) -> av.AudioFrame: ...

    @abstractmethod
    def close(self) -> None: ...


class SpeakerSink(ABC):
    """An open playback device; `write` takes decoded remote audio, one call per frame per participant.

    Opening and closing one may block (a sound card's open waits for a busy substream with some
    configurations; closing drains what is queued): do both off the event loop."""

    device: MediaDeviceInfo
    # Software volume, 0.0-1.0, applied to what is played (for outputs with no hardware mixer).
    gain: float = 1.0

    @abstractmethod
    def write(self, participant_uid: str, frame: av.AudioFrame) -> None: ...

    def set_gain(self, gain: float) -> None:
        self.gain = min(1.0, max(0.0, gain))

    @abstractmethod
    def close(self) -> None: ...


class HardwareVolume(ABC):
    """An output's own volume control (an ALSA mixer element), in percent."""

    name: str  # for messages: "PCM on hw:CARD=Headphones"

    @abstractmethod
    def get(self) -> int: ...

    @abstractmethod
    def set(self, percent: int) -> None: ...

    def close(self) -> None:  # noqa: B027 (most controls hold nothing)
        """Release what the control holds."""


class MediaDevices(ABC):
    """A device backend: what is present now, and how to open it."""

    @abstractmethod
    def list_devices(self) -> list[MediaDeviceInfo]: ...

    def video_inputs(self) -> list[MediaDeviceInfo]:
        return [d for d in self.list_devices() if d.kind == "videoinput"]

    def audio_inputs(self) -> list[MediaDeviceInfo]:
        return [d for d in self.list_devices() if d.kind == "audioinput"]

    def audio_outputs(self) -> list[MediaDeviceInfo]:
        return [d for d in self.list_devices() if d.kind == "audiooutput"]

    def audio_modes(self) -> list[str]:
        """The audio modes whose output device is present now, in fallback order."""
        present = {d.audio_mode for d in self.audio_outputs() if d.audio_mode}
        return [mode.value for mode in AUDIO_MODES if mode in present]

    def output_for_mode(self, mode: str) -> MediaDeviceInfo | None:
        return next((d for d in self.audio_outputs() if d.audio_mode == mode), None)

    def input_for_mode(self, mode: str) -> MediaDeviceInfo | None:
        """The microphone that goes with an audio mode (a handset's own), or None for "keep the
        current one"."""
        return None

    def output_busy(self, device_id: str) -> bool:
        """True when the output cannot be opened now because someone holds it (our own open sink
        included). Must not block."""
        return False

    def shares_substream(self, device_id: str, other_id: str) -> bool | None:
        """Whether two outputs play through the same exclusive substream (two modes on one card);
        None when the backend cannot tell."""
        return None

    def hardware_volume(self, device_id: str) -> HardwareVolume | None:
        """The output's own volume control, or None when it has none (software gain is used)."""
        return None

    def find(self, device_id: str, kind: DeviceKind) -> MediaDeviceInfo:
        for device in self.list_devices():
            if device.device_id == device_id and device.kind == kind:
                return device
        raise DeviceError(device_id, f"no such {kind} device")

    @abstractmethod
    def open_camera(self, device_id: str) -> CameraSource: ...

    @abstractmethod
    def open_microphone(self, device_id: str) -> MicrophoneSource: ...

    @abstractmethod
    def open_speaker(self, device_id: str) -> SpeakerSink:
        """Open an output; raises DeviceBusyError if it is held. May block: call it off the loop."""

    def has_screen(self) -> bool:
        """Whether `open_screen` can give a source (the UI offers screen sharing only then)."""
        return False

    def open_screen(self) -> CameraSource:
        """A source of the device's own screen, for screen sharing; most kiosks have none."""
        raise DeviceError("screen", "this device has no screen source to share")
