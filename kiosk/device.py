"""The device as the config describes it: cameras, audio and audio processing, composed into one
MediaDevices that the Calls SDK uses, like gpiozero composes devices over a pin factory.

`build_devices(config)` picks each backend (real or emulated) from the config; nothing above this
module knows which one it got.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiosk.config import AudioSection, ConfigError, KioskConfig
from kiosk.media.devices import (
    CameraSource,
    DeviceError,
    MediaDeviceInfo,
    MediaDevices,
    MicrophoneSource,
    SpeakerSink,
)

if TYPE_CHECKING:
    from kiosk.media.alsa import AlsaAudio
    from kiosk.media.cameras import CameraSet

log = logging.getLogger(__name__)


class KioskDevices(MediaDevices):
    """Cameras from one backend, audio from another, and the echo canceller between microphone and
    speaker. Audio modes are offered in the configured fallback order, so when the current output
    vanishes the SDK falls back to the first one still present."""

    def __init__(
        self,
        cameras: MediaDevices | CameraSet,
        audio: MediaDevices,
        fallback_order: list[str],
        processor: object | None = None,
    ) -> None:
        self.cameras = cameras
        self.audio = audio
        self.fallback_order = list(fallback_order)
        self.processor = processor  # kiosk.media.aec.AudioProcessor, when echo cancellation is on

    def list_devices(self) -> list[MediaDeviceInfo]:
        video = [d for d in self.cameras.list_devices() if d.kind == "videoinput"]
        sound = [d for d in self.audio.list_devices() if d.kind != "videoinput"]
        return video + sound

    def audio_modes(self) -> list[str]:
        present = {d.audio_mode for d in self.audio_outputs() if d.audio_mode}
        ordered = [m for m in self.fallback_order if m in present]
        return ordered + sorted(present - set(ordered))

    def input_for_mode(self, mode: str) -> MediaDeviceInfo | None:
        return self.audio.input_for_mode(mode)

    def open_camera(self, device_id: str) -> CameraSource:
        return self.cameras.open_camera(device_id)

    def open_microphone(self, device_id: str) -> MicrophoneSource:
        source = self.audio.open_microphone(device_id)
        if self.processor is None:
            return source
        from kiosk.media.aec import EchoCancelledMicrophone

        return EchoCancelledMicrophone(source, self.processor)

    def open_speaker(self, device_id: str) -> SpeakerSink:
        speaker = self.audio.open_speaker(device_id)
        if self.processor is not None:
            from kiosk.media.aec import connect_reference

            connect_reference(speaker, self.processor)
        return speaker


@dataclass(frozen=True)
class DeviceChoices:
    """What the rest of the endpoint must know about the devices it got."""

    video_codec: str | None  # "H264" when a camera sends its own H.264
    recording_dir: Path


def build_devices(config: KioskConfig) -> tuple[KioskDevices, DeviceChoices]:
    """The configured device; raises ConfigError naming the key when a backend cannot start."""
    from kiosk.media.cameras import CameraSet

    cameras = CameraSet(config.cameras)
    audio_section = config.audio
    audio: MediaDevices
    if audio_section.backend == "alsa":
        from kiosk.media.alsa import AlsaAudio

        try:
            audio = AlsaAudio(audio_section)
        except DeviceError as exc:
            raise ConfigError(f"audio: {exc}") from None
        _require_alsa_devices(audio, audio_section)
    else:
        from kiosk.media.emulated import EmulatedDevices

        audio = EmulatedDevices(
            tone_hz=audio_section.tone_hz,
            sound_file=Path(audio_section.sound_file) if audio_section.sound_file else None,
            speaker_dir=Path(audio_section.speaker_dir) if audio_section.speaker_dir else None,
        )
    processor = None
    if audio_section.echo_cancellation or audio_section.noise_suppression or audio_section.auto_gain_control:
        from kiosk.media.aec import AudioProcessor

        processor = AudioProcessor(
            echo_cancellation=audio_section.echo_cancellation,
            noise_suppression=audio_section.noise_suppression,
            auto_gain_control=audio_section.auto_gain_control,
        )
    passthrough = any(c.h264_passthrough for c in config.cameras)
    devices = KioskDevices(cameras, audio, audio_section.fallback_order, processor)
    return devices, DeviceChoices("H264" if passthrough else None, Path(config.recording.directory))


def _require_alsa_devices(audio: AlsaAudio, section: AudioSection) -> None:
    """A kiosk that cannot hear or cannot be heard should not start as if all were well. Outputs
    may come and go (a headset), but at least one must be there at start."""
    inputs = {d.device_id for d in audio.audio_inputs()}
    if audio.input_id(section.capture) not in inputs:
        raise ConfigError(f"audio.capture: the ALSA capture device {section.capture!r} is not present")
    if not audio.audio_outputs():
        pcms = ", ".join(f"{mode}={spec.playback}" for mode, spec in section.modes.items())
        raise ConfigError(f"audio.modes: none of the playback devices is present ({pcms})")
