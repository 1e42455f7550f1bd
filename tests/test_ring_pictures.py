"""Visitor preview and missed-call pictures: while a video call rings, the caller's kiosk sends stills
of its camera; the callee sees them before answering (no media until it answers); the last one stays
with the call, in the call log, until the retention removes it. The camera is free for the call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from calls_support import endpoints, running_server, video_frames, wait_until
from conftest import CreateUser

from kiosk.calls import CallStatus, CallType
from kiosk.calls.ring_preview import jpeg_of
from kiosk.media.pattern import TestPattern
from kiosk.server import RunningServer
from kiosk.server.clock import now_ms

JPEG = jpeg_of(TestPattern(320, 240).draw(1))


async def put(http: aiohttp.ClientSession, url: str, token: str, body: bytes) -> int:
    async with http.put(url, data=body, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status


async def test_only_the_ringing_caller_sends_a_picture_and_the_parties_see_it(
    call_server: RunningServer, http: aiohttp.ClientSession, create_user: CreateUser
) -> None:
    door, desk, other = await create_user("door"), await create_user("desk"), await create_user("other")
    async with http.post(
        f"{call_server.url}/v1/calls", json={"receiverUid": "desk", "callType": "video"}, headers=door.headers
    ) as r:
        session_id = (await r.json())["sessionId"]
    url = f"{call_server.url}/v1/calls/{session_id}/picture"
    async with http.get(url, headers=desk.headers) as r:
        assert r.status == 404  # none yet
    assert await put(http, url, desk.auth_token, JPEG) == 403  # the callee sends none
    assert await put(http, url, door.auth_token, b"GIF89a....") == 400
    assert await put(http, url, door.auth_token, b"\xff\xd8\xff" + b"x" * 62_000) == 413
    assert await put(http, url, door.auth_token, JPEG) == 204
    async with http.get(url, headers=desk.headers) as r:
        assert r.status == 200 and r.content_type == "image/jpeg" and await r.read() == JPEG
        assert r.headers["Cache-Control"] == "no-store"
    async with http.get(url, headers=other.headers) as r:
        assert r.status == 403  # not a party
    async with http.post(f"{call_server.url}/v1/calls/{session_id}/accept", headers=desk.headers) as r:
        assert r.status == 200
    assert await put(http, url, door.auth_token, JPEG) == 409  # no longer ringing
    async with http.get(f"{call_server.url}/v1/calls", headers=desk.headers) as r:
        assert (await r.json())["calls"][0]["hasPicture"] is True
    # Retention: the pictures of calls begun before the cut are removed.
    assert await call_server.storage.delete_pictures_before(now_ms() + 1) == 1
    async with http.get(url, headers=desk.headers) as r:
        assert r.status == 404


async def test_the_callee_sees_the_caller_before_answering_and_the_camera_is_free_for_the_call(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path / "server", ring_timeout=2.0) as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        call = await door.calls.initiate_call("desk", CallType.VIDEO)
        await desk.events.wait_for("on_incoming_call_received")

        # The preview moves: two stills of the ringing caller differ (the emulated camera's picture
        # changes with every frame).
        seen: list[bytes] = []

        async def two_stills() -> bool:
            picture = await desk.calls.get_call_picture(call.session_id)
            if picture is not None and (not seen or picture != seen[-1]):
                seen.append(picture)
            return len(seen) >= 2

        for _ in range(100):
            if await two_stills():
                break
            await asyncio.sleep(0.1)
        assert len(seen) >= 2 and all(p.startswith(b"\xff\xd8\xff") for p in seen)
        assert desk.calls.session is None  # no media before the answer: only stills

        await desk.calls.accept_call(call.session_id)
        await door.events.wait_for("on_outgoing_call_accepted")
        await door.join(call.session_id)
        await desk.join(call.session_id)
        await wait_until(lambda: video_frames(desk, "door"), 20, "the door's video")
        # The ring's camera was closed before the call opened it: no busy refusal.
        assert door.devices.busy_refusals == 0 and door.devices.camera_opens >= 2
        await door.calls.end_session()
        await desk.calls.end_session()

        # A missed call keeps its picture.
        missed = await door.calls.initiate_call("desk", CallType.VIDEO)
        await desk.events.wait_for("on_incoming_call_received", count=2)
        await wait_until(
            lambda: door.calls._ring_preview is not None and door.calls._ring_preview[1].sent > 0,
            10,
            "a still",
        )
        (cancelled,) = await desk.events.wait_for("on_incoming_call_cancelled", timeout=10)
        assert cancelled.status == CallStatus.UNANSWERED
        assert await desk.calls.get_call_picture(missed.session_id) is not None
        page = await desk.calls.get_call_logs()
        assert page.calls[0].session_id == missed.session_id


@pytest.mark.parametrize("call_type", [CallType.AUDIO])
async def test_an_audio_call_sends_no_picture(tmp_path: Path, call_type: CallType) -> None:
    async with (
        running_server(tmp_path / "server") as server,
        endpoints(server.url, tmp_path, "door", "desk") as (door, desk),
    ):
        call = await door.calls.initiate_call("desk", call_type)
        await desk.events.wait_for("on_incoming_call_received")
        await asyncio.sleep(1.0)
        assert await desk.calls.get_call_picture(call.session_id) is None
        assert door.devices.camera_opens == 0


async def test_a_ring_answered_while_the_camera_opens_leaves_it_closed() -> None:
    from kiosk.calls.ring_preview import RingPreview
    from kiosk.media.emulated import EmulatedDevices

    devices = EmulatedDevices(width=160, height=120, camera_open_seconds=0.5)
    sent: list[bytes] = []

    async def upload(jpeg: bytes) -> None:
        sent.append(jpeg)

    preview = RingPreview(devices, upload)
    preview.start()
    await asyncio.sleep(0.1)  # the camera is still opening on its thread
    await preview.stop()  # answered: the call will want the camera
    for _ in range(40):
        if not devices.open_cameras:
            break
        await asyncio.sleep(0.05)
    assert devices.open_cameras == set() and not sent
