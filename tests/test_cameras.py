"""Camera backends: picamera2 (against the stand-in in tests/stand_ins), V4L2 (through PyAV, fed from
lavfi since this machine has no /dev/video*), the configured CameraSet, H.264 passthrough to a real
aiortc receiver, and switching cameras under one VideoCapture track."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.codecs import h264 as aiortc_h264
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

import kiosk.media.picamera as picamera_module
from kiosk.calls.ice import restrict_host_addresses
from kiosk.config import CameraSection
from kiosk.device import KioskDevices
from kiosk.media.cameras import CameraSet, LatestHandoff, PacketHandoff
from kiosk.media.capture import VideoCapture
from kiosk.media.devices import (
    AUDIO_MODES,
    CameraSource,
    DeviceError,
)
from kiosk.media.emulated import EmulatedDevices
from kiosk.media.pattern import TestPattern, read_stamp
from kiosk.media.picamera import PiCamera, picamera_cameras
from kiosk.media.v4l2 import V4l2Camera, v4l2_open_options

NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8


# ----------------------------------------------------------------------------- helpers


def pi_section(**overrides: Any) -> CameraSection:
    values: dict[str, Any] = {"id": "pi", "backend": "picamera2", "width": 320, "height": 240, "fps": 30}
    values.update(overrides)
    return CameraSection(**values)


@contextlib.asynccontextmanager
async def opened(camera: CameraSource) -> AsyncIterator[CameraSource]:
    try:
        yield camera
    finally:
        camera.close()
        wait = getattr(camera, "wait_closed", None)
        if wait is not None:
            assert await asyncio.to_thread(wait, 3.0), "the camera thread did not finish"


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream."""
    units, i = [], data.find(b"\x00\x00\x01")
    while i != -1:
        start = i + 3
        i = data.find(b"\x00\x00\x01", start)
        end = len(data) if i == -1 else (i - 1 if data[i - 1] == 0 else i)
        units.append(data[start:end])
    return units


def nal_types(data: bytes) -> list[int]:
    return [unit[0] & 0x1F for unit in nal_units(data) if unit]


def expected_picture(sim: Any, frame: av.VideoFrame) -> tuple[float, np.ndarray]:
    stamp = read_stamp(frame)
    assert stamp is not None, "the frame does not carry the stand-in's test pattern"
    found = sim.lookup(stamp)
    assert found is not None, f"no frame with stamp {stamp} was drawn"
    return found


def camera_devices(cameras: CameraSet) -> KioskDevices:
    """The configured cameras with emulated audio, composed as the kiosk composes its device."""
    return KioskDevices(cameras, EmulatedDevices(), list(AUDIO_MODES))


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- picamera2: pictures


@pytest.mark.parametrize(
    ("width", "height"),
    [(360, 240), (320, 270)],  # 360: stride padded to 384; 270: not a multiple of 4 (the copying path)
)
async def test_pi_frames_are_yuv420_at_size_and_rate_with_one_copy(pi: Any, width: int, height: int) -> None:
    sim = pi.add_camera()
    camera = PiCamera(pi_section(width=width, height=height, fps=30))
    async with opened(camera):
        await camera.next_frame()  # the first frame includes opening and starting the camera
        arrivals, latencies = [], []
        for _ in range(15):
            frame = await camera.next_frame()
            arrivals.append(time.monotonic())
            assert (frame.format.name, frame.width, frame.height) == ("yuv420p", width, height)
            drawn_at, picture = expected_picture(sim, frame)
            latencies.append(time.monotonic() - drawn_at)
            assert np.array_equal(frame.to_ndarray(), picture), "pixels differ from what the sensor drew"
            if height % 4 == 0:
                # Wrapped, not copied again: the frame's rows are the camera's padded rows.
                assert [p.line_size for p in frame.planes] == [384, 192, 192]
        config = sim.configs[-1]
        assert config["main"]["format"] == "YUV420" and config["main"]["size"] == (width, height)
        assert config["controls"]["FrameDurationLimits"] == (33333, 33333)
        assert config["queue"] is False, "a queued request would hand out frames one frame late"
    interval = statistics.mean(b - a for a, b in zip(arrivals, arrivals[1:], strict=False))
    assert 0.027 < interval < 0.040, f"frames every {interval * 1000:.1f} ms, expected about 33"
    assert statistics.median(latencies) < 0.010, f"sensor-to-loop latency {latencies}"
    handed = camera.handoff.delivered + camera.handoff.dropped
    assert sim.stats.copies - handed in (0, 1), "one copy out of the camera buffer per frame"
    assert sim.stats.max_held <= 1 and sim.stats.starved == 0, "requests must go back to the camera at once"


async def test_pi_newest_frame_wins_when_the_consumer_or_the_loop_is_slow(pi: Any) -> None:
    sim = pi.add_camera()
    camera = PiCamera(pi_section(fps=30))
    async with opened(camera):
        await camera.next_frame()
        handoff = camera.handoff
        dropped = handoff.dropped
        await asyncio.sleep(0.3)  # a slow consumer
        started = time.monotonic()
        frame = await camera.next_frame()
        assert time.monotonic() - started < 0.01, "a frame was waiting: no wait for the next one"
        drawn_at, _ = expected_picture(sim, frame)
        assert time.monotonic() - drawn_at < 0.05, "the held frame must be the newest, not an old one"
        assert handoff.dropped - dropped >= 6

        wakeups = handoff.wakeups
        time.sleep(0.3)  # noqa: ASYNC251 - on purpose: the loop blocked while the thread keeps putting
        assert handoff.wakeups - wakeups <= 1, "at most one wake-up may be queued on a busy loop"
        frame = await camera.next_frame()
        drawn_at, _ = expected_picture(sim, frame)
        assert time.monotonic() - drawn_at < 0.05
        assert sim.stats.max_held <= 1 and sim.stats.starved == 0


async def test_pi_failure_mid_stream_reported_and_recovered_through_capture(
    pi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(picamera_module, "default_stall_timeout", lambda fps: 0.3)
    sim = pi.add_camera("imx219")
    devices = camera_devices(CameraSet([pi_section(id="desk", label="Desk camera")]))
    errors: list[Exception] = []
    restored: list[bool] = []
    capture = VideoCapture(devices, "desk", errors.append)
    capture.on_restored = lambda: restored.append(True)
    capture.set_enabled(True)
    track = capture.subscribe()
    try:
        await asyncio.wait_for(track.recv(), 3)

        pi.fail(sim)  # frames stop, the camera stays listed (a loose cable)
        await wait_until(lambda: errors, 2, "the failure to be reported")
        assert isinstance(errors[0], DeviceError) and errors[0].device_id == "desk"
        assert "desk" in str(errors[0]) and "imx219" in str(errors[0])
        # Released promptly (before the capture's retry), or it could never be opened again.
        await wait_until(lambda: sim.owner is None, 0.8, "the failed camera to be released")

        pi.restore(sim)
        track._frames.clear()
        frame = await asyncio.wait_for(track.recv(), 4)  # reopened after the retry interval
        assert frame.width == 320 and restored == [True] and len(errors) == 1

        pi.unplug(sim)
        await wait_until(lambda: len(errors) == 2, 2, "the unplug to be reported")
        assert [d.device_id for d in devices.video_inputs()] == []
        await asyncio.sleep(1.3)  # a reopen attempt fails meanwhile, and is not reported again
        assert len(errors) == 2

        pi.plug(sim)
        track._frames.clear()
        await asyncio.wait_for(track.recv(), 4)
        assert restored == [True, True] and len(errors) == 2
        assert sim.stats.opens >= 3
    finally:
        await capture.close()


async def test_pi_missing_camera_missing_picamera2_and_a_busy_camera(
    pi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DeviceError, match="pi: .*camera 0 is not connected"):
        PiCamera(pi_section())
    pi.add_camera()
    with pytest.raises(DeviceError, match="camera 1 is not connected"):
        PiCamera(pi_section(camera_num=1))

    monkeypatch.setattr(picamera_module, "_RELEASE_WAIT_SECONDS", 0.3)
    first = PiCamera(pi_section())
    async with opened(first):
        await first.next_frame()
        second = PiCamera(pi_section(id="again"))
        async with opened(second):
            with pytest.raises(DeviceError, match="again: .*still in use"):
                await second.next_frame()
    # Closed a moment ago: a new open waits for the release instead of failing.
    third = PiCamera(pi_section())
    async with opened(third):
        await third.next_frame()

    monkeypatch.setitem(sys.modules, "picamera2", None)  # as off a Pi: the import fails
    assert picamera_cameras() == []
    with pytest.raises(DeviceError, match="picamera2 is not available"):
        PiCamera(pi_section())


# ----------------------------------------------------------------------------- picamera2: H.264


async def test_pi_passthrough_packets_keyframes_on_interval_with_headers(pi: Any) -> None:
    sim = pi.add_camera()
    camera = PiCamera(pi_section(h264_passthrough=True, keyframe_interval=10))
    async with opened(camera):
        packets = [await camera.next_frame() for _ in range(32)]
        assert sim.encoders[-1]["repeat"] is True and sim.encoders[-1]["iperiod"] == 10
        assert all(isinstance(p, av.Packet) and p.time_base == Fraction(1, 90000) for p in packets)
        # pts from the sensor's timestamps: whole frame times of 3000 ticks (more if the machine was
        # too busy for the simulated sensor, which then loses frames as a real one would).
        steps = [b.pts - a.pts for a, b in zip(packets, packets[1:], strict=False)]
        assert all(s > 2700 and abs(s - 3000 * round(s / 3000)) < 300 for s in steps), f"pts steps {steps}"
        keyframes = [i for i, p in enumerate(packets) if p.is_keyframe]
        assert keyframes == [0, 10, 20, 30]
        for i, packet in enumerate(packets):
            types = nal_types(bytes(packet))
            if i in keyframes:
                assert {NAL_SPS, NAL_PPS, NAL_IDR} <= set(types), f"keyframe {i}: {types}"
                sps = next(u for u in nal_units(bytes(packet)) if u[0] & 0x1F == NAL_SPS)
                assert sps[1] == 66, "baseline profile, as aiortc and browsers offer"
            else:
                assert not {NAL_SPS, NAL_PPS, NAL_IDR} & set(types), f"frame {i}: {types}"

        # A consumer too slow for 0.4 s: the backlog overflows, the camera is asked for a keyframe,
        # and what comes next starts at one and decodes, with nothing missing after it.
        await asyncio.sleep(0.4)
        resumed = [await camera.next_frame() for _ in range(8)]
        assert camera.handoff.gaps >= 1 and camera.keyframes_requested >= 1 and resumed[0].is_keyframe
        assert all(b.pts > a.pts for a, b in zip(resumed, resumed[1:], strict=False))
        decoder = av.CodecContext.create("h264", "r")
        stamps = [read_stamp(f) for p in resumed for f in decoder.decode(p)]
        assert len(stamps) == 8 and all(s is not None and sim.lookup(s) for s in stamps)
        assert stamps == sorted(set(stamps))

        assert camera.request_keyframe()
        following = [await camera.next_frame() for _ in range(4)]
        assert any(p.is_keyframe for p in following), "a forced keyframe comes within a few frames"


async def test_packet_handoff_drops_to_the_next_keyframe_on_overflow() -> None:
    gaps: list[bool] = []
    handoff = PacketHandoff(asyncio.get_running_loop(), max_pending=3, on_gap=lambda: gaps.append(True))

    def packet(key: bool, n: int) -> av.Packet:
        p = av.Packet(bytes([n]))
        p.is_keyframe = key
        return p

    handoff.put(packet(False, 0))  # nothing decodable before a keyframe
    for n, key in enumerate([True, False, False], start=1):
        handoff.put(packet(key, n))
    assert [bytes(await handoff.get(1))[0] for _ in range(3)] == [1, 2, 3]
    for n in range(4, 7):
        handoff.put(packet(False, n))
    handoff.put(packet(False, 7))  # overflow: the backlog and this one go
    handoff.put(packet(False, 8))
    handoff.put(packet(True, 9))
    handoff.put(packet(False, 10))
    assert gaps == [True]
    assert [bytes(await handoff.get(1))[0] for _ in range(2)] == [9, 10]
    with pytest.raises(TimeoutError):
        await handoff.get(0.05)
    latest: LatestHandoff[int] = LatestHandoff(asyncio.get_running_loop())
    for n in range(5):
        latest.put(n)
    assert await latest.get(1) == 4 and latest.dropped == 4 and latest.wakeups == 1


class PacketTrack(MediaStreamTrack):
    """An outgoing track carrying the camera's own H.264: recv() returns av.Packet."""

    kind = "video"

    def __init__(self, camera: CameraSource) -> None:
        super().__init__()
        self.camera = camera

    async def recv(self) -> Any:
        try:
            return await self.camera.next_frame()
        except DeviceError as exc:
            raise MediaStreamError from exc


async def test_pi_passthrough_is_sent_without_reencoding_and_decodes_at_aiortc(
    pi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded, packed = [], []
    received_nals: list[list[int]] = []
    original_encode, original_pack = aiortc_h264.H264Encoder.encode, aiortc_h264.H264Encoder.pack
    original_decode = aiortc_h264.H264Decoder.decode

    def encode(self: Any, frame: Any, force_keyframe: bool = False) -> Any:
        encoded.append(1)
        return original_encode(self, frame, force_keyframe)

    def pack(self: Any, packet: av.Packet) -> Any:
        packed.append(1)
        return original_pack(self, packet)

    def decode(self: Any, encoded_frame: Any) -> Any:
        received_nals.append(nal_types(encoded_frame.data))
        return original_decode(self, encoded_frame)

    monkeypatch.setattr(aiortc_h264.H264Encoder, "encode", encode)
    monkeypatch.setattr(aiortc_h264.H264Encoder, "pack", pack)
    monkeypatch.setattr(aiortc_h264.H264Decoder, "decode", decode)

    sim = pi.add_camera()
    camera = PiCamera(pi_section(h264_passthrough=True, keyframe_interval=10))
    restrict_host_addresses(["127.0.0.1"])
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    frames: list[av.VideoFrame] = []
    got_enough = asyncio.Event()

    @receiver.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def read() -> None:
            with contextlib.suppress(Exception):
                while True:
                    frames.append(await track.recv())
                    if len(frames) >= 30:
                        got_enough.set()

        asyncio.ensure_future(read())

    try:
        transceiver = sender.addTransceiver(PacketTrack(camera), direction="sendonly")
        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == "video/H264"]
        transceiver.setCodecPreferences(h264)
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        assert "H264" in receiver.localDescription.sdp and "VP8" not in receiver.localDescription.sdp
        await asyncio.wait_for(got_enough.wait(), 8)
    finally:
        await sender.close()
        await receiver.close()
        restrict_host_addresses(None)
        camera.close()
        assert await asyncio.to_thread(camera.wait_closed, 3)

    assert encoded == [] and len(packed) >= 30, "the camera's H.264 must be packed, never re-encoded"
    assert all((f.width, f.height) == (320, 240) for f in frames)
    stamps = [read_stamp(f.reformat(format="yuv420p")) for f in frames]
    assert all(s is not None and sim.lookup(s) is not None for s in stamps), (
        "decoded pictures are the camera's"
    )
    assert stamps == sorted(set(stamps)), "every decoded frame is a new picture, in order"
    idr = [i for i, types in enumerate(received_nals) if NAL_IDR in types]
    assert len(idr) >= 3 and idr[0] == 0, f"the stream starts at a keyframe, then one every 10: {idr}"
    assert all(b - a == 10 for a, b in zip(idr, idr[1:], strict=False)), f"keyframes at {idr}"
    assert all({NAL_SPS, NAL_PPS} <= set(received_nals[i]) for i in idr), "SPS/PPS repeated on each keyframe"


# ----------------------------------------------------------------------------- V4L2 through PyAV


def usb_section(**overrides: Any) -> CameraSection:
    values: dict[str, Any] = {
        "id": "usb",
        "backend": "v4l2",
        "device": "/dev/video0",
        "width": 320,
        "height": 240,
        "fps": 30,
    }
    values.update(overrides)
    return CameraSection(**values)


@pytest.fixture
def mjpeg_clip(tmp_path: Path) -> Path:
    """One second of the test pattern as MJPEG (what most USB cameras send), stamps 5000..5029."""
    path = tmp_path / "clip.mkv"
    pattern = TestPattern(320, 240)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuvj422p"
        for i in range(30):
            frame = pattern.draw(i, stamp_ms=5000 + i).reformat(format="yuvj422p")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("source", ["yuyv422", "yuv420p", "mjpeg"])
async def test_v4l2_frames_paced_and_converted_only_when_needed(source: str, mjpeg_clip: Path) -> None:
    if source == "mjpeg":
        url = f"movie={mjpeg_clip},realtime"
    else:
        url = f"testsrc2=size=320x240:rate=30,format={source},realtime"
    camera = V4l2Camera(usb_section(), demuxer="lavfi", url=url)
    async with opened(camera):
        frames, arrivals = [], []
        for _ in range(12):
            frames.append(await camera.next_frame())
            arrivals.append(time.monotonic())
    assert all((f.format.name, f.width, f.height) == ("yuv420p", 320, 240) for f in frames)
    # Paced by the source (a non-real-time source would come every millisecond or so); under load
    # lavfi's realtime filter catches up in bursts, hence the loose bounds.
    interval = (arrivals[-1] - arrivals[1]) / (len(arrivals) - 2)
    assert 0.020 < interval < 0.050, f"frames every {interval * 1000:.1f} ms"
    if source == "yuv420p":
        assert camera.source_format == "yuv420p" and camera.conversions == 0
    else:
        assert camera.source_format in ("yuyv422", "yuvj422p") and camera.conversions == camera.frames_read
    if source == "mjpeg":
        stamps = [read_stamp(f) for f in frames]
        assert stamps == list(range(5000, 5012)), "decoded and converted pictures keep their content"
    else:
        assert not np.array_equal(frames[0].to_ndarray(), frames[-1].to_ndarray()), "a moving picture"


async def test_v4l2_newest_wins_and_end_of_stream_is_a_device_error() -> None:
    url = "testsrc2=size=320x240:rate=30:duration=0.8,format=yuyv422,realtime"
    camera = V4l2Camera(usb_section(), demuxer="lavfi", url=url, stall_timeout=2.0)
    async with opened(camera):
        await camera.next_frame()
        read_before = camera.frames_read
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await camera.next_frame()
        assert time.monotonic() - started < 0.01
        assert camera.frames_read - read_before >= 7 and camera.handoff.dropped >= 6
        with pytest.raises(DeviceError, match="usb: stopped delivering"):
            for _ in range(40):
                await camera.next_frame()


async def test_v4l2_missing_device_and_a_node_that_is_not_a_camera(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="usb: /dev/video-missing does not exist"):
        V4l2Camera(usb_section(device="/dev/video-missing"))
    not_a_camera = tmp_path / "video7"
    not_a_camera.write_bytes(b"\0" * 64)
    camera = V4l2Camera(usb_section(device=str(not_a_camera)))  # the real v4l2 demuxer refuses it
    async with opened(camera):
        with pytest.raises(DeviceError, match=f"usb: cannot open {not_a_camera}"):
            await camera.next_frame()


def test_v4l2_asks_for_raw_when_it_fits_usb2_else_mjpeg() -> None:
    small = v4l2_open_options(usb_section(width=640, height=480, fps=30))
    large = v4l2_open_options(usb_section(width=1280, height=720, fps=30))
    assert [o.get("input_format") for o in small] == ["yuyv422", "mjpeg", None]
    assert [o.get("input_format") for o in large] == ["mjpeg", "yuyv422", None]
    assert all(o["video_size"] == "1280x720" and o["framerate"] == "30" for o in large)


# ----------------------------------------------------------------------------- the configured set


async def test_camera_set_lists_present_cameras_and_opens_each_backend(
    pi: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pi.add_camera("imx219")
    usb_node = tmp_path / "video3"
    usb_node.touch()
    cameras = CameraSet(
        [
            CameraSection(id="front", facing="front", width=320, height=240, fps=15),
            pi_section(id="back", facing="back"),
            pi_section(id="second", camera_num=1),
            usb_section(id="usb-missing", device="/dev/video-missing"),
            usb_section(id="usb", device=str(usb_node), label="Desk camera"),
        ]
    )
    listed = cameras.list_devices()
    assert [(d.device_id, d.label, d.kind, d.facing) for d in listed] == [
        ("front", "Emulated camera (front)", "videoinput", "front"),
        ("back", "Raspberry Pi camera (imx219)", "videoinput", "back"),
        ("usb", "Desk camera", "videoinput", None),
    ]

    front = cameras.open_camera("front")
    async with opened(front):
        await front.next_frame()
        started = time.monotonic()
        frames = [await front.next_frame() for _ in range(5)]
        assert 0.25 < time.monotonic() - started < 0.45, "15 fps as configured"
        assert all((f.width, f.height) == (320, 240) for f in frames)
    back = cameras.open_camera("back")
    async with opened(back):
        assert isinstance(back, PiCamera) and back.device.facing == "back"
        assert (await back.next_frame()).width == 320
    with pytest.raises(DeviceError, match="second: camera not present"):
        cameras.open_camera("second")
    with pytest.raises(DeviceError, match="usb-missing: camera not present"):
        cameras.open_camera("usb-missing")
    with pytest.raises(DeviceError, match="nope: no such camera"):
        cameras.open_camera("nope")

    monkeypatch.setitem(sys.modules, "picamera2", None)
    assert [d.device_id for d in cameras.list_devices()] == ["front", "usb"]


async def test_select_switches_cameras_on_the_same_track(pi: Any) -> None:
    pi.add_camera(hue=90)
    devices = camera_devices(
        CameraSet(
            [
                CameraSection(id="front", facing="front", width=320, height=240, fps=30),
                pi_section(id="back", facing="back", width=352, height=288),
            ]
        )
    )
    errors: list[Exception] = []
    capture = VideoCapture(devices, "front", errors.append)
    capture.set_enabled(True)
    track = capture.subscribe()

    async def size_after_switch(expected: tuple[int, int]) -> None:
        # Quick: closing the old camera must not wait for its next frame or a stall timeout.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            frame = await asyncio.wait_for(track.recv(), 1)
            if (frame.width, frame.height) == expected:
                return
        raise AssertionError(f"no {expected} frame within 0.5 s of the switch")

    try:
        await size_after_switch((320, 240))
        capture.select("back")
        await size_after_switch((352, 288))
        capture.select("front")
        await size_after_switch((320, 240))
        capture.select("back")  # the Pi camera again, right after it was closed
        await size_after_switch((352, 288))
        assert track.readyState == "live" and capture._subscribers == {track}
        assert errors == []
    finally:
        await capture.close()
