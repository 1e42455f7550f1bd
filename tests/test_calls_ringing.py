"""The ringing flow through the SDK: accept, reject, busy, cancel, unanswered, and the call logs."""

from __future__ import annotations

import asyncio

import pytest
from calls_support import audio_frames, endpoints, running_server, video_frames, wait_until

from kiosk.calls import CallsError, CallStatus, CallType


async def _log_entry(endpoint, session_id: str):
    page = await endpoint.calls.get_call_logs()
    return next((c for c in page.calls if c.session_id == session_id), None)


async def test_accept_then_end_call_both_sides_and_logs(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        call = await door.calls.initiate_call("desk", CallType.VIDEO)
        assert call.status == CallStatus.INITIATED and call.receiver.uid == "desk"
        assert door.calls.get_active_call() == call
        door.calls.clear_active_call()
        assert door.calls.get_active_call() is None

        incoming = (await desk.events.wait_for("on_incoming_call_received"))[0]
        assert incoming.session_id == call.session_id and incoming.initiator.name == "Door"
        assert incoming.type == CallType.VIDEO
        accepted = await desk.calls.accept_call(call.session_id)
        assert accepted.status == CallStatus.ONGOING
        outgoing = (await door.events.wait_for("on_outgoing_call_accepted"))[0]
        assert outgoing.status == CallStatus.ONGOING
        assert await door.calls.get_call_participant_count(call.session_id, "default") == 0

        await door.join(call.session_id)
        await desk.join(call.session_id)
        assert await door.calls.get_call_participant_count(call.session_id, "default") == 2
        assert await door.calls.get_call_participant_count(call.session_id, "direct") == 0
        await wait_until(lambda: video_frames(desk, "door"), 15, "media")
        await asyncio.sleep(1.1)  # a call that lasts at least a second

        # the documents' ringing end: end_call, then the other side gets on_call_ended
        ended = await door.calls.end_call(call.session_id)
        assert ended.status == CallStatus.ENDED
        await desk.events.wait_for("on_call_ended")
        await desk.events.wait_for("on_call_ended_message_received")
        await door.calls.end_session()
        assert door.calls.get_active_call() is None and desk.calls.get_active_call() is None

        for ep, direction in ((door, "outgoing"), (desk, "incoming")):
            entry = await _log_entry(ep, call.session_id)
            assert entry is not None and entry.status == CallStatus.ENDED
            assert entry.direction == direction and entry.duration_seconds >= 1


async def test_reject(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        call = await door.calls.initiate_call("desk", "audio")
        await desk.events.wait_for("on_incoming_call_received")
        rejected = await desk.calls.reject_call(call.session_id, "rejected")
        assert rejected.status == CallStatus.REJECTED
        outcome = (await door.events.wait_for("on_outgoing_call_rejected"))[0]
        assert outcome.status == CallStatus.REJECTED
        assert door.calls.get_active_call() is None
        entry = await _log_entry(door, call.session_id)
        assert entry.status == CallStatus.REJECTED and entry.type == CallType.AUDIO
        with pytest.raises(CallsError) as late:
            await desk.calls.accept_call(call.session_id)
        assert late.value.code == "INVALID_STATE"


async def test_busy_when_the_receiver_is_in_a_call(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk", "gate") as (door, desk, gate),
    ):
        first = await door.calls.initiate_call("desk", "video")
        await desk.events.wait_for("on_incoming_call_received")
        await desk.calls.accept_call(first.session_id)
        await desk.join(first.session_id)

        second = await gate.calls.initiate_call("desk", "video")
        assert second.status == CallStatus.BUSY
        assert len(desk.events.of("on_incoming_call_received")) == 1, "a busy receiver does not ring"
        entry = await _log_entry(gate, second.session_id)
        assert entry.status == CallStatus.BUSY and entry.direction == "outgoing"

        # the receiver can also answer busy itself
        await desk.calls.end_session()
        third = await gate.calls.initiate_call("door", "audio")
        await door.events.wait_for("on_incoming_call_received")
        await door.calls.reject_call(third.session_id, CallStatus.BUSY)
        outcome = (await gate.events.wait_for("on_outgoing_call_rejected"))[0]
        assert outcome.status == CallStatus.BUSY


async def test_cancel_by_the_caller(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        call = await door.calls.initiate_call("desk", "video")
        await desk.events.wait_for("on_incoming_call_received")
        cancelled = await door.calls.reject_call(call.session_id, "cancelled")
        assert cancelled.status == CallStatus.CANCELLED
        gone = (await desk.events.wait_for("on_incoming_call_cancelled"))[0]
        assert gone.status == CallStatus.CANCELLED and desk.calls.get_active_call() is None
        with pytest.raises(CallsError) as wrong:
            await desk.calls.reject_call(call.session_id, "sideways")
        assert wrong.value.code == "BAD_REQUEST"
        entry = await _log_entry(desk, call.session_id)
        assert entry.status == CallStatus.CANCELLED and entry.direction == "incoming"


async def test_unanswered_after_the_ring_timeout(tmp_path):
    async with (
        running_server(tmp_path / "server", ring_timeout=1.0) as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        call = await door.calls.initiate_call("desk", "video")
        await desk.events.wait_for("on_incoming_call_received")
        outcome = (await door.events.wait_for("on_outgoing_call_rejected", timeout=5))[0]
        assert outcome.status == CallStatus.UNANSWERED
        missed = (await desk.events.wait_for("on_incoming_call_cancelled", timeout=5))[0]
        assert missed.status == CallStatus.UNANSWERED
        entry = await _log_entry(desk, call.session_id)
        assert entry.status == CallStatus.UNANSWERED
        page = await desk.calls.get_call_logs(status="unanswered", direction="incoming")
        assert [c.session_id for c in page.calls] == [call.session_id]
        assert (await desk.calls.get_call_logs(status="ended")).total == 0


async def test_an_audio_call_answered_with_default_settings_staysaudio_frames(tmp_path):
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        call = await door.calls.initiate_call("desk", CallType.AUDIO)
        await desk.events.wait_for("on_incoming_call_received")
        await desk.calls.accept_call(call.session_id)
        await door.join(call.session_id)
        await desk.join(call.session_id)  # default settings: video allowed, but the call is audio
        await wait_until(lambda: audio_frames(door, "desk"), 15, "desk's audio at the door")
        await asyncio.sleep(1.0)
        assert await video_frames(door, "desk") == 0 and await video_frames(desk, "door") == 0
        assert desk.calls.session.audio_only
        door.calls.switch_to_video_call()
        await wait_until(lambda: video_frames(door, "desk"), 10, "video after the switch")
