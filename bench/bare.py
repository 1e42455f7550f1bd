"""Bare aiortc: two RTCPeerConnections in this process sending emulated media to each other.

The baselines' reference for "what aiortc alone costs": no call server, no SDK session, no capture
fan-out. Both peers send the emulated camera and microphone of kiosk.media.emulated sendrecv,
exactly the media the SDK's endpoints send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from fractions import Fraction

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from kiosk.media.devices import AUDIO_SAMPLE_RATE, CameraSource, MicrophoneSource
from kiosk.media.emulated import EmulatedDevices

FrameCallback = Callable[[str, av.VideoFrame], None]


class SourceTrack(MediaStreamTrack):
    """A track reading an emulated source directly: no capture fan-out, no queue."""

    def __init__(self, kind: str, source: CameraSource | MicrophoneSource) -> None:
        super().__init__()
        self.kind = kind
        self._source = source
        self._samples = 0

    async def recv(self) -> av.frame.Frame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._source.next_frame()
        if isinstance(frame, av.AudioFrame):
            frame.pts, frame.time_base = self._samples, Fraction(1, AUDIO_SAMPLE_RATE)
            self._samples += frame.samples
        else:
            frame.pts, frame.time_base = int(time.monotonic() * 90000), Fraction(1, 90000)
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.close()


async def _drain(track: MediaStreamTrack, on_video: FrameCallback | None, sender: str) -> None:
    # Remote audio is consumed too, as the SDK does, so both do the same receive work.
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if on_video is not None and isinstance(frame, av.VideoFrame):
            on_video(sender, frame)


class BarePair:
    """Peer connections "a" (offerer) and "b"; `on_video(sender, frame)` sees every decoded frame."""

    def __init__(
        self,
        devices: tuple[EmulatedDevices, EmulatedDevices],
        on_video: FrameCallback | None = None,
        codec: str | None = None,
    ) -> None:
        self.pcs: list[RTCPeerConnection] = []
        self._tracks: list[SourceTrack] = []
        self._consumers: list[asyncio.Task[None]] = []
        for name, dev in zip(("a", "b"), devices, strict=True):
            # An explicit empty list: aiortc would otherwise try a public STUN server.
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            audio = SourceTrack("audio", dev.open_microphone("emulated-mic"))
            video = SourceTrack("video", dev.open_camera("emulated-camera-front"))
            self._tracks += [audio, video]
            pc.addTransceiver(audio, direction="sendrecv")
            transceiver = pc.addTransceiver(video, direction="sendrecv")
            if codec is not None and name == "a":  # the answer can only pick from the offer
                wanted = {f"video/{codec}".lower(), "video/rtx"}
                capabilities = RTCRtpSender.getCapabilities("video")
                transceiver.setCodecPreferences(
                    [c for c in capabilities.codecs if c.mimeType.lower() in wanted]
                )
            sender = "b" if name == "a" else "a"

            def on_track(track: MediaStreamTrack, sender: str = sender) -> None:
                self._consumers.append(asyncio.ensure_future(_drain(track, on_video, sender)))

            pc.on("track", on_track)
            self.pcs.append(pc)

    async def negotiate(self) -> None:
        """Offer and answer, handed over directly (aiortc puts every candidate in the SDP)."""
        offerer, answerer = self.pcs
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)

    async def close(self) -> None:
        for track in self._tracks:
            track.stop()
        for pc in self.pcs:
            await pc.close()
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
