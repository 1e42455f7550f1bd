"""The device as the config describes it: cameras, audio and audio processing, composed into one
MediaDevices that the Calls SDK uses, like gpiozero composes devices over a pin factory.

`build_devices(config)` picks each backend (real or emulated) from the config; nothing above this
module knows which one it got.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kiosk.config import ConfigError, KioskConfig
from kiosk.media.aec import AudioProcessor, EchoCancelledMicrophone, connect_reference
from kiosk.media.cameras import CameraSet
from kiosk.media.devices import (
    CameraSource,
    DeviceError,
    HardwareVolume,
    MediaDeviceInfo,
    MediaDevices,
    MicrophoneSource,
    SpeakerSink,
)
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.picamera import picamera_passthrough_available
from kiosk.media.volume import OutputVolume, VolumeLevels

if TYPE_CHECKING:
    # Imported where the alsa backend is chosen: pyalsaaudio needs libasound, and a kiosk on the
    # emulated device never loads it.
    from kiosk.media.alsa import AlsaAudio

log = logging.getLogger(__name__)


class KioskDevices(MediaDevices):
    """Cameras from one backend, audio from another, and the echo canceller between microphone and
    speaker. Audio modes are offered in the configured fallback order, so when the current output
    vanishes the SDK falls back to the first one still present."""

    def __init__(
        self,
        cameras: MediaDevices | CameraSet,
        audio: MediaDevices,
        fallback_order: Sequence[str],
        processor: AudioProcessor | None = None,
        volume: OutputVolume | None = None,
    ) -> None:
        self.cameras = cameras
        self.audio = audio
        self.fallback_order = [str(mode) for mode in fallback_order]  # AudioMode members as plain words
        self.processor = processor  # when echo cancellation, noise suppression or gain control is on
        self.volume = volume  # every output opened plays at its mode's level

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

    def output_busy(self, device_id: str) -> bool:
        return self.audio.output_busy(device_id)

    def shares_substream(self, device_id: str, other_id: str) -> bool | None:
        return self.audio.shares_substream(device_id, other_id)

    def hardware_volume(self, device_id: str) -> HardwareVolume | None:
        return self.audio.hardware_volume(device_id)

    def open_camera(self, device_id: str) -> CameraSource:
        return self.cameras.open_camera(device_id)

    def has_screen(self) -> bool:
        return isinstance(self.cameras, MediaDevices) and self.cameras.has_screen()

    def open_screen(self) -> CameraSource:
        if isinstance(self.cameras, MediaDevices):
            return self.cameras.open_screen()
        return super().open_screen()

    def open_microphone(self, device_id: str) -> MicrophoneSource:
        source = self.audio.open_microphone(device_id)
        if self.processor is None:
            return source
        return EchoCancelledMicrophone(source, self.processor)

    def open_speaker(self, device_id: str) -> SpeakerSink:
        speaker = self.audio.open_speaker(device_id)
        if self.volume is not None:
            self.volume.attach(speaker)
        if self.processor is not None:
            connect_reference(speaker, self.processor)
        return speaker


@dataclass(frozen=True)
class DeviceChoices:
    """What the rest of the endpoint must know about the devices it got."""

    video_codec: str | None  # "H264" when a camera sends its own H.264
    recording_dir: Path
    # Devices the config names that are not there (no microphone on a stock Pi): the kiosk starts
    # anyway, keeps what it has, and shows these.
    problems: tuple[str, ...] = ()


def build_devices(config: KioskConfig) -> tuple[KioskDevices, DeviceChoices]:
    """The configured device; raises ConfigError naming the key when a backend cannot start."""
    cameras = CameraSet(config.cameras)
    audio_section = config.audio
    audio: MediaDevices
    problems: list[str] = []
    if audio_section.backend == "alsa":
        from kiosk.media.alsa import AlsaAudio  # here: see the TYPE_CHECKING import above

        try:
            audio = AlsaAudio(audio_section)
        except DeviceError as exc:
            raise ConfigError(f"audio: {exc}") from None
        problems = _missing_alsa_devices(audio)
    else:
        audio = EmulatedDevices(
            tone_hz=audio_section.tone_hz,
            sound_file=Path(audio_section.sound_file) if audio_section.sound_file else None,
            speaker_dir=Path(audio_section.speaker_dir) if audio_section.speaker_dir else None,
        )
    processor = None
    if audio_section.echo_cancellation or audio_section.noise_suppression or audio_section.auto_gain_control:
        processor = AudioProcessor(
            echo_cancellation=audio_section.echo_cancellation,
            noise_suppression=audio_section.noise_suppression,
            auto_gain_control=audio_section.auto_gain_control,
        )
    passthrough = any(c.h264_passthrough for c in config.cameras)
    if passthrough:  # only where a Pi camera has a hardware H.264 encoder (not on a Pi 5)
        passthrough = picamera_passthrough_available() is True
    levels = VolumeLevels(config.volume_file(), audio_section.volume)
    volume = OutputVolume(audio, levels, audio_section.volume_step)
    devices = KioskDevices(cameras, audio, audio_section.fallback_order, processor, volume)
    for problem in problems:
        log.warning("%s", problem)
    return devices, DeviceChoices(
        "H264" if passthrough else None, Path(config.recording.directory), tuple(problems)
    )


def _missing_alsa_devices(audio: AlsaAudio) -> list[str]:
    """What a person must know when the kiosk cannot hear or be heard, short enough for the home
    screen (the log has the details). Not a reason not to start: a stock Raspberry Pi has no
    microphone, a kiosk that shows and rings beats a dark screen, and outputs come and go."""
    section = audio.section
    problems = []
    inputs = {d.device_id for d in audio.audio_inputs()}
    if not section.capture:
        problems.append("No microphone: the other side will not hear you")
    elif audio.input_id(section.capture) not in inputs:
        log.warning("audio.capture: the ALSA capture device %r is not present", section.capture)
        problems.append(f"No microphone ({section.capture} is not there)")
    if not audio.audio_outputs():
        pcms = ", ".join(f"{mode}={spec.playback}" for mode, spec in section.modes.items()) or "none found"
        log.warning("audio.modes: none of the playback devices is present (%s)", pcms)
        problems.append("No loudspeaker: no playback device is there")
    return problems
