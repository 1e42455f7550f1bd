"""picamera2 as the real one behaves (the stand-in in tests/stand_ins, held to picamera2 0.3.36's source),
and kiosk's adapter on it: a Pi 5 without passthrough, keyframe requests merged, a full-field sensor
mode, the camera's own H.264 at the configured rate and following the peers' estimates, and the
oldest picamera2 the kiosk accepts.

Names new in kiosk.media.picamera are reached through the module inside each test, so that against
older code each test fails on its own instead of the whole file failing to import."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from stand_in_support import present_picamera2_version
from test_cameras import camera_devices, opened, pi_section, wait_until

import kiosk.media.picamera as picamera_module
from kiosk.config import parse_config
from kiosk.device import build_devices
from kiosk.media.cameras import CameraSet
from kiosk.media.capture import VideoCapture
from kiosk.media.devices import DeviceError
from kiosk.media.encoding import LADDER_REFERENCE, loss_bitrate
from kiosk.media.pattern import read_stamp
from kiosk.media.picamera import PiCamera

PASSTHROUGH_CONFIG = """
[[cameras]]
id = "door"
backend = "picamera2"
width = 320
height = 240
fps = 30
h264_passthrough = true
"""


# ----------------------------------------------------------------------------- helpers


def yuv_config(camera: Any, size: tuple[int, int] = (320, 240), **options: Any) -> dict[str, Any]:
    return camera.create_video_configuration(main={"size": size, "format": "YUV420"}, **options)


def collecting_output(flags: list[bool], packets: list[Any] | None = None) -> Any:
    """A picamera2 Output that records each frame's keyframe flag (and the packet it came with)."""
    outputs = importlib.import_module("picamera2.outputs")

    class Collect(outputs.Output):
        def outputframe(
            self,
            frame: Any,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            flags.append(bool(keyframe))
            if packets is not None:
                packets.append(packet)

    return Collect()


def settle(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait (off the loop) until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def sensor_modes(pi: Any, model: str) -> list[dict[str, Any]]:
    pi.add_camera(model)
    camera = importlib.import_module("picamera2").Picamera2(len(pi.attached()) - 1)
    try:
        return list(camera.sensor_modes)
    finally:
        camera.close()


# ----------------------------------------------------------------------------- the stand-in, as picamera2


def test_stand_in_platform_decides_what_h264encoder_is(pi: Any) -> None:
    picamera2 = importlib.import_module("picamera2")
    encoders = importlib.import_module("picamera2.encoders")
    assert picamera2.Picamera2.platform is picamera2.Platform.VC4 is picamera2.get_platform()
    assert encoders.H264Encoder.__module__ == "picamera2.encoders.h264_encoder"
    v4l2 = inspect.signature(encoders.H264Encoder).parameters
    assert list(v4l2) == [
        "bitrate",
        "repeat",
        "iperiod",
        "framerate",
        "enable_sps_framerate",
        "qp",
        "profile",
    ]
    assert v4l2["iperiod"].default is None and v4l2["framerate"].default is None

    pi.set_platform("PISP")  # a Pi 5: found when picamera2 is imported again
    picamera2 = importlib.import_module("picamera2")
    encoders = importlib.import_module("picamera2.encoders")
    assert picamera2.Picamera2.platform is picamera2.Platform.PISP is picamera2.get_platform()
    assert encoders.H264Encoder is encoders.LibavH264Encoder
    libav = inspect.signature(encoders.LibavH264Encoder).parameters
    assert list(libav) == ["bitrate", "repeat", "iperiod", "framerate", "qp", "profile"]
    assert libav["iperiod"].default == 30 and libav["framerate"].default == 30
    with pytest.raises(TypeError, match="enable_sps_framerate"):
        encoders.H264Encoder(enable_sps_framerate=True)  # picamera2 issue #1142
    # The V4L2 class still imports by its own name, but a Pi 5 has no /dev/video11.
    pi.add_camera()
    camera = picamera2.Picamera2()
    camera.configure(yuv_config(camera))
    v4l2_class = importlib.import_module("picamera2.encoders.h264_encoder").H264Encoder
    with pytest.raises(FileNotFoundError, match="/dev/video11"):
        camera.start_encoder(v4l2_class(), collecting_output([]))
    camera.close()


def test_stand_in_libav_keyframe_request_ends_the_event_loop(pi: Any) -> None:
    pi.set_platform("PISP")
    picamera2 = importlib.import_module("picamera2")
    encoders = importlib.import_module("picamera2.encoders")
    sim = pi.add_camera()
    flags: list[bool] = []
    packets: list[Any] = []
    camera = picamera2.Picamera2()
    camera.configure(yuv_config(camera, queue=False))
    encoder = encoders.H264Encoder()
    camera.start_encoder(encoder, collecting_output(flags, packets))
    camera.start()
    settle(lambda: len(flags) >= 5, "packets from libx264")
    assert all(isinstance(p, av.Packet) for p in packets), "the libav encoder hands outputs its packets"

    encoder.force_key_frame()  # frame.pict_type = "I": PyAV >= 14 refuses a string
    settle(lambda: sim.loop_error is not None, "the event loop to die")
    assert isinstance(sim.loop_error, TypeError)
    frames, encoded = sim.stats.frames, len(flags)
    time.sleep(0.3)
    assert sim.stats.frames == frames and len(flags) == encoded, "nothing is processed any more"

    # stop() hands itself to the dead event loop and waits for good; close() would not.
    stopper = threading.Thread(target=camera.stop, daemon=True)
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive()
    pi.reset()  # as the end of the process would
    stopper.join(3)
    assert not stopper.is_alive()


def test_stand_in_v4l2_encoder_forces_one_keyframe_per_request(pi: Any) -> None:
    picamera2 = importlib.import_module("picamera2")
    encoders = importlib.import_module("picamera2.encoders")
    sim = pi.add_camera()
    flags: list[bool] = []
    camera = picamera2.Picamera2()
    camera.configure(yuv_config(camera, queue=False))
    encoder = encoders.H264Encoder(iperiod=1000)
    camera.start_encoder(encoder, collecting_output(flags))
    camera.start()
    try:
        settle(lambda: len(flags) >= 3, "the first packets")
        pi.fail(sim)
        time.sleep(0.1)  # a frame being captured as the sensor failed is counted too
        settle(lambda: len(flags) == sim.stats.frames, "what was captured to be encoded")
        start = len(flags)
        for _ in range(3):
            encoder.force_key_frame()
        pi.restore(sim)
        settle(lambda: len(flags) >= start + 8, "packets after the requests")
        assert flags[start : start + 8] == [True, True, True, False, False, False, False, False]
        assert sim.encoders[-1]["key_frames_forced"] == 3
    finally:
        camera.stop()
        camera.stop_encoder()
        camera.close()


def test_stand_in_sensor_modes_and_the_mode_libcamera_scores_best(pi: Any) -> None:
    picamera2 = importlib.import_module("picamera2")
    imx219 = pi.add_camera("imx219")
    pi.add_camera("imx708")
    pi.add_camera("imx477")

    def chosen(num: int, size: tuple[int, int]) -> dict[str, Any]:
        camera = picamera2.Picamera2(num)
        try:
            camera.configure(yuv_config(camera, size))
            return camera.camera_configuration()
        finally:
            camera.close()

    # With no sensor= and no raw=, the mode closest to the main size (the report's table).
    for num, size, output, depth in [
        (0, (640, 480), (640, 480), 10),
        (0, (1280, 720), (1920, 1080), 10),
        (0, (800, 600), (1640, 1232), 10),
        (1, (640, 480), (1536, 864), 10),
        (1, (1280, 720), (1536, 864), 10),
        (1, (1920, 1080), (2304, 1296), 10),
        (2, (640, 480), (2028, 1520), 12),
        (2, (1280, 720), (2028, 1080), 12),
        (2, (1920, 1080), (2028, 1080), 12),
    ]:
        config = chosen(num, size)
        assert config["sensor"] == {"bit_depth": depth, "output_size": output}, (num, size)
        assert config["raw"]["size"] == output
    chosen(0, (640, 480))
    assert imx219.field_of_view == pytest.approx((1280 / 3280, 960 / 2464)), "the cropped mode: 39 %"

    camera = picamera2.Picamera2(0)
    modes = camera.sensor_modes
    assert len(modes) == 8 and imx219.stats.mode_probes == 8
    assert imx219.mode_reads == [threading.get_ident()]
    first = modes[0]
    assert (repr(first["format"]), first["unpacked"], first["bit_depth"]) == ("SRGGB10_CSI2P", "SRGGB10", 10)
    assert (first["size"], first["fps"], first["crop_limits"]) == ((640, 480), 103.33, (1000, 752, 1280, 960))
    assert first["exposure_limits"] == (75, 11766829, None)
    assert camera.sensor_modes is modes and imx219.stats.mode_probes == 8, "listed once per camera"

    camera.configure(yuv_config(camera, (640, 480), sensor={"output_size": (1640, 1232), "bit_depth": 10}))
    assert imx219.field_of_view == (1.0, 1.0)
    camera.configure(yuv_config(camera, (640, 480), raw=modes[7]))  # a mode passes as raw=
    assert camera.camera_configuration()["sensor"] == {"bit_depth": 8, "output_size": (3280, 2464)}
    assert camera.camera_configuration()["raw"]["format"] == "SRGGB8"
    # FrameDurationLimits asked for 30 fps; this mode's fastest is 21.19.
    slowest = round(1e6 / 21.19)
    assert imx219.frame_duration_us == slowest and camera.camera_controls["FrameDurationLimits"][0] == slowest
    with pytest.raises(RuntimeError, match="Unexpected keys"):
        camera.configure(yuv_config(camera, sensor={"size": (640, 480)}))
    camera.close()

    camera = picamera2.Picamera2(0)
    camera.configure(yuv_config(camera))
    camera.start()
    with pytest.raises(RuntimeError, match="stopped before configuring"):
        camera.sensor_modes  # noqa: B018 - listing reconfigures the camera
    camera.close()


def test_stand_in_encoder_framerate_and_bitrate_defaults_and_restarts(pi: Any) -> None:
    picamera2 = importlib.import_module("picamera2")
    encoders = importlib.import_module("picamera2.encoders")
    libav_class = importlib.import_module("picamera2.encoders.libav_h264_encoder").LibavH264Encoder
    sim = pi.add_camera("imx219")
    camera = picamera2.Picamera2()

    def started(encoder: Any, quality: Any = None) -> dict[str, Any]:
        camera.start_encoder(encoder, collecting_output([]), quality=quality)
        camera.stop_encoder(encoder)
        return sim.encoders[-1]

    def linear(mbps: float, framerate: float) -> int:  # the V4L2 encoder's Quality scale
        return int(mbps * 1_000_000 * (1280 * 720 * framerate) / (1920 * 1080 * 30))

    camera.configure(yuv_config(camera, (1280, 720)))  # the 1920x1080 mode, 47.57 fps at most
    top = 1e6 / 33333  # the mode's top rate, but at most "30" (33333 microseconds)
    record = started(encoders.H264Encoder())
    assert (record["framerate"], record["bitrate"]) == (top, linear(6, top)), "Quality.MEDIUM"
    assert started(encoders.H264Encoder(bitrate=500_000))["bitrate"] == 500_000, "a bitrate given is kept"
    assert started(encoders.H264Encoder(bitrate=500_000), encoders.Quality.HIGH)["bitrate"] == linear(9, top)
    assert started(encoders.H264Encoder(framerate=15))["bitrate"] == linear(6, 15)
    record = started(libav_class())  # its own framerate default, 30; a square-root scale
    assert (record["framerate"], record["bitrate"]) == (30, 4_666_666)
    # A mode slower than 30 fps: the encoder assumes the mode's rate, whatever the controls ask.
    camera.configure(yuv_config(camera, (1280, 720), sensor={"output_size": (3280, 2464)}))
    record = started(encoders.H264Encoder())
    assert record["framerate"] == pytest.approx(21.19, abs=0.01)
    assert record["bitrate"] == linear(6, record["framerate"])

    # Encoders stop and start while the camera runs.
    camera.configure(yuv_config(camera, queue=False))
    before = len(sim.encoders)
    first_flags: list[bool] = []
    second_flags: list[bool] = []
    first = encoders.H264Encoder(bitrate=1_000_000, iperiod=1000)
    camera.start_encoder(first, collecting_output(first_flags))
    camera.start()
    settle(lambda: len(first_flags) >= 3, "the first encoder's packets")
    camera.stop_encoder(first)
    camera.start_encoder(encoders.H264Encoder(bitrate=300_000, iperiod=1000), collecting_output(second_flags))
    settle(lambda: len(second_flags) >= 3, "the second encoder's packets")
    assert second_flags[0] and not any(second_flags[1:3]), "a new encoder starts at a keyframe"
    assert [(e["bitrate"], e["stopped"]) for e in sim.encoders[before:]] == [
        (1_000_000, True),
        (300_000, False),
    ]
    assert sim.stats.opens == 1 and camera.started
    camera.stop()
    camera.stop_encoder()
    camera.close()


def test_stand_in_version_comes_from_package_metadata(
    pi: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert importlib.metadata.version("picamera2") == "0.3.36"
    assert hasattr(importlib.import_module("picamera2").Picamera2, "cancel_all_and_flush")
    assert hasattr(importlib.import_module("picamera2.encoders").H264Encoder, "force_key_frame")
    present_picamera2_version(pi, monkeypatch, tmp_path, "0.3.31")
    assert importlib.metadata.version("picamera2") == "0.3.31"
    assert not hasattr(importlib.import_module("picamera2.encoders").H264Encoder, "force_key_frame")
    assert hasattr(importlib.import_module("picamera2").Picamera2, "cancel_all_and_flush")
    present_picamera2_version(pi, monkeypatch, tmp_path, "0.3.19")
    assert not hasattr(importlib.import_module("picamera2").Picamera2, "cancel_all_and_flush")


# ----------------------------------------------------------------------------- A: a Pi 5


async def test_pi5_passthrough_gives_pictures_and_keyframe_requests_cannot_stall_it(
    pi: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(picamera_module, "_warned", set(), raising=False)
    caplog.set_level(logging.WARNING, logger="kiosk.media.picamera")
    pi.set_platform("PISP")
    sim = pi.add_camera()
    camera = PiCamera(pi_section(h264_passthrough=True))
    async with opened(camera):
        await camera.next_frame()
        for _ in range(5):
            camera.request_keyframe()  # a new peer asks, several times
        frames = [await camera.next_frame() for _ in range(10)]
    assert sim.loop_error is None, "picamera2's libav encoder must not be used"
    assert all(isinstance(f, av.VideoFrame) for f in frames) and camera.passthrough is False
    assert sim.encoders == []
    again = PiCamera(pi_section(h264_passthrough=True))
    async with opened(again):
        await again.next_frame()
    warnings = [r.getMessage() for r in caplog.records if "h264_passthrough" in r.getMessage()]
    assert len(warnings) == 1 and "Pi 5" in warnings[0], warnings


def test_passthrough_status_and_the_devices_codec_follow_the_platform(
    pi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config(PASSTHROUGH_CONFIG)
    assert build_devices(config)[1].video_codec == "H264"
    pi.set_platform("PISP")
    assert build_devices(config)[1].video_codec is None, "the kiosk encodes, so any codec will do"
    available, reason = picamera_module.picamera_passthrough_status()
    assert available is False and "Pi 5" in reason
    assert picamera_module.picamera_passthrough_available() is False
    pi.set_platform("VC4")
    available, reason = picamera_module.picamera_passthrough_status()
    assert available is True and "hardware" in reason
    assert picamera_module.picamera2_version() == ("0.3.36", None)

    monkeypatch.setitem(sys.modules, "picamera2", None)  # off a Pi
    assert picamera_module.picamera_passthrough_status()[0] is None
    assert picamera_module.picamera_passthrough_available() is None


# ----------------------------------------------------------------------------- B: keyframe requests


async def test_pi_passthrough_keyframe_requests_in_a_row_give_one_keyframe(pi: Any) -> None:
    sim = pi.add_camera()
    camera = PiCamera(pi_section(h264_passthrough=True, keyframe_interval=600))
    camera.handoff.max_pending = 1000  # no overflow (which asks for a keyframe) on a busy machine
    async with opened(camera):
        for _ in range(5):
            await camera.next_frame()  # the stream's first keyframe among them
        pi.fail(sim)  # no frame in between: every request is made before a keyframe could come out
        for _ in range(5):
            assert camera.request_keyframe()
        pi.restore(sim)
        after = [await camera.next_frame() for _ in range(15)]
        assert sum(p.is_keyframe for p in after) == 1
        assert sim.encoders[-1]["key_frames_forced"] == 1
        # Once that keyframe is out, a request goes through again.
        assert camera.request_keyframe()
        more = [await camera.next_frame() for _ in range(8)]
        assert sum(p.is_keyframe for p in more) == 1
        assert sim.encoders[-1]["key_frames_forced"] == 2


# ----------------------------------------------------------------------------- C: sensor modes


def test_choose_sensor_mode_prefers_the_whole_sensor(pi: Any) -> None:
    imx219 = sensor_modes(pi, "imx219")
    imx708 = sensor_modes(pi, "imx708")
    imx477 = sensor_modes(pi, "imx477")

    def pick(modes: list[dict[str, Any]], size: tuple[int, int], fps: float) -> Any:
        mode = picamera_module.choose_sensor_mode(modes, size, fps)
        return None if mode is None else (mode["size"], mode["bit_depth"])

    assert pick(imx219, (640, 480), 30) == ((1640, 1232), 10)
    assert pick(imx219, (320, 240), 30) == ((1640, 1232), 10)
    assert pick(imx219, (3280, 2464), 15) == ((3280, 2464), 10)
    # No full-field mode is both as large as 1080p and 30 fps fast: the widest view that is fast.
    assert pick(imx219, (1920, 1080), 30) == ((1640, 1232), 10)
    assert pick(imx219, (640, 480), 60) == ((640, 480), 10), "only the cropped mode is that fast"
    assert pick(imx219, (640, 480), 240) is None, "none is: picamera2 chooses"
    assert pick(imx708, (1280, 720), 30) == ((2304, 1296), 10)
    assert pick(imx708, (640, 480), 60) == ((1536, 864), 10)
    assert pick(imx477, (1280, 720), 30) == ((2028, 1520), 12)
    assert pick(imx477, (640, 480), 50) == ((2028, 1080), 12)
    assert pick([{"format": "MJPEG"}], (640, 480), 30) is None, "a USB camera has no raw modes"


async def test_pi_camera_reads_the_modes_once_per_open_and_sees_the_whole_sensor(
    pi: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kiosk.media.picamera")
    sim = pi.add_camera("imx219")
    readers = []
    for _ in range(2):
        camera = PiCamera(pi_section(width=640, height=480, fps=30))
        async with opened(camera):
            frame = await camera.next_frame()
            assert (frame.width, frame.height) == (640, 480)
            readers.append(camera._thread.ident)
    assert sim.field_of_view == (1.0, 1.0), "picamera2's own choice would see 39 % of the width"
    assert sim.configs[-1]["sensor"] == {"bit_depth": 10, "output_size": (1640, 1232)}
    assert sim.mode_reads == readers, "listed once per open, on the camera's thread"
    assert sim.frame_duration_us == 33333
    assert any("1640x1232" in r.getMessage() and "100% x 100%" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- D: bitrate and rate


async def test_pi_passthrough_runs_at_its_rate_and_restarts_its_encoder_for_a_new_bitrate(pi: Any) -> None:
    sim = pi.add_camera()
    camera = PiCamera(pi_section(h264_passthrough=True, fps=15, keyframe_interval=15))
    camera.handoff.max_pending = 1000
    async with opened(camera):
        before = [await camera.next_frame() for _ in range(6)]
        assert sim.encoders[0]["framerate"] == 15, "picamera2 would assume min(30, the mode's top rate)"
        assert sim.encoders[0]["bitrate"] == picamera_module.DEFAULT_PASSTHROUGH_BITRATE == 1_000_000

        camera.set_bitrate_estimate("peer", 400_000)
        await wait_until(lambda: len(sim.encoders) == 2, 3, "the encoder to restart")
        after = [await camera.next_frame() for _ in range(16)]
    assert [(e["bitrate"], e["stopped"]) for e in sim.encoders] == [(1_000_000, True), (400_000, True)]
    assert sim.stats.opens == 1 and len(sim.configs) == 1, "the camera ran on"
    pts = [p.pts for p in before + after]
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False)), "pts carry on across the restart"
    start = next(i for i, p in enumerate(after) if p.is_keyframe)
    decoder = av.CodecContext.create("h264", "r")
    stamps = [read_stamp(f) for p in after[start:] for f in decoder.decode(p)]
    assert len(stamps) == len(after) - start and all(s is not None and sim.lookup(s) for s in stamps)


async def test_pi_passthrough_follows_the_lowest_peer_estimate_through_the_capture(
    pi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(picamera_module, "BITRATE_RAISE_INTERVAL", 3600.0, raising=False)  # no rise yet
    sim = pi.add_camera()
    devices = camera_devices(CameraSet([pi_section(id="door", h264_passthrough=True)]))
    errors: list[Exception] = []
    capture = VideoCapture(devices, "door", errors.append)
    capture.set_enabled(True)
    first, second = capture.subscribe(), capture.subscribe()

    def bitrates() -> list[int]:
        return [e["bitrate"] for e in sim.encoders]

    try:
        await asyncio.wait_for(second.recv(), 5)
        first.set_bitrate_estimate(800_000)
        second.set_bitrate_estimate(600_000)
        await wait_until(lambda: bitrates()[-1] == 600_000, 3, "the lowest estimate")
        second.set_bitrate_estimate(560_000)  # within 20 %: not worth a keyframe
        first.set_bitrate_estimate(300_000)  # a fall: followed at once
        await wait_until(lambda: bitrates()[-1] == 300_000, 3, "the fall")
        assert 560_000 not in bitrates()

        first.stop()  # its estimate goes with it: 560 kbit/s wanted, a rise, held back
        await asyncio.sleep(0.3)
        assert bitrates()[-1] == 300_000
        monkeypatch.setattr(picamera_module, "BITRATE_RAISE_INTERVAL", 0.0, raising=False)
        second.set_bitrate_estimate(560_000)
        await wait_until(lambda: bitrates()[-1] == 560_000, 3, "the rise")
        second.set_bitrate_estimate(10**9)
        await wait_until(lambda: bitrates()[-1] == 25_000_000, 3, "the hardware's top")
        second.set_bitrate_estimate(1_000)
        await wait_until(lambda: bitrates()[-1] == 25_000, 3, "the hardware's bottom")

        second._packets.clear()
        packet = await asyncio.wait_for(second.recv(), 3)
        assert isinstance(packet, av.Packet), "the camera's own H.264 still flows"
        assert sim.stats.opens == 1 and errors == []
    finally:
        await capture.close()


async def test_pi_passthrough_runs_at_less_under_sustained_loss_and_back_after(
    pi: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The camera's own H.264 cannot shrink its picture without the camera being configured again;
    under sustained loss it gets the bitrate of the shared encoders' loss step (fewer packets a
    frame), and its full rate back once the loss is over."""
    monkeypatch.setattr(picamera_module, "BITRATE_RAISE_INTERVAL", 0.0, raising=False)
    sim = pi.add_camera()
    devices = camera_devices(CameraSet([pi_section(id="door", h264_passthrough=True, fps=30)]))
    errors: list[Exception] = []
    capture = VideoCapture(devices, "door", errors.append)
    capture.set_enabled(True)
    track = capture.subscribe()

    def bitrates() -> list[int]:
        return [e["bitrate"] for e in sim.encoders]

    try:
        await asyncio.wait_for(track.recv(), 5)
        camera = capture._source
        assert isinstance(camera, PiCamera)
        now = [0.0]
        camera._bitrates._loss._clock = lambda: now[0]  # reports a second apart, without the wait
        track.set_bitrate_estimate(1_500_000)
        await wait_until(lambda: bitrates()[-1] == 1_500_000, 3, "the peer's estimate")
        for report in (0.01, 0.0, 0.02, 0.04, 0.0, 0.01):  # 1 % random loss: NACK's to repair
            now[0] += 1.0
            track.set_loss_estimate(report)
        await asyncio.sleep(0.3)
        assert bitrates()[-1] == 1_500_000 and not camera._bitrates.lossy
        for report in (0.05, 0.08, 0.02, 0.06, 0.04, 0.07, 0.05):  # bursty 5 %
            now[0] += 1.0
            track.set_loss_estimate(report)
        assert camera._bitrates.lossy
        section = camera.section
        capped = loss_bitrate(section.width * section.height * section.fps / LADDER_REFERENCE)
        await wait_until(lambda: bitrates()[-1] == capped, 3, "the loss step's bitrate")
        for _ in range(20):  # no loss for 20 s
            now[0] += 1.0
            track.set_loss_estimate(0.0)
        assert not camera._bitrates.lossy
        await wait_until(lambda: bitrates()[-1] == 1_500_000, 3, "the full rate again")
        assert sim.stats.opens == 1 and errors == []
    finally:
        await capture.close()


# ----------------------------------------------------------------------------- E: picamera2's version


async def test_pi_camera_refuses_a_picamera2_too_old(
    pi: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sim = pi.add_camera()
    present_picamera2_version(pi, monkeypatch, tmp_path, "0.3.19")
    with pytest.raises(DeviceError, match=r"pi: picamera2 0\.3\.19 is installed; the kiosk needs 0\.3\.20"):
        PiCamera(pi_section())
    assert sim.stats.opens == 0
    assert picamera_module.MIN_PICAMERA2_VERSION == "0.3.20"
    version, problem = picamera_module.picamera2_version()
    assert version == "0.3.19" and problem is not None and "0.3.20" in problem
    assert picamera_module.picamera_passthrough_status()[0] is False

    def no_metadata(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    # Without package metadata (a source checkout) what the module has decides.
    monkeypatch.setattr(importlib.metadata, "version", no_metadata)
    assert picamera_module.picamera2_version()[0] is None
    with pytest.raises(DeviceError, match="version unknown"):
        PiCamera(pi_section())


def test_the_doctor_says_what_this_pi_does_with_h264_passthrough(
    pi: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kiosk.config import parse_config
    from kiosk.doctor import check_picamera2

    config = parse_config(
        '[[cameras]]\nid = "door"\nbackend = "picamera2"\nh264_passthrough = true\n', "k.toml", False
    )
    pi.add_camera("imx219")
    results = {r.name: r for r in check_picamera2(config)}
    assert results["picamera2"].detail == "version 0.3.36"
    assert results["camera door H.264"].ok and not results["camera door H.264"].warning
    pi.set_platform("PISP")  # a Pi 5
    results = {r.name: r for r in check_picamera2(config)}
    pi5 = results["camera door H.264"]
    assert pi5.warning and "no hardware H.264 encoder" in pi5.detail
    assert "cameras[0].h264_passthrough = false" in pi5.fix
    present_picamera2_version(pi, monkeypatch, tmp_path, "0.3.19")
    (old,) = check_picamera2(config)
    assert not old.ok and "0.3.19 is too old" in old.detail and "0.3.20" in old.fix
