"""`kiosk demo`: a whole call on one machine with no hardware.

Starts an embedded call server, creates two users, has the front door call the reception desk, the
desk answer, runs a short video call with emulated camera and microphone, prints the events and the
stats, and exits 0 only if media flowed both ways. With `--config`, the front door is the kiosk that
config describes, assembled as `kiosk run` assembles it (`kiosk.assembly`), on the demo's own server.
"""

from __future__ import annotations

import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import IO

import aiohttp

from kiosk.assembly import LOOPBACK, Kiosk, KioskOptions
from kiosk.calls import Calls, SessionStats
from kiosk.config import KioskConfig, load_config
from kiosk.controller import KioskController, Phase
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


def door_options(
    config: KioskConfig | None, server_url: str, token: str, tmp: Path, out: IO[str]
) -> KioskOptions:
    """The front door on the demo's server, offering only loopback to ICE; with no config, the demo's
    emulated device (a 440 Hz tone) and recordings in the demo's directory."""
    return KioskOptions(
        servers=(server_url,),
        auth_token=token,
        ice_addresses=LOOPBACK,
        recording_dir=tmp / "recordings" if config is None else None,
        devices=EmulatedDevices(tone_hz=440) if config is None else None,
        listeners={"demo": EventRecorder("front-door", out)},
    )


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
        door: Kiosk | None = None
        desk: Calls | None = None
        try:
            out.write(f"call server on {server.url}\n")
            door_token = await create_user(server.url, admin_key, "front-door", "Front door")
            desk_token = await create_user(server.url, admin_key, "reception", "Reception desk")
            door = Kiosk(config, door_options(config, server.url, door_token, Path(tmp), out))
            await door.start()
            door_kiosk = door.controller
            if door.controls is not None:
                out.write(
                    "front-door controls: keys m mute, v video, e end, E end (hold), a audio mode, y answer, n reject, c call\n"
                )
            # The demo's own second endpoint: a plain SDK client on an emulated device (a 660 Hz tone).
            desk = Calls(
                server.url,
                auth_token=desk_token,
                devices=EmulatedDevices(tone_hz=660),
                ice_host_addresses=list(LOOPBACK),
                recording_dir=Path(tmp) / "recordings",
            )
            desk.add_call_event_listener("demo", EventRecorder("reception", out))
            await desk.login()
            desk_kiosk = KioskController(desk, auto_answer_after=0.5)  # the desk answers by itself

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

            door_stats, desk_stats = door.calls.last_session_stats, desk.last_session_stats
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
            if door is not None:
                await door.close()
            if desk is not None:
                await desk.close()
            await server.close()
