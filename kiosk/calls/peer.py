"""One remote participant: its peer connection, the media it sends us, and what we measured of it."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import codecs as aiortc_codecs
from aiortc.exceptions import InvalidStateError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from aiortc.sdp import candidate_from_sdp

from kiosk.calls.events import RTCUser
from kiosk.calls.jitter import divert_audio, release_frames_on_marker
from kiosk.calls.nack import RepeatingNackGenerator, repeat_nacks
from kiosk.calls.playout import ParticipantAudio
from kiosk.media.capture import OutgoingTrack
from kiosk.media.pattern import latency_ms, read_stamp
from kiosk.protocol import IceCandidate, IceServer

log = logging.getLogger(__name__)

PLAUSIBLE_LATENCY_MS = 60_000

# Received audio is "silent" below this RMS level (full scale = 1.0); a -50 dBFS floor.
SILENCE_RMS = 0.003
# Media back on a connection after this long without (audio flows 50 times a second, even muted) counts
# as started again: a link that survived a blackout.
MEDIA_GAP_SECONDS = 0.5
LEVEL_WINDOW_FRAMES = 10  # 200 ms of 20 ms frames


@dataclass
class ParticipantStats:
    """What this endpoint received from one remote participant."""

    uid: str
    video_packets_received: int = 0
    video_frames_decoded: int = 0
    audio_packets_received: int = 0
    audio_frames_decoded: int = 0
    audio_samples_decoded: int = 0
    audio_level: float = 0.0  # RMS over the last 200 ms, 0..1
    bytes_received: int = 0
    bytes_sent: int = 0
    round_trip_time_ms: float | None = None
    first_frame_ms: float | None = None  # from start_session to this participant's first decoded frame
    latency_ms_p50: float | None = None  # capture stamp to decode, when the sender stamps its frames
    latency_ms_p95: float | None = None
    connection_state: str = "new"
    last_video_frame_at: float | None = None  # time.monotonic() of the newest decoded frame
    # Across every connection from the participant (kiosk.calls.freezes: WebRTC's definition).
    video_freeze_count: int = 0
    video_freeze_seconds: float = 0.0
    video_freeze_share: float = 0.0
    video_fps: float = 0.0
    # The audio playout (kiosk.calls.playout): 20 ms frames played, and of those rebuilt from FEC,
    # concealed for a lost packet, concealed while waiting for a late one; its target delay.
    audio_frames_played: int = 0
    audio_frames_recovered: int = 0
    audio_frames_concealed: int = 0
    audio_frames_expanded: int = 0
    audio_frames_stretched: int = 0  # played longer to grow the playout buffer (real audio)
    audio_concealed_share: float = 0.0
    audio_late_packets: int = 0
    audio_playout_delay_ms: float | None = None
    audio_playout_delay_max_ms: float | None = None
    # What this participant told us of what we send it: the share of our audio it lost (its latest
    # receiver report), and how many retransmission requests (NACK) it sent for our video.
    audio_loss_reported: float = 0.0
    nacks_received: int = 0
    # Of our requests for its lost video packets: NACKs sent only to ask again (a retransmission that
    # did not come), and packets given up on after asking (kiosk.calls.nack).
    video_nacks_repeated: int = 0
    video_packets_abandoned: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RemoteParticipant:
    user: RTCUser
    audio_muted: bool = False
    video_muted: bool = False
    joined_at: int = 0
    door: bool = False  # it drives a door relay: Calls.open_door can ask it to release


FrameSink = Callable[[str, av.VideoFrame], None]
AudioSink = Callable[[str, av.AudioFrame], None]
# A connection's state changed: (the connection, aiortc's connectionState).
StateSink = Callable[["RemoteMedia", str], None]


def _advertise_opus_fec() -> None:
    """Say in our SDP that we decode Opus' in-band FEC (`useinbandfec=1`): a sender (a browser, another
    kiosk) adds FEC to what it sends us only then. aiortc's codec table is shared, so this is once."""
    for codec in aiortc_codecs.CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters.setdefault("useinbandfec", 1)


_advertise_opus_fec()


def _ice_servers(servers: list[IceServer]) -> list[RTCIceServer]:
    return [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in servers
        if isinstance(s, dict) and s.get("urls")
    ]


def _sending_codec(transceiver: RTCRtpTransceiver) -> str | None:
    # aiortc sends with the first negotiated codec (RTCRtpSender.send takes parameters.codecs[0]).
    codecs = transceiver._codecs
    return codecs[0].mimeType if codecs else None


def _share_encoder(transceiver: RTCRtpTransceiver, track: MediaStreamTrack) -> None:
    """Let a capture track send the shared encoder's packets for the codec this peer negotiated,
    and tell it the peer's bitrate estimates, which aiortc would otherwise give its own encoder."""
    if not isinstance(track, OutgoingTrack):
        return
    track.send_codec(lambda: _sending_codec(transceiver))
    sender = transceiver.sender
    handle_rtcp = sender._handle_rtcp_packet

    async def on_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            with contextlib.suppress(ValueError):
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
                if sender._ssrc in ssrcs:
                    track.set_bitrate_estimate(bitrate)
        elif isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            # The receiver's report of what it lost of our stream: the audio encoder's FEC follows it.
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    track.set_loss_estimate(report.fraction_lost / 256)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            track.nacks_received += 1  # the receiver asked for retransmissions (aiortc resends them)
        await handle_rtcp(packet)

    sender._handle_rtcp_packet = on_rtcp  # type: ignore[method-assign]  # aiortc has no hook for it


def _forward_keyframe_requests(video: RTCRtpTransceiver, on_keyframe_request: Callable[[], None]) -> None:
    """A camera that encodes by itself must hear the receiver's picture-loss requests (PLI/FIR);
    aiortc acts on them only when it encodes, through this hook of its sender."""
    ask_encoder = video.sender._send_keyframe

    def keyframe() -> None:
        ask_encoder()
        on_keyframe_request()

    video.sender._send_keyframe = keyframe  # type: ignore[method-assign]  # aiortc has no hook for it


def _prefer_video_codec(video: RTCRtpTransceiver, video_codec: str) -> None:
    """Offer only `video_codec` ("VP8", "H264") and its retransmissions on this transceiver."""
    wanted = f"video/{video_codec}".lower()
    codecs = [
        c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in (wanted, "video/rtx")
    ]
    video.setCodecPreferences(codecs)


def allow_close_while_connecting(pc: RTCPeerConnection) -> None:
    """aiortc connects in a task of its own, started by setRemoteDescription; closing the connection
    before that task is done (a rebuilt or replaced connection, the switch to an SFU) makes it fail
    with InvalidStateError, which nobody awaits and asyncio logs as an error. Closing is our choice:
    that failure is expected, any other is still raised."""
    connect = pc._RTCPeerConnection__connect  # type: ignore[attr-defined]  # aiortc's private, mangled

    async def connect_or_closed() -> None:
        try:
            await connect()
        except InvalidStateError:
            if pc.connectionState != "closed":
                raise

    pc._RTCPeerConnection__connect = connect_or_closed  # type: ignore[attr-defined]  # as above


class RemoteMedia:
    """The receiving half of a connection to one remote participant: the consumers of its tracks, what
    we measured of it (frames, levels, stamp latencies, the peer connection's stats) and their close.

    `RemotePeer` (mesh: one peer connection each way) and `kiosk.calls.sfu.SfuFeed` (one subscription
    to the participant's feed on an SFU) both receive through it.
    """

    def __init__(
        self,
        participant: RemoteParticipant,
        *,
        ice_servers: list[IceServer],
        session_started_at: float,
        on_video_frame: FrameSink,
        on_audio_frame: AudioSink,
        on_connection_state: StateSink,
        audio: ParticipantAudio | None = None,
    ) -> None:
        self.participant = participant
        self.uid = participant.user.uid
        # An explicit empty list: aiortc would otherwise try a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=_ice_servers(ice_servers)))
        allow_close_while_connecting(self.pc)
        self.stats = ParticipantStats(uid=self.uid)
        self.nacks: RepeatingNackGenerator | None = None  # the video receiver's, once it has one
        self._session_started_at = session_started_at
        self._on_video_frame = on_video_frame
        self._on_audio_frame = on_audio_frame
        self._on_connection_state = on_connection_state
        self._consumers: list[asyncio.Task[None]] = []
        self._latencies: collections.deque[int] = collections.deque(maxlen=600)
        self._levels: collections.deque[float] = collections.deque(maxlen=LEVEL_WINDOW_FRAMES)
        self.remote_tracks: dict[str, MediaStreamTrack] = {}
        self.closed = False
        self.created_at = time.monotonic()
        self.last_media_at: float | None = None  # when the last audio packet or video frame arrived
        # Called when media starts on this connection, or comes back after MEDIA_GAP_SECONDS without.
        self.on_media_started: Callable[[RemoteMedia], None] | None = None
        # The participant's audio playout, shared by every connection from it (kiosk.calls.playout);
        # None: aiortc's own audio path, through this connection's track.
        self.audio = audio
        self._audio_diverted = False

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self.remote_tracks[track.kind] = track
            if track.kind == "video":
                self._consumers.append(asyncio.ensure_future(self._consume_video(track)))
            elif not self._divert_audio_of(track):
                self._consumers.append(asyncio.ensure_future(self._consume_audio(track)))

        @self.pc.on("connectionstatechange")
        def _on_state() -> None:
            self.stats.connection_state = self.pc.connectionState
            self._on_connection_state(self, self.pc.connectionState)

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.VideoFrame):
                continue  # a received track brings decoded frames (aiortc types recv() for any track)
            now = self._media_in()
            if self.stats.first_frame_ms is None:
                self.stats.first_frame_ms = (now - self._session_started_at) * 1000
            self.stats.video_frames_decoded += 1
            self.stats.last_video_frame_at = now
            stamp = read_stamp(frame)
            if stamp is not None and (latency := latency_ms(stamp)) < PLAUSIBLE_LATENCY_MS:
                self._latencies.append(latency)  # (a picture damaged by loss can misread as years)
            self._on_video_frame(self.uid, frame)

    def _media_in(self) -> float:
        now = time.monotonic()
        before, self.last_media_at = self.last_media_at, now
        if (before is None or now - before >= MEDIA_GAP_SECONDS) and self.on_media_started is not None:
            try:
                self.on_media_started(self)
            except Exception:  # a listener's fault must not stop the media
                log.exception("media-started callback failed")
        return now

    def _divert_audio_of(self, track: MediaStreamTrack) -> bool:
        """Send the track's packets to the participant's playout; False where there is none, or this
        aiortc does not let it (then aiortc's own audio path is used)."""
        if self.audio is None:
            return False
        receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        self._audio_diverted = receiver is not None and divert_audio(receiver, self._audio_packet)
        return self._audio_diverted

    def _audio_packet(self, timestamp: int, payload: bytes) -> None:
        # On the loop, as aiortc receives it: media has come (a muted sender sends silence packets).
        self._media_in()
        self.stats.audio_frames_decoded += 1
        self.stats.audio_samples_decoded += 960
        if self.audio is not None and not self.closed:
            self.audio.push(timestamp, payload)

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        """aiortc's own audio path (no participant playout, or an aiortc whose buffer it cannot replace)."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue  # as for video
            self._media_in()
            self._audio_frame(frame)

    def _audio_frame(self, frame: av.AudioFrame) -> None:
        samples = frame.to_ndarray().ravel().astype(np.float64)
        self.stats.audio_frames_decoded += 1
        self.stats.audio_samples_decoded += frame.samples
        rms = math.sqrt(float(samples @ samples) / samples.size) / 32768.0 if samples.size else 0.0
        self._levels.append(rms)
        self._on_audio_frame(self.uid, frame)

    def age(self) -> float:
        return time.monotonic() - self.created_at

    def receiving(self, window: float) -> bool:
        """Whether media (audio flows even when muted) arrived within the last `window` seconds."""
        return self.last_media_at is not None and time.monotonic() - self.last_media_at < window

    @property
    def audio_level(self) -> float:
        if self._audio_diverted and self.audio is not None:
            return self.audio.level
        return max(self._levels) if self._levels else 0.0

    async def collect_stats(self) -> ParticipantStats:
        s = self.stats
        s.audio_level = self.audio_level
        if self._audio_diverted and self.audio is not None:
            p = self.audio.stats
            s.audio_frames_played = p.frames - p.silent
            s.audio_frames_recovered, s.audio_frames_concealed = p.recovered, p.concealed
            s.audio_frames_expanded, s.audio_late_packets = p.expanded, p.late
            s.audio_frames_stretched = p.stretched
            s.audio_concealed_share = p.concealed_share
            s.audio_playout_delay_ms = p.target_delay * 1000
            s.audio_playout_delay_max_ms = p.max_target_delay * 1000
        if self.nacks is not None:
            s.video_nacks_repeated, s.video_packets_abandoned = self.nacks.repeats, self.nacks.abandoned
        if self._latencies:
            ordered = sorted(self._latencies)
            s.latency_ms_p50 = float(statistics.median(ordered))
            s.latency_ms_p95 = float(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))])
        if not self.closed:
            try:
                report = await self.pc.getStats()
            except Exception:  # a peer connection that is closing has no stats; keep the last ones
                report = None
            if report is not None:
                self._read_report(report)
        return dataclasses.replace(s)  # a snapshot: later changes do not show through

    def _read_report(self, report: Any) -> None:
        s = self.stats
        for item in report.values():
            kind = getattr(item, "kind", None)
            if item.type == "inbound-rtp":
                if kind == "video":
                    s.video_packets_received = item.packetsReceived
                elif kind == "audio":
                    s.audio_packets_received = item.packetsReceived
            elif item.type == "remote-inbound-rtp" and item.roundTripTime is not None:
                s.round_trip_time_ms = item.roundTripTime * 1000
            elif item.type == "transport":
                s.bytes_received = item.bytesReceived
                s.bytes_sent = item.bytesSent

    async def close(self) -> None:
        """Close the connection (`RemotePeer` and `SfuFeed` close their own parts first)."""
        if self.closed:
            return
        self.closed = True
        await self._close_media()

    async def _close_media(self) -> None:
        """Close the peer connection, then stop the track consumers (after `closed` is set)."""
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in self._consumers:
            task.cancel()
        for task in self._consumers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class RemotePeer(RemoteMedia):
    """The peer connection to one remote participant, and the consumers of its tracks."""

    def __init__(
        self,
        participant: RemoteParticipant,
        *,
        audio_track: MediaStreamTrack,
        video_track: MediaStreamTrack,
        ice_servers: list[IceServer],
        video_codec: str | None,
        session_started_at: float,
        on_video_frame: FrameSink,
        on_audio_frame: AudioSink,
        on_connection_state: StateSink,
        on_keyframe_request: Callable[[], None] | None = None,
        audio: ParticipantAudio | None = None,
    ) -> None:
        super().__init__(
            participant,
            ice_servers=ice_servers,
            session_started_at=session_started_at,
            on_video_frame=on_video_frame,
            on_audio_frame=on_audio_frame,
            on_connection_state=on_connection_state,
            audio=audio,
        )
        self._local_tracks = (audio_track, video_track)
        sound = self.pc.addTransceiver(audio_track, direction="sendrecv")
        video = self.pc.addTransceiver(video_track, direction="sendrecv")
        for transceiver, track in ((sound, audio_track), (video, video_track)):
            _share_encoder(transceiver, track)
        release_frames_on_marker(video.receiver)  # a frame is decoded when complete, not 33 ms later
        self.nacks = repeat_nacks(video.receiver)  # a lost retransmission is asked for again
        if on_keyframe_request is not None:
            _forward_keyframe_requests(video, on_keyframe_request)
        if video_codec:
            _prefer_video_codec(video, video_codec)
        self.lock = asyncio.Lock()  # negotiation steps for this peer run one at a time
        self.offered_at: float | None = None  # when this side made its offer, if it did
        # Names this connection's offer; the answer echoes it, so an answer to an older offer (one
        # delayed behind a dead connection) is never applied to this one.
        self.negotiation_id = secrets.token_hex(6)
        # Candidates a trickling peer (a browser) sent before its description was applied.
        self._early_candidates: list[RTCIceCandidate | None] = []

    async def add_remote_candidate(self, init: IceCandidate | None) -> None:
        """A candidate the other side trickled (an RTCIceCandidateInit; None or an empty candidate
        ends them). Kept until the remote description is set; one that cannot be read is dropped."""
        try:
            candidate = _parse_candidate(init)
        except (ValueError, KeyError, IndexError, TypeError, AssertionError) as exc:  # aiortc asserts
            log.info("trickled candidate from %s ignored (%r): %r", self.uid, exc, init)
            return
        if self.pc.remoteDescription is None:
            self._early_candidates.append(candidate)
        else:
            await self._add_candidate(candidate)

    async def _add_candidate(self, candidate: RTCIceCandidate | None) -> None:
        if self.closed:
            return
        try:
            await self.pc.addIceCandidate(candidate)
        except (ValueError, InvalidStateError) as exc:
            log.info("trickled candidate from %s not added: %s", self.uid, exc)

    async def _add_early_candidates(self) -> None:
        early, self._early_candidates = self._early_candidates, []
        for candidate in early:
            await self._add_candidate(candidate)

    async def create_offer(self) -> str:
        self.offered_at = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer_offer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self._add_early_candidates()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        await self._add_early_candidates()

    @property
    def signaling_state(self) -> str:
        return str(self.pc.signalingState)

    def awaiting_answer(self, within: float) -> bool:
        """Whether this side offered less than `within` seconds ago and has no answer yet."""
        return (
            self.offered_at is not None
            and self.pc.signalingState == "have-local-offer"
            and time.monotonic() - self.offered_at < within
        )

    async def collect_stats(self) -> ParticipantStats:
        for track in self._local_tracks:
            if isinstance(track, OutgoingTrack):
                if track.kind == "audio":
                    self.stats.audio_loss_reported = track.loss_reported
                else:
                    self.stats.nacks_received = track.nacks_received
        return await super().collect_stats()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for track in self._local_tracks:
            track.stop()
        await self._close_media()


def _parse_candidate(init: IceCandidate | None) -> RTCIceCandidate | None:
    """An RTCIceCandidateInit as aiortc's candidate; None for the end of candidates."""
    if init is None or not init.get("candidate"):
        return None
    line = str(init["candidate"])
    candidate = candidate_from_sdp(line.split(":", 1)[1] if line.startswith("candidate:") else line)
    mid, index = init.get("sdpMid"), init.get("sdpMLineIndex")
    candidate.sdpMid = None if mid is None else str(mid)
    candidate.sdpMLineIndex = None if index is None else int(index)
    if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
        raise ValueError("neither sdpMid nor sdpMLineIndex")
    return candidate


@dataclass
class SessionStats:
    """`get_session_stats()`: per remote participant, and the session's own figures."""

    session_id: str
    first_remote_frame_ms: float | None  # start_session to the first decoded remote frame, any participant
    participants: dict[str, ParticipantStats] = field(default_factory=dict)
    frames_captured: int = 0
    audio_frames_captured: int = 0
    audio_fec_packets: int = 0  # Opus packets we sent carrying FEC for the one before
    audio_fec_protection: int = 0  # the loss, in percent, our Opus encoder protects against now
    video_sent_size: tuple[int, int] | None = None  # the picture we send now (smaller on a thin link)
    video_sent_bitrate: int | None = None  # what our video encoder runs at now, bits per second
    video_picture_changes: int = 0  # how often the picture size or frame rate followed the bitrate
    video_sent_loss: float | None = None  # the share of our video the receivers lose, averaged (worst)
    video_quantizer: float | None = None  # our video encoder's mean quantizer lately (coarser: higher)

    def to_json(self) -> dict[str, Any]:
        return {
            "sessionId": self.session_id,
            "firstRemoteFrameMs": self.first_remote_frame_ms,
            "framesCaptured": self.frames_captured,
            "audioFramesCaptured": self.audio_frames_captured,
            "audioFecPackets": self.audio_fec_packets,
            "audioFecProtection": self.audio_fec_protection,
            "videoSentSize": list(self.video_sent_size) if self.video_sent_size else None,
            "videoSentBitrate": self.video_sent_bitrate,
            "videoPictureChanges": self.video_picture_changes,
            "videoSentLoss": self.video_sent_loss,
            "videoQuantizer": self.video_quantizer,
            "participants": {uid: p.to_json() for uid, p in self.participants.items()},
        }
