"""The session's recording on its own (kiosk/calls/recording.py): a file in the directory, the others
told, on_recording_toggled on this side, the local microphone and remote media written, the file
closed when it stops or the session ends."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from kiosk.calls.errors import CallsError
from kiosk.calls.events import RTCRecordingInfo, RTCUser
from kiosk.calls.recording import SessionRecording
from kiosk.media.capture import AudioCapture
from kiosk.media.emulated import EmulatedDevices

ME = RTCUser("door", "Door")


class World:
    def __init__(self, directory: Path) -> None:
        self.microphone = AudioCapture(EmulatedDevices(), "emulated-mic", lambda exc: None)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.toggles: list[RTCRecordingInfo] = []
        world = self

        class Events:
            def emit(self, event: str, *args: Any) -> None:
                assert event == "on_recording_toggled"
                world.toggles.append(args[0])

        self.recording = SessionRecording(
            "s1",
            directory,
            self.microphone,
            self_user=lambda: ME,
            send=lambda kind, **fields: self.sent.append((kind, fields)),
            events=Events(),
        )


def tone_frame(n: int) -> av.AudioFrame:
    samples = (8000 * np.sin(np.arange(960) * 0.05 + n)).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = 48000
    return frame


async def test_a_recording_starts_is_told_and_its_file_holds_the_call(tmp_path: Path) -> None:
    world = World(tmp_path / "recordings")
    world.recording.start(with_video=False, main_uid="desk")
    assert world.recording.recording and world.recording.file_open
    assert world.sent == [("recording", {"recording": True})]
    started = world.toggles[0]
    assert (
        started.recording_started
        and started.user == ME
        and started.file == str(world.recording.recordings[0])
    )
    assert world.recording._record_local_audio in world.microphone.taps
    for n in range(50):  # one second of the desk's audio
        world.recording.write("desk", tone_frame(n))
        await asyncio.sleep(0.02)
    world.recording.stop()
    assert world.sent[-1] == ("recording", {"recording": False})
    assert not world.toggles[-1].recording_started
    await world.recording.close()
    assert not world.recording.file_open and world.microphone.taps == []
    with av.open(str(world.recording.recordings[0])) as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert decoded > 0.5 * 48000


async def test_starting_twice_records_once_and_a_directory_it_cannot_make_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path / "recordings")
    world.recording.start(with_video=False, main_uid=None)
    world.recording.start(with_video=False, main_uid=None)
    assert len(world.recording.recordings) == 1 and len(world.sent) == 1
    await world.recording.close()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    refused = World(blocked / "recordings")
    with pytest.raises(CallsError) as error:
        refused.recording.start(with_video=False, main_uid=None)
    assert error.value.code == "RECORDING_FAILED" and not refused.recording.recording


async def test_the_session_ending_stops_it_here_and_says_whether_to_tell_the_server(tmp_path: Path) -> None:
    world = World(tmp_path / "recordings")
    assert world.recording.session_ends() is False and world.toggles == []
    world.recording.start(with_video=False, main_uid=None)
    assert world.recording.session_ends() is True
    assert not world.recording.recording and not world.toggles[-1].recording_started
    await world.recording.close()
    assert not world.recording.file_open


async def test_the_main_video_follows_when_its_participant_leaves(tmp_path: Path) -> None:
    world = World(tmp_path / "recordings")
    world.recording.start(with_video=True, main_uid="desk")
    world.recording.participant_left("desk", "lobby")
    assert world.recording._recorder is not None and world.recording._recorder.main_uid == "lobby"
    await world.recording.close()
