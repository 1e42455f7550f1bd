"""The baseline process of bench.memory: one bare aiortc RTCPeerConnection, no SDK, no call server.

Run as `python -m bench._memory_bare`. It sends the same emulated media as the measured endpoint
(640x480@30 test pattern as VP8, a tone as Opus) on one peer connection, offering to an answering
peer connection in the harness process; offer and answer go over stdin/stdout. Commands (one JSON
object per stdin line), mirroring bench._memory_endpoint:

  {"cmd": "call", "warmup": S, "readings": N, "interval": S}   -> {"offer": sdp}, then
  {"cmd": "answer", "sdp": ...}                                -> {"in_call_rss_mb": [...]}
  {"cmd": "cycle", "read": BOOL}                               -> {"offer": sdp}, then
  {"cmd": "answer", "sdp": ...}                                -> {"left": n, "rss_mb": ..., ...}
  {"cmd": "quit"}

A cycle creates the peer connection (and opens the emulated camera and microphone), waits for the
first decoded remote video frame, then stops the tracks and closes the connection, as a session does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench._memory_common import (
    FIRST_FRAME_TIMEOUT,
    FPS,
    HEIGHT,
    WIDTH,
    command,
    emit,
    in_call_readings,
    rss_mb,
    run_child,
    settled_reading,
    wait_for,
)
from bench.bare import SourceTrack
from kiosk.media.emulated import EmulatedDevices


def _loopback_hosts(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


class BarePeer:
    """One peer connection sending emulated media and consuming what it receives."""

    def __init__(self, devices: EmulatedDevices) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.tracks = [
            SourceTrack("audio", devices.open_microphone("emulated-mic")),
            SourceTrack("video", devices.open_camera("emulated-camera-front")),
        ]
        self.video_frames = 0
        self._consumers: list[asyncio.Task[None]] = []
        self.pc.addTransceiver(self.tracks[0], direction="sendrecv")
        video = self.pc.addTransceiver(self.tracks[1], direction="sendrecv")
        wanted = {"video/vp8", "video/rtx"}
        video.setCodecPreferences(
            [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in wanted]
        )
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._consumers.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if isinstance(frame, av.VideoFrame):
                self.video_frames += 1

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def close(self) -> None:
        for track in self.tracks:
            track.stop()
        await self.pc.close()
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)


async def _connect(devices: EmulatedDevices) -> tuple[BarePeer, float]:
    started = time.monotonic()
    peer = BarePeer(devices)
    emit({"offer": await peer.offer()})
    answer = await command()
    if answer.get("cmd") != "answer":
        raise ValueError(f"expected an answer, got {answer!r}")
    await peer.accept(str(answer["sdp"]))
    await wait_for(lambda: peer.video_frames > 0, FIRST_FRAME_TIMEOUT, "decoded remote video")
    return peer, (time.monotonic() - started) * 1000


async def serve() -> None:
    aioice.ice.get_host_addresses = _loopback_hosts  # what Calls(ice_host_addresses=...) does
    devices = EmulatedDevices(width=WIDTH, height=HEIGHT, fps=FPS, tone_hz=440)
    emit({"ready": True, "rss_mb": rss_mb()})
    cycles = 0
    peer: BarePeer | None = None
    try:
        while True:
            message: dict[str, Any] = await command()
            kind = message.get("cmd")
            if kind == "quit":
                return
            if kind == "call":
                peer, _ = await _connect(devices)
                await asyncio.sleep(float(message["warmup"]))
                readings = await in_call_readings(int(message["readings"]), float(message["interval"]))
                emit({"in_call_rss_mb": readings})
            elif kind == "cycle":
                peer, first_frame_ms = await _connect(devices)
                await peer.close()
                peer = None
                cycles += 1
                reading = settled_reading() if message.get("read") else {}
                emit({"left": cycles, **reading, "first_frame_ms": round(first_frame_ms, 1)})
            else:
                raise ValueError(f"unknown command {message!r}")
    finally:
        if peer is not None:
            await peer.close()


def main() -> int:
    return run_child(serve())


if __name__ == "__main__":
    sys.exit(main())
