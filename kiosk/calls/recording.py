"""A session's recording: start and stop, the file (kiosk.calls.recorder), and telling everyone.

Starting opens one Matroska file in the recording directory, fed with every remote participant's
audio and the main video (the first remote participant, the one a 1:1 call shows large) and this
endpoint's own microphone; the others hear of it (`recording` message) and every side gets
on_recording_toggled. Stopping, or the end of the session, closes the file on a worker thread (the
encoder flushes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import av

from kiosk.calls.errors import CallsError
from kiosk.calls.events import RTCRecordingInfo, RTCUser
from kiosk.calls.ports import EventSink, Send
from kiosk.calls.recorder import CallRecorder
from kiosk.media.capture import AudioCapture

log = logging.getLogger(__name__)


class SessionRecording:
    def __init__(
        self,
        session_id: str,
        directory: Path,
        microphone: AudioCapture,
        *,
        self_user: Callable[[], RTCUser | None],
        send: Send,
        events: EventSink,
    ) -> None:
        self.session_id = session_id
        self.directory = directory
        self._microphone = microphone
        self._self_user = self_user
        self._send = send
        self._events = events
        self.recording = False
        self.recordings: list[Path] = []  # the files this session recorded
        self._recorder: CallRecorder | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def file_open(self) -> bool:
        """Whether a recording file is still being written (it closes a moment after stop)."""
        return self._recorder is not None or bool(self._closing)

    def start(self, with_video: bool, main_uid: str | None) -> None:
        if self.recording:
            return
        path = self.directory / f"{self.session_id}_{time.strftime('%Y%m%d-%H%M%S')}.mkv"
        try:
            recorder = CallRecorder(path, with_video=with_video)
        except (OSError, av.FFmpegError) as exc:
            raise CallsError("RECORDING_FAILED", f"cannot record to {path}: {exc}") from None
        recorder.main_uid = main_uid
        self._recorder = recorder
        self.recordings.append(path)
        self._microphone.taps.append(self._record_local_audio)
        self.recording = True
        self._send("recording", recording=True)
        self._events.emit(
            "on_recording_toggled",
            RTCRecordingInfo(True, self._self_user(), _now_ms(), str(self.directory), str(path)),
        )

    def stop(self) -> None:
        if not self.recording:
            return
        self.recording = False
        task = asyncio.ensure_future(self._close_file())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._send("recording", recording=False)
        self._events.emit("on_recording_toggled", RTCRecordingInfo(False, self._self_user(), _now_ms()))

    def write(self, uid: str, frame: av.frame.Frame) -> None:
        """A remote participant's decoded audio or video."""
        if self._recorder is not None:
            self._recorder.write(uid, frame)

    def participant_left(self, uid: str, next_main: str | None) -> None:
        if self._recorder is not None and self._recorder.main_uid == uid:
            self._recorder.main_uid = next_main

    def _record_local_audio(self, frame: av.frame.Frame) -> None:
        user = self._self_user()
        if self._recorder is not None and user is not None:
            self._recorder.write(user.uid, frame)

    def session_ends(self) -> bool:
        """The session ends: recording stops (on_recording_toggled here). True if it was recording,
        so the session tells the server before it leaves."""
        was_recording, self.recording = self.recording, False
        if was_recording:
            self._events.emit("on_recording_toggled", RTCRecordingInfo(False, self._self_user(), _now_ms()))
        return was_recording

    async def close(self) -> None:
        """Close the file (on a worker thread), and any still closing."""
        await self._close_file()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _close_file(self) -> None:
        recorder, self._recorder = self._recorder, None
        if self._record_local_audio in self._microphone.taps:
            self._microphone.taps.remove(self._record_local_audio)
        if recorder is not None:
            await asyncio.to_thread(recorder.close)


def _now_ms() -> int:
    return int(time.time() * 1000)
