"""`kiosk demo`: a whole call on one machine with no hardware.

Starts an embedded call server, creates two users, has the front door call the reception desk, the
desk answer, runs a short video call with emulated camera and microphone, prints the events and the
stats, and exits 0 only if media flowed both ways.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import IO

import aiohttp

from kiosk.calls import Calls, CallSettingsBuilder, CallType, SessionStats
from kiosk.endpoint import EventRecorder, to_jsonable
from kiosk.media.emulated import EmulatedDevices
from kiosk.server.app import start_server
from kiosk.server.config import ServerConfig


async def create_user(server_url: str, admin_key: str, uid: str, name: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{server_url}/v1/users", json={"uid": uid, "name": name}, headers={"X-Admin-Key": admin_key}
        ) as response:
            body = await response.json()
            if response.status != 201:
                raise RuntimeError(f"creating user {uid}: {body}")
            return str(body["authToken"])


def media_flowed(stats: SessionStats, audio_only: bool = False) -> bool:
    if not stats.participants:
        return False
    for p in stats.participants.values():
        if p.audio_frames_decoded == 0 or p.audio_level <= 0.0:
            return False
        if not audio_only and p.video_frames_decoded == 0:
            return False
    return True


async def run_demo(duration: float = 5.0, data_dir: Path | None = None, out: IO[str] = sys.stdout) -> int:
    with tempfile.TemporaryDirectory(prefix="kiosk-demo-") as tmp:
        config = ServerConfig(
            host="127.0.0.1", port=0, data_dir=data_dir or Path(tmp), admin_key=secrets.token_urlsafe(24)
        )
        server = await start_server(config)
        door = desk = None
        try:
            out.write(f"call server on {server.url}\n")
            door_token = await create_user(server.url, config.admin_key or "", "front-door", "Front door")
            desk_token = await create_user(server.url, config.admin_key or "", "reception", "Reception desk")
            common = {"ice_host_addresses": ["127.0.0.1"], "recording_dir": Path(tmp) / "recordings"}
            door = Calls(server.url, auth_token=door_token, devices=EmulatedDevices(tone_hz=440), **common)
            desk = Calls(server.url, auth_token=desk_token, devices=EmulatedDevices(tone_hz=660), **common)
            door_events, desk_events = EventRecorder("front-door", out), EventRecorder("reception", out)
            door.add_call_event_listener("demo", door_events)
            desk.add_call_event_listener("demo", desk_events)
            await door.login()
            await desk.login()

            call = await door.initiate_call("reception", CallType.VIDEO)
            out.write(f"front-door calls reception: session {call.session_id}, status {call.status}\n")
            incoming = (await desk_events.wait_for("on_incoming_call_received"))[0]
            await desk.accept_call(incoming.session_id)
            await door_events.wait_for("on_outgoing_call_accepted")

            settings = CallSettingsBuilder().build()
            await door.start_session(await door.generate_token(call.session_id), settings)
            await desk.start_session(await desk.generate_token(call.session_id), settings)
            await door_events.wait_for("on_user_joined")
            await asyncio.sleep(duration)

            door_stats = await door.get_session_stats()
            desk_stats = await desk.get_session_stats()
            await door.end_call(call.session_id)
            await desk_events.wait_for("on_call_ended")
            await door.end_session()

            logs = await desk.get_call_logs()
            for name, stats in (("front-door", door_stats), ("reception", desk_stats)):
                out.write(f"stats {name}: {json.dumps(stats.to_json())}\n")
            out.write(f"call log of reception: {json.dumps(to_jsonable(logs.calls[:1]))}\n")
            ok = media_flowed(door_stats) and media_flowed(desk_stats)
            for name, stats in (("front-door", door_stats), ("reception", desk_stats)):
                for uid, p in stats.participants.items():
                    out.write(
                        f"{name} received from {uid}: {p.video_frames_decoded} video frames, "
                        f"{p.audio_frames_decoded} audio frames (level {p.audio_level:.2f}), "
                        f"first frame {p.first_frame_ms or 0:.0f} ms, latency p50 {p.latency_ms_p50 or 0:.0f} ms\n"
                    )
            out.write(
                "demo: media flowed both ways\n" if ok else "demo: FAILED, media did not flow both ways\n"
            )
            return 0 if ok else 1
        finally:
            for client in (door, desk):
                if client is not None:
                    await client.close()
            await server.close()
