"""The Calls SDK: the call-session API of the reference documents, in Python.

    from kiosk.calls import Calls, CallSettingsBuilder, CallEventListener

    calls = Calls("http://127.0.0.1:8080", auth_token=token)
    call_token = await calls.generate_token("my-session")
    settings = CallSettingsBuilder().set_is_audio_only_call(False).set_call_listener(listener).build()
    await calls.start_session(call_token, settings)
    calls.mute_audio(True)
    await calls.end_session()

See docs/api.md for every name and how it maps to the documents.
"""

from kiosk.calls.client import Call, CallLogPage, Calls, GenerateToken
from kiosk.calls.constants import (
    AUDIO_MODE_BLUETOOTH,
    AUDIO_MODE_EARPIECE,
    AUDIO_MODE_HEADPHONES,
    AUDIO_MODE_SPEAKER,
    AVATAR_MODE_CIRCLE,
    AVATAR_MODE_FULLSCREEN,
    AVATAR_MODE_SQUARE,
    MODE_DEFAULT,
    MODE_SINGLE,
    MODE_SPOTLIGHT,
    AspectRatio,
    AudioMode,
    AvatarMode,
    CallStatus,
    CallType,
    Mode,
    Position,
    SessionType,
)
from kiosk.calls.errors import (
    CallsError,
    ConnectionFailedError,
    NotSupportedError,
    SessionNotActiveError,
    SettingsError,
)
from kiosk.calls.events import (
    AudioModeInfo,
    CallError,
    CallEventListener,
    CallSwitchRequestInfo,
    RTCMutedUser,
    RTCRecordingInfo,
    RTCUser,
)
from kiosk.calls.peer import ParticipantStats, SessionStats
from kiosk.calls.session import SessionInfo
from kiosk.calls.settings import CallSettings, CallSettingsBuilder, MainVideoContainerSetting
from kiosk.media.devices import MediaDeviceInfo

__all__ = [
    "AUDIO_MODE_BLUETOOTH",
    "AUDIO_MODE_EARPIECE",
    "AUDIO_MODE_HEADPHONES",
    "AUDIO_MODE_SPEAKER",
    "AVATAR_MODE_CIRCLE",
    "AVATAR_MODE_FULLSCREEN",
    "AVATAR_MODE_SQUARE",
    "MODE_DEFAULT",
    "MODE_SINGLE",
    "MODE_SPOTLIGHT",
    "AspectRatio",
    "AudioMode",
    "AudioModeInfo",
    "AvatarMode",
    "Call",
    "CallError",
    "CallEventListener",
    "CallLogPage",
    "CallSettings",
    "CallSettingsBuilder",
    "CallStatus",
    "CallSwitchRequestInfo",
    "CallType",
    "Calls",
    "CallsError",
    "ConnectionFailedError",
    "GenerateToken",
    "MainVideoContainerSetting",
    "MediaDeviceInfo",
    "Mode",
    "NotSupportedError",
    "ParticipantStats",
    "Position",
    "RTCMutedUser",
    "RTCRecordingInfo",
    "RTCUser",
    "SessionNotActiveError",
    "SessionInfo",
    "SessionStats",
    "SessionType",
    "SettingsError",
]
