"""Media devices behind small interfaces, with real and emulated backends, and the tracks that carry them."""

from kiosk.media.devices import (
    AUDIO_MODES,
    CameraSource,
    DeviceError,
    MediaDeviceInfo,
    MediaDevices,
    MicrophoneSource,
    SpeakerSink,
)

__all__ = [
    "AUDIO_MODES",
    "CameraSource",
    "DeviceError",
    "MediaDeviceInfo",
    "MediaDevices",
    "MicrophoneSource",
    "SpeakerSink",
]
