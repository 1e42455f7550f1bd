"""`kiosk demo`: a whole call on one machine with no hardware.

Starts an embedded call server, creates two users, has the front door call the reception desk, the
desk answer, runs a short video call with emulated camera and microphone, prints the events and the
stats, and exits 0 only if media flowed both ways.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import IO

import aiohttp

from kiosk.calls import Calls, SessionStats
from kiosk.config import load_config
from kiosk.controller import KioskController, Phase
from kiosk.device import KioskDevices, build_devices
from kiosk.endpoint import EventRecorder, to_jsonable
from kiosk.hardware import Controls, start_controls
from kiosk.media.devices import MediaDevices
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


async def run_demo(
    duration: float = 5.0,
    data_dir: Path | None = None,
    out: IO[str] = sys.stdout,
    config_path: Path | None = None,
) -> int:
    """The demo call; with `config_path`, the front door uses that device config (its devices, and its
    buttons, keyboard and control socket act on the call)."""
    config = load_config(config_path) if config_path is not None else None  # ConfigError: the caller's
    with tempfile.TemporaryDirectory(prefix="kiosk-demo-") as tmp:
        admin_key = secrets.token_urlsafe(24)
        server = await start_server(
            ServerConfig(host="127.0.0.1", port=0, data_dir=data_dir or Path(tmp), admin_key=admin_key)
        )
        door = desk = None
        controls: Controls | None = None
        try:
            out.write(f"call server on {server.url}\n")
            door_token = await create_user(server.url, admin_key, "front-door", "Front door")
            desk_token = await create_user(server.url, admin_key, "reception", "Reception desk")
            common = {"ice_host_addresses": ["127.0.0.1"], "recording_dir": Path(tmp) / "recordings"}
            door_devices: MediaDevices = EmulatedDevices(tone_hz=440)
            codec = None
            if config is not None:
                door_devices, choices = build_devices(config)
                codec = choices.video_codec
            door = Calls(server.url, auth_token=door_token, devices=door_devices, video_codec=codec, **common)
            desk = Calls(server.url, auth_token=desk_token, devices=EmulatedDevices(tone_hz=660), **common)
            door.add_call_event_listener("demo", EventRecorder("front-door", out))
            desk.add_call_event_listener("demo", EventRecorder("reception", out))
            await door.login()
            await desk.login()
            door_kiosk = KioskController(
                door, volume=door_devices.volume if isinstance(door_devices, KioskDevices) else None
            )
            desk_kiosk = KioskController(desk, auto_answer_after=0.5)  # the desk answers by itself
            if config is not None:
                controls = await start_controls(config, door_kiosk)
                out.write(
                    "front-door controls: keys m mute, v video, e end, E end (hold), a audio mode, y answer, n reject, c call\n"
                )

            out.write("front-door calls reception\n")
            await door_kiosk.call("reception")
            if not (
                await door_kiosk.wait_for_phase(Phase.IN_CALL, timeout=15)
                and await desk_kiosk.wait_for_phase(Phase.IN_CALL, timeout=15)
            ):
                out.write(f"demo: FAILED, no call: {door_kiosk.state.message}\n")
                return 1
            # The call runs for `duration`, unless someone hangs up first (the end key, with --config).
            await door_kiosk.wait_for_phase(Phase.IDLE, timeout=duration)
            if door_kiosk.state.phase == Phase.IN_CALL:
                await door_kiosk.hang_up()
            await desk_kiosk.wait_for_phase(Phase.IDLE, timeout=15)
            await desk.end_session()

            door_stats, desk_stats = door.last_session_stats, desk.last_session_stats
            logs = await desk.get_call_logs()
            out.write(f"call log of reception: {json.dumps(to_jsonable(logs.calls[:1]))}\n")
            ok = bool(door_stats and desk_stats and media_flowed(door_stats) and media_flowed(desk_stats))
            for name, stats in (("front-door", door_stats), ("reception", desk_stats)):
                if stats is None:
                    continue
                out.write(f"stats {name}: {json.dumps(stats.to_json())}\n")
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
            if controls is not None:
                await controls.close()
            for client in (door, desk):
                if client is not None:
                    await client.close()
            await server.close()
