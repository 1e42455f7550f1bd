"""Group calls through the SFU, end to end: the call server, Debian's Janus (VideoRoom) and Calls SDK
endpoints. A session that grows past the mesh limit moves its media into a Janus room by itself; the
application sees the same events, lists and in-call methods as in a mesh."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from calls_support import endpoints, make_user, new_session_id, running_server, wait_until
from janus_server import VIDEOROOM_ADMIN_KEY, JanusServer, running_janus

from kiosk.calls import CallsError
from kiosk.calls.peer import RemotePeer
from kiosk.calls.sfu import SfuFeed, SfuPublisher
from kiosk.server.config import ServerConfig

pytestmark = pytest.mark.timeout(120)

UIDS = ("ann", "ben", "cat", "dan", "eve", "fay")


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusServer]:
    with running_janus(tmp_path) as server:
        yield server


@contextlib.asynccontextmanager
async def group_call(tmp_path: Path, janus: JanusServer, *uids: str) -> AsyncIterator[tuple[Any, list[Any]]]:
    """A call server that sends sessions past the mesh limit to this Janus, and logged-in endpoints
    whose ICE uses the address Janus gathers on (it cannot use loopback; see tests/janus_server.py)."""
    async with (
        running_server(
            tmp_path / "server", janus_url=janus.url, janus_admin_key=VIDEOROOM_ADMIN_KEY
        ) as server,
        endpoints(server.url, tmp_path, *uids, ice_host_addresses=[janus.ice_address]) as eps,
    ):
        yield server, eps


async def longest_media_gap(eps: list[Any], step: float = 0.02) -> list[float]:
    """Until cancelled: per (endpoint, sender), the longest time with no media from that sender,
    whichever connection it came by. Returns the list of those (read the result after cancelling)."""
    newest: dict[tuple[str, str], float] = {}
    longest: dict[tuple[str, str], float] = {}
    try:
        while True:
            now = time.monotonic()
            for ep in eps:
                for uid, peer in list(ep.calls.session.peers.items()):
                    key = (ep.uid, uid)
                    if peer.last_media_at is not None:
                        newest[key] = max(newest.get(key, 0.0), peer.last_media_at)
                    if key in newest:
                        longest[key] = max(longest.get(key, 0.0), now - newest[key])
            await asyncio.sleep(step)
    except asyncio.CancelledError:
        return list(longest.values())


async def received_from_all(ep, others: list[str], frames: int = 5, through_sfu: bool = False) -> bool:
    """Whether `ep` decoded video and audio from each of `others` (with through_sfu, from its feed
    in the room: a mesh connection carries a participant's media until its feed replaces it)."""
    if through_sfu and not all(isinstance(ep.calls.session.peers.get(uid), SfuFeed) for uid in others):
        return False
    stats = await ep.calls.get_session_stats()
    return all(
        (p := stats.participants.get(uid)) is not None
        and p.video_frames_decoded >= frames
        and p.audio_frames_decoded >= frames
        for uid in others
    )


async def join_all_through_sfu(eps: list[Any]) -> str:
    """All of `eps` join a new session (more than the mesh limit): returns once each decodes every
    other's media through the room."""
    session = new_session_id()
    for ep in eps:
        await ep.join(session)
    for ep in eps:
        others = [o.uid for o in eps if o is not ep]
        await wait_until(
            lambda e=ep, o=others: received_from_all(e, o, through_sfu=True), 45, f"SFU media at {ep.uid}"
        )
    return session


async def test_six_endpoints_share_one_session_through_the_sfu(tmp_path, janus):
    async with group_call(tmp_path, janus, *UIDS) as (server, eps):
        session = new_session_id()
        mesh, late = eps[:4], eps[4:]
        for ep in mesh:
            await ep.join(session)
        for ep in mesh:
            others = [o.uid for o in mesh if o is not ep]
            await wait_until(lambda e=ep, o=others: received_from_all(e, o), 30, f"mesh media at {ep.uid}")
            assert ep.calls.session.media_mode == "mesh"
            assert all(isinstance(p, RemotePeer) for p in ep.calls.session.peers.values())

        # The fifth takes the session past the mesh limit (4): everyone moves to the room. Meanwhile
        # the longest silence between the four who were in the mesh is watched (make before break:
        # a mesh connection carries media until the feed that replaces it does).
        gaps = asyncio.ensure_future(longest_media_gap(mesh))
        switched_at = time.monotonic()
        for ep in late:
            await ep.join(session)
        for ep in eps:
            others = [o.uid for o in eps if o is not ep]
            await wait_until(
                lambda e=ep, o=others: received_from_all(e, o, through_sfu=True), 45, f"SFU media at {ep.uid}"
            )
        switch_took = time.monotonic() - switched_at
        await asyncio.sleep(0.5)
        gaps.cancel()
        gap = max((await asyncio.gather(gaps, return_exceptions=True))[0] or [0.0])
        print(
            f"six through the SFU, each receiving the five others from the room, {switch_took:.2f} s after "
            f"the fifth and sixth joined; longest media gap between the four meanwhile {gap * 1000:.0f} ms"
        )
        for ep in eps:
            others = [o.uid for o in eps if o is not ep]
            s = ep.calls.session
            assert s.media_mode == "sfu" and s.sfu_publisher is not None
            assert sorted(s.peers) == sorted(others)
            assert all(isinstance(p, SfuFeed) for p in s.peers.values())
            # Same participant list as in a mesh, each once; nobody was seen to leave.
            assert sorted(u.uid for u in s.user_list()) == sorted(UIDS)
            assert not ep.events.of("on_user_left")
            joined = [u.uid for (u,) in ep.events.of("on_user_joined")]
            assert len(joined) == len(set(joined)), joined

        # Each endpoint encodes its camera once, for the room, not once per receiver.
        ann = eps[0].calls.session
        assert ann is not None
        before = ann.capture_figures()
        [video] = [e for e in before.encoders if e.kind == "video" and e.sinks]
        await asyncio.sleep(1.0)
        after = ann.capture_figures()
        [video_after] = [e for e in after.encoders if e.kind == "video" and e.mime == video.mime]
        captured = after.frames_captured - before.frames_captured
        encoded = video_after.frames_encoded - video.frames_encoded
        # (The encoder skips frames when the machine is busy, six endpoints in one process here.)
        assert video.sinks == 1 and video_after.sinks == 1
        assert 0.3 * captured <= encoded <= captured + 2, (captured, encoded)

        # In-call methods work as in a mesh: a mute reaches the others as on_user_muted, and the
        # muted endpoint's audio through the room turns to silence.
        eps[1].calls.mute_audio(True)
        for ep in eps[2:]:
            await wait_until(
                lambda e=ep: any(m.uid == "ben" and m.audio_muted for (m,) in e.events.of("on_user_muted")),
                10,
                f"ben muted at {ep.uid}",
            )
        await wait_until(
            lambda: eps[0].calls.session.peers["ben"].audio_level < 0.003, 10, "ben's silence at ann"
        )
        # The room's talking events (from the audio level each publisher stamps on its packets): the
        # others' tones are talking, ben's silence is not. Spotlight can use them as the active speaker.
        await wait_until(
            lambda: "ben" not in ann.talking and {"cat", "dan"} <= ann.talking, 10, "talking without ben"
        )

        # One leaves: the others see on_user_left, its feed goes, the call goes on for five.
        await eps[5].calls.end_session()
        for ep in eps[:5]:
            await ep.events.wait_for("on_user_left", timeout=10)
            await wait_until(
                lambda e=ep: "fay" not in e.calls.session.peers, 10, f"fay's feed gone at {ep.uid}"
            )
        before = await eps[0].stats_from("eve")
        await asyncio.sleep(0.5)
        after = await eps[0].stats_from("eve")
        assert after.video_frames_decoded > before.video_frames_decoded

        # Ending the session destroys its room: its pin opens nothing any more.
        room = ann.sfu_room
        assert room is not None
        for ep in eps[:5]:
            await ep.calls.end_session()
        await wait_until(lambda: janus_room_gone(janus, room["room"]), 10, "the room destroyed")


async def test_a_kiosk_endpoint_process_joins_as_the_fifth(tmp_path, janus):
    """`kiosk endpoint --ice-address` in its own process: the join that moves the session to Janus."""
    async with group_call(tmp_path, janus, *UIDS[:4]) as (server, eps):
        session = new_session_id()
        for ep in eps:
            await ep.join(session)
        token = await make_user(server.url, "eve")
        report = tmp_path / "eve.json"
        eve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kiosk.cli", "endpoint", "--server", server.url, "--auth-token", token,
            "--session", session, "--ice-address", janus.ice_address, "--duration", "6", "--report", str(report),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            for ep in eps:
                await wait_until(
                    lambda e=ep: received_from_all(e, ["eve"], through_sfu=True),
                    30,
                    f"eve's media at {ep.uid}",
                )
                assert ep.calls.session.media_mode == "sfu"
            _, err = await asyncio.wait_for(eve.communicate(), 30)
        finally:
            if eve.returncode is None:
                eve.kill()
                await eve.wait()
        assert eve.returncode == 0, err.decode()[-2000:]
        got = json.loads(report.read_text())
        assert got["ok"], got
        decoded = {uid: p["video_frames_decoded"] for uid, p in got["stats"]["participants"].items()}
        assert sorted(decoded) == sorted(UIDS[:4]) and min(decoded.values()) > 30, decoded


async def test_an_endpoint_that_loses_janus_publishes_again_and_is_seen_again(tmp_path, janus):
    async with group_call(tmp_path, janus, *UIDS[:5]) as (server, eps):
        await join_all_through_sfu(eps)
        # Janus forgets ann's session (as after a network loss longer than its session timeout).
        ann = eps[0].calls.session
        lost = ann.sfu_publisher
        assert isinstance(lost, SfuPublisher)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{janus.url}/{lost.janus.id}", json={"janus": "destroy", "transaction": "t"}
            ) as r:
                assert (await r.json())["janus"] == "success"
        old_feeds = {ep.uid: ep.calls.session.peers.get("ann") for ep in eps[1:]}
        await wait_until(
            lambda: (p := ann.sfu_publisher) is not None and p is not lost and p.feed, 15, "ann back"
        )

        def flowing(ep) -> bool:
            peers = ep.calls.session.peers
            return all(
                (p := peers.get(o.uid)) is not None
                and p.receiving(0.5)
                and p.stats.video_frames_decoded >= 5
                and (o.uid != "ann" or p is not old_feeds[ep.uid])
                for o in eps
                if o is not ep
            )

        for ep in eps:
            await wait_until(lambda e=ep: flowing(e), 20, f"everyone's media at {ep.uid} after ann came back")
        for ep in eps:
            assert sorted(u.uid for u in ep.calls.session.user_list()) == sorted(UIDS[:5])
            assert not ep.events.of("on_user_left")


async def janus_room_gone(janus: JanusServer, room: int) -> bool:
    from kiosk.server.sfu import JanusRooms

    rooms = JanusRooms(janus.url, VIDEOROOM_ADMIN_KEY)
    try:
        return not await rooms.exists(room)
    finally:
        await rooms.close()


async def test_without_janus_the_fifth_is_refused_and_the_four_go_on(tmp_path):
    # A Janus URL where nothing listens: the mesh works; the join that needs a room gets a clear error.
    async with (
        running_server(tmp_path / "server", janus_url="http://127.0.0.1:9/janus") as server,
        endpoints(server.url, tmp_path, *UIDS[:5]) as eps,
    ):
        session = new_session_id()
        for ep in eps[:4]:
            await ep.join(session)
        with pytest.raises(CallsError) as refused:
            await eps[4].join(session)
        assert refused.value.code == "SFU_UNAVAILABLE"
        assert "unavailable" in refused.value.message
        # The refused endpoint holds nothing: no session, no speaker opened, camera and mic closed.
        assert eps[4].calls.session is None and not eps[4].devices.opened_speakers
        for ep in eps[:4]:
            assert ep.calls.session is not None and ep.calls.session.media_mode == "mesh"
            assert sorted(u.uid for u in ep.calls.session.user_list()) == sorted(UIDS[:4])
        others = [o.uid for o in eps[1:4]]
        await wait_until(lambda: received_from_all(eps[0], others), 30, "the mesh going on")


def test_sfu_settings_are_checked(tmp_path):
    config = ServerConfig(data_dir=tmp_path, janus_url="http://127.0.0.1:8088/janus")
    assert (config.mesh_limit, config.max_participants) == (4, 16)
    assert config.janus_public_url == config.janus_url
    assert ServerConfig(data_dir=tmp_path).max_participants == 4  # no SFU: a mesh of four at most
    assert (
        ServerConfig(data_dir=tmp_path, janus_url="http://j/janus", max_participants=8).max_participants == 8
    )
    for settings, message in (
        ({"janus_url": "ws://127.0.0.1:8188"}, "must start with http"),
        ({"janus_public_url": "https://sfu.example.org/janus"}, "no Janus URL"),
        ({"janus_url": "http://j/janus", "mesh_limit": 1}, "mesh_limit"),
    ):
        with pytest.raises(ValueError, match=message):
            ServerConfig(data_dir=tmp_path, **settings)
    assert "k3y" not in repr(
        ServerConfig(data_dir=tmp_path, janus_url="http://j/janus", janus_admin_key="k3y")
    )


def test_the_server_command_refuses_a_bad_janus_url_in_one_line(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiosk.cli",
            "server",
            "--data-dir",
            str(tmp_path),
            "--janus-url",
            "janus:8088",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "kiosk server: Janus URL 'janus:8088' must start with http:// or https://"
    ]


async def test_a_janus_restart_mid_call_gets_the_session_a_new_room(tmp_path, janus):
    async with group_call(tmp_path, janus, *UIDS[:5]) as (server, eps):
        await join_all_through_sfu(eps)
        old_room = eps[0].calls.session.sfu_room["room"]
        janus.restart()  # the room and every Janus session are gone
        restarted = time.monotonic()
        for ep in eps:
            await wait_until(
                lambda e=ep: e.calls.session.sfu_room["room"] != old_room, 20, f"the new room at {ep.uid}"
            )

        def flowing(ep) -> bool:
            peers = ep.calls.session.peers
            return all(
                (p := peers.get(o.uid)) is not None and p.receiving(0.5) and p.stats.video_frames_decoded >= 5
                for o in eps
                if o is not ep
            )

        for ep in eps:
            await wait_until(lambda e=ep: flowing(e), 30, f"everyone's media at {ep.uid} after the restart")
        print(
            f"Janus restarted: everyone's media back through a new room in {time.monotonic() - restarted:.2f} s"
        )
        rooms = {ep.calls.session.sfu_room["room"] for ep in eps}
        assert len(rooms) == 1 and old_room not in rooms
        for ep in eps:
            assert sorted(u.uid for u in ep.calls.session.user_list()) == sorted(UIDS[:5])
            assert not ep.events.of("on_user_left")
            errors = [e.code for (e,) in ep.events.of("on_error")]
            assert errors.count("SFU_UNAVAILABLE") <= 1, errors  # said once, not once per retry
