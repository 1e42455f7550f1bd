"""VideoRoom rooms on a Janus WebRTC server, for sessions larger than the mesh limit.

The call server creates one room per group session over Janus's HTTP API and hands its participants
the room number and pin; their SDKs publish and subscribe themselves (kiosk/calls/sfu.py). Each call
here runs on a fresh Janus session (create, attach the VideoRoom plugin, one request, destroy), through
the Janus HTTP client the SDK uses too (kiosk/janus.py), so nothing is left to keep alive or to recover
when Janus restarts. Janus refusing is `JanusError` (with its code); a failure to reach Janus, or no
answer in time, is its subclass `JanusUnavailable`; each with a readable message.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from kiosk.janus import ERROR_NO_SUCH_ROOM, REQUEST_TIMEOUT, VIDEOROOM, JanusError, JanusSession
from kiosk.protocol import SfuRoomJson

log = logging.getLogger(__name__)

# Room options every group call gets.
VIDEO_CODECS = "vp8,h264"
AUDIO_CODEC = "opus"
ROOM_BITRATE = 1_000_000  # per publisher, bits/s: Janus's REMB cap towards each publisher
FIR_FREQ = 10  # seconds between keyframe requests to publishers (a late subscriber waits at most this)
AUDIO_ACTIVE_PACKETS = 50  # about 1 s of 20 ms packets per talking/stopped-talking decision
AUDIO_LEVEL_AVERAGE = 40  # dBov (0 loudest .. 127 silence) a talker stays above on average


@dataclass(frozen=True)
class SfuRoom:
    """A VideoRoom room: what a participant needs to join (`api_url`, `room`, `pin`), and the secret
    only the call server keeps (`secret`, to destroy it)."""

    session_id: str
    room: int
    pin: str
    secret: str = field(repr=False)
    publishers: int
    api_url: str
    video_codecs: str = VIDEO_CODECS

    def to_state(self) -> dict[str, Any]:
        """As kept in the live state (server side only: it holds the secret)."""
        return {
            "sessionId": self.session_id,
            "room": self.room,
            "pin": self.pin,
            "secret": self.secret,
            "publishers": self.publishers,
            "url": self.api_url,
            "videoCodecs": self.video_codecs,
        }

    @classmethod
    def from_state(cls, data: dict[str, Any]) -> SfuRoom:
        return cls(
            session_id=data["sessionId"],
            room=int(data["room"]),
            pin=data["pin"],
            secret=data["secret"],
            publishers=int(data["publishers"]),
            api_url=data["url"],
            video_codecs=data.get("videoCodecs", VIDEO_CODECS),
        )

    def for_client(self) -> SfuRoomJson:
        """What a participant's SDK is told (never the secret)."""
        return {"url": self.api_url, "room": self.room, "pin": self.pin, "videoCodecs": self.video_codecs}


class JanusRooms:
    """Creates and destroys VideoRoom rooms on one Janus (`api_url`: http://host:8088/janus)."""

    def __init__(self, api_url: str, admin_key: str | None = None, *, client_url: str | None = None) -> None:
        self.api_url = api_url.rstrip("/")
        self.client_url = (client_url or api_url).rstrip("/")  # as participants reach it, if different
        self.admin_key = admin_key
        self._http: aiohttp.ClientSession | None = None

    async def _videoroom(self, request: dict[str, Any]) -> dict[str, Any]:
        """One synchronous VideoRoom request on a Janus session of its own: the plugin's data."""
        if self.admin_key is not None:
            request = {**request, "admin_key": self.admin_key}
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        async with JanusSession(self.api_url, http=self._http, long_poll=False) as janus:
            handle = await janus.attach(VIDEOROOM)
            return await handle.request(request)

    async def create_room(self, session_id: str, publishers: int) -> SfuRoom:
        pin, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
        data = await self._videoroom(
            {
                "request": "create",
                "description": f"kiosk session {session_id}"[:100],
                "is_private": True,  # not listed to anyone who asks Janus for its rooms
                "permanent": False,
                "secret": secret,
                "pin": pin,
                "publishers": max(1, publishers),
                "bitrate": ROOM_BITRATE,
                "fir_freq": FIR_FREQ,
                "audiocodec": AUDIO_CODEC,
                "videocodec": VIDEO_CODECS,
                "audiolevel_ext": True,
                "audiolevel_event": True,
                "audio_active_packets": AUDIO_ACTIVE_PACKETS,
                "audio_level_average": AUDIO_LEVEL_AVERAGE,
                "notify_joining": True,
                "record": False,
                "require_pvtid": False,
            }
        )
        room = int(data["room"])
        log.info("SFU room %s created for session %s (%d publishers)", room, session_id, publishers)
        return SfuRoom(session_id, room, pin, secret, max(1, publishers), self.client_url)

    async def exists(self, room: int) -> bool:
        """Whether Janus has this room (an ended session's room must not)."""
        data = await self._videoroom({"request": "exists", "room": room})
        return bool(data.get("exists"))

    async def destroy_room(self, room: SfuRoom) -> None:
        """Destroy the room; its participants are told (`destroyed`) and dropped. A room Janus no longer
        has (it restarted) counts as destroyed."""
        try:
            await self._videoroom({"request": "destroy", "room": room.room, "secret": room.secret})
        except JanusError as exc:
            if exc.code != ERROR_NO_SUCH_ROOM:
                raise
        log.info("SFU room %s of session %s destroyed", room.room, room.session_id)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
