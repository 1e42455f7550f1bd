"""Nothing of an ended session stays reachable: repeated join / first frame / leave leaves no objects behind.

Object counts, never timings or RSS: bench/memory.py measures resident memory; these tests pin down
the Python-level cause a leak there would have (peer connections, sessions, tracks kept by a list,
a callback or a task of the endpoint that outlives its session).
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from calls_support import endpoints, new_session_id, running_server, wait_until

from kiosk.calls import Calls
from kiosk.calls.peer import RemotePeer
from kiosk.calls.session import CallSession
from kiosk.media.capture import OutgoingTrack
from kiosk.media.emulated import EmulatedSpeaker

CYCLES = 4
# Everything a session creates that holds codecs, sockets or frames.
SESSION_TYPES: tuple[type, ...] = (
    CallSession,
    RemotePeer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpReceiver,
    OutgoingTrack,
)


def _alive(kind: type) -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


async def _cycle(host: Calls, measured: Calls) -> None:
    """The host joins; the measured endpoint joins, waits for decoded video from it, and leaves."""
    session_id = new_session_id()
    await host.start_session(await host.generate_token(session_id))
    await measured.start_session(await measured.generate_token(session_id))
    # Read through the Calls, so this coroutine holds no reference to the session it checks on.
    await wait_until(
        lambda: measured.session is not None and measured.session.first_remote_frame_ms is not None,
        15.0,
        "decoded remote video",
    )
    await measured.end_session()
    # A session joined by id goes on for the host, alone, until it leaves too.
    await wait_until(
        lambda: host.session is not None and not host.session.participants, 10.0, "the other side's leaving"
    )
    await host.end_session()


async def _settle() -> None:
    """Let cancelled tasks of the ended sessions run to their end."""
    for _ in range(5):
        await asyncio.sleep(0.05)


@pytest.mark.timeout(60)
async def test_join_leave_cycles_leave_no_session_objects(tmp_path: Path) -> None:
    async with running_server(tmp_path / "server") as server:
        async with endpoints(server.url, tmp_path, "host", "measured") as (host, measured):
            await _cycle(host.calls, measured.calls)  # the first one also fills caches and imports
            await _settle()
            tasks_before = len(asyncio.all_tasks())
            for _ in range(CYCLES):
                await _cycle(host.calls, measured.calls)
            await _settle()

            left = {kind.__name__: _alive(kind) for kind in SESSION_TYPES}
            assert left == {kind.__name__: 0 for kind in SESSION_TYPES}
            assert host.calls.session is None and measured.calls.session is None
            # The signaling connections and their tasks stay; nothing per session does.
            assert len(asyncio.all_tasks()) <= tasks_before
            # What the endpoint keeps on purpose is one summary of the last session, not a history.
            assert measured.calls.last_session_stats is not None


@pytest.mark.timeout(60)
async def test_emulated_speakers_of_ended_sessions_are_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The emulated device keeps its newest speakers for inspection, never all of them.
    monkeypatch.setattr("kiosk.media.emulated.OPENED_SPEAKERS_KEPT", 2)
    async with running_server(tmp_path / "server") as server:
        async with endpoints(server.url, tmp_path, "host", "measured") as (host, measured):
            for _ in range(CYCLES):
                await _cycle(host.calls, measured.calls)
            await _settle()
            assert len(measured.devices.opened_speakers) == 2 and len(host.devices.opened_speakers) == 2
            assert _alive(EmulatedSpeaker) <= 4
