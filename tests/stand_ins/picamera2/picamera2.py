"""Stand-in Picamera2: a simulated sensor thread plays the part of libcamera plus picamera2's event loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from kiosk.media.pattern import TestPattern, now_ms
from picamera2 import stand_in
from picamera2.platform import Platform, get_platform
from picamera2.request import CompletedRequest
from picamera2.sensor_format import SensorFormat

_log = logging.getLogger("picamera2.picamera2")

STRIDE_ALIGN = 64  # bytes; the Pi's ISP pads each luma row to this (chroma rows to half of it)
_STREAM_KEYS = ("format", "size", "stride", "preserve_ar")
# Keys of a sensor_modes entry that a raw stream configuration ignores, so a mode can be passed as raw=.
_RAW_IGNORED = ("bit_depth", "crop_limits", "exposure_limits", "fps", "unpacked")
_SENSOR_KEYS = {"bit_depth", "output_size"}
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_VERSION = stand_in.version_tuple(stand_in.installed_version())
_MAX_FRAME_DURATION_US = 1_000_000_000  # FrameDurationLimits' maximum: long exposures are not modelled


@dataclass(frozen=True)
class ControlInfo:
    """libcamera's ControlInfo: a control's range and default."""

    min: Any
    max: Any
    default: Any


class Job:
    """What capture_request(wait=False) returns; `get_result(timeout)` as picamera2's Job."""

    def __init__(self) -> None:
        self._future: Future[CompletedRequest] = Future()
        self._future.set_running_or_notify_cancel()

    def _complete(self, request: CompletedRequest) -> bool:
        if self._future.done():
            return False
        self._future.set_result(request)
        return True

    def cancel(self) -> None:
        if not self._future.done():
            self._future.set_exception(CancelledError())

    def get_result(self, timeout: float | None = None) -> CompletedRequest:
        return self._future.result(timeout=timeout)


def _mode_score(mode: stand_in.SensorMode, bit_depth: int, output_size: tuple[int, int]) -> float:
    """How badly a mode fits (lower is better), scored as picamera2 copies it from libcamera: a mode
    smaller than wanted costs twice its shortfall, a larger one a quarter of its excess, a different
    aspect ratio costs a lot and a different bit depth more."""

    def misfit(desired: float, actual: float) -> float:
        return (desired - actual) * 2 if desired >= actual else (actual - desired) / 4

    width, height = output_size
    mode_width, mode_height = mode.size
    score = misfit(width, mode_width) + misfit(height, mode_height)
    score += 1500 * misfit(width / height, mode_width / mode_height)
    score += 500 * abs(bit_depth - SensorFormat(mode.format).bit_depth)
    return score


def _stream_config(
    defaults: dict[str, Any], updates: Mapping[str, Any], ignored: tuple[str, ...] = ()
) -> dict[str, Any]:
    stream = dict(defaults)
    for key, value in updates.items():
        if isinstance(value, SensorFormat):
            value = str(value)
        if key in _STREAM_KEYS:
            stream[key] = value
        elif key not in ignored:
            raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {_STREAM_KEYS}")
    return stream


class Picamera2:
    platform: Platform = get_platform()

    @staticmethod
    def global_camera_info() -> list[dict[str, Any]]:
        return [
            {"Model": c.model, "Location": c.location, "Rotation": c.rotation, "Id": c.id, "Num": i}
            for i, c in enumerate(stand_in.attached())
        ]

    def __init__(
        self, camera_num: int = 0, verbose_console: Any = None, tuning: Any = None, allocator: Any = None
    ) -> None:
        self.is_open = False
        self.started = False
        sim = stand_in.attached()[camera_num]  # IndexError for a camera that is not there, as picamera2
        if sim.owner is not None:
            # libcamera refuses a second acquire; picamera2 reports it like this.
            raise RuntimeError("Camera __init__ sequence did not complete.")
        sim.owner = self
        sim.stats.opens += 1
        stand_in._instances.append(self)
        self._sim = sim
        self.is_open = True
        self.camera_config: dict[str, Any] | None = None
        width, height = sim.sensor.pixel_array
        self.camera_properties = {
            "Model": sim.model,
            "Location": sim.location,
            "Rotation": sim.rotation,
            "PixelArraySize": (width, height),
            "PixelArrayActiveAreas": [(0, 0, width, height)],
            "ColorFilterArrangement": 0,  # RGGB: a Raspberry Pi camera, not a USB one
        }
        self._raw_modes = [{"format": m.format, "size": m.size} for m in sim.sensor.modes]
        native = self._native_mode()
        self.sensor_resolution = native.size
        self.sensor_format = native.format
        self.sensor_modes_: list[dict[str, Any]] = []
        self.camera_ctrl_info: dict[str, tuple[str, ControlInfo]] = {}
        self._set_mode_controls(native)
        self.lock = threading.Lock()  # the job list and completed requests, as in picamera2
        self._job_list: list[Job] = []
        self.completed_requests: list[CompletedRequest] = []
        self._encoders: set[Any] = set()
        self._buffers: list[np.ndarray] = []
        self._free: list[int] = []
        self._buffer_lock = threading.Lock()
        self._max_queue_len = 0
        self._frame_duration_us = 33333
        self._sensor: threading.Thread | None = None
        self._stop = threading.Event()
        self._event_loop_running = False  # picamera2's NullPreview thread, which start() begins
        self._loop_error: BaseException | None = None
        self.encode_stream_name = "main"

    # -- sensor modes

    def _native_mode(self) -> stand_in.SensorMode:
        # The largest area; on a tie the higher bit depth (picamera2's _select_native_mode).
        def rank(mode: stand_in.SensorMode) -> tuple[int, int]:
            return mode.size[0] * mode.size[1], SensorFormat(mode.format).bit_depth

        best = self._sim.sensor.modes[0]
        for mode in self._sim.sensor.modes[1:]:
            if rank(mode) > rank(best):
                best = mode
        return best

    def _set_mode_controls(self, mode: stand_in.SensorMode) -> None:
        # libcamera's controls follow the configured mode: its fastest frame, its crop.
        exposure_min, exposure_max = self._sim.sensor.exposure_limits
        self.camera_ctrl_info = {
            "FrameDurationLimits": (
                "FrameDurationLimits",
                ControlInfo(mode.min_frame_duration_us, _MAX_FRAME_DURATION_US, 33333),
            ),
            "ScalerCrop": ("ScalerCrop", ControlInfo((0, 0, 64, 64), mode.crop, mode.crop)),
            "ExposureTime": ("ExposureTime", ControlInfo(exposure_min, exposure_max, 0)),
            "NoiseReductionMode": ("NoiseReductionMode", ControlInfo(0, 4, 0)),
        }

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        return {name: (info.min, info.max, info.default) for name, (_, info) in self.camera_ctrl_info.items()}

    @property
    def sensor_modes(self) -> list[dict[str, Any]]:
        """The sensor's modes; the first time, picamera2 configures the camera once per mode to read them
        (slow on a Pi), so the camera must be stopped and is left unconfigured."""
        if self.sensor_modes_:
            return self.sensor_modes_
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self._sim.mode_reads.append(threading.get_ident())
        modes = []
        for mode in self._sim.sensor.modes:
            self._sim.stats.mode_probes += 1
            self._set_mode_controls(mode)
            fmt = SensorFormat(mode.format)
            modes.append(
                {
                    "format": fmt,
                    "unpacked": fmt.unpacked,
                    "bit_depth": fmt.bit_depth,
                    "size": mode.size,
                    "fps": round(1e6 / mode.min_frame_duration_us, 2),
                    "crop_limits": mode.crop,
                    "exposure_limits": (*self._sim.sensor.exposure_limits, None),
                }
            )
        # picamera2 leaves the camera configured for the last mode read; the stand-in insists on a
        # configure() before start() instead.
        self.camera_config = None
        self.sensor_modes_ = modes
        return modes

    def _choose_mode(self, config: dict[str, Any]) -> stand_in.SensorMode:
        """The sensor mode picamera2 asks libcamera for (its _make_libcamera_config)."""
        sensor = config.get("sensor") or {}
        raw = config.get("raw")
        if sensor.get("bit_depth") is not None:
            bit_depth = int(sensor["bit_depth"])
        elif raw is not None and raw.get("format") is not None:
            bit_depth = SensorFormat(str(raw["format"])).bit_depth
        else:
            bit_depth = SensorFormat(self.sensor_format).bit_depth
        if sensor.get("output_size") is not None:
            width, height = sensor["output_size"]
        elif raw is not None and raw.get("size") is not None:
            width, height = raw["size"]
        else:
            width, height = config["main"]["size"]
        return min(self._sim.sensor.modes, key=lambda m: _mode_score(m, bit_depth, (int(width), int(height))))

    # -- configuration

    def create_video_configuration(
        self,
        main: Mapping[str, Any] = _EMPTY,
        lores: Mapping[str, Any] | None = None,
        raw: Mapping[str, Any] | None = _EMPTY,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: Mapping[str, Any] = _EMPTY,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: Mapping[str, Any] | None = _EMPTY,
        use_case: str = "video",
    ) -> dict[str, Any]:
        stream = _stream_config({"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}, main)
        width, height = stream["size"]
        stream["size"] = (width - width % 2, height - height % 2)
        raw_stream = (
            None
            if raw is None
            else _stream_config({"format": self.sensor_format, "size": stream["size"]}, raw, _RAW_IGNORED)
        )
        return {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "lores": None if lores is None else dict(lores),
            "raw": raw_stream,
            "controls": {"NoiseReductionMode": 1, "FrameDurationLimits": (33333, 33333)} | dict(controls),
            "sensor": None if sensor is None else dict(sensor),
            "display": display,
            "encode": encode,
        }

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if camera_config is None:
            raise RuntimeError("the stand-in has no preview configuration; pass one")
        config = dict(camera_config)
        main = dict(config["main"])
        raw = None if config.get("raw") is None else dict(config["raw"])
        if raw is not None:
            raw["format"] = raw.get("format") or self.sensor_format
            raw["size"] = raw.get("size") or main["size"]
            SensorFormat(str(raw["format"]))  # ValueError for a format that is not raw
        config["raw"] = raw
        sensor = config.get("sensor")
        if sensor:
            bad = set(sensor) - _SENSOR_KEYS
            if bad:
                raise RuntimeError(f"Unexpected keys {bad} in sensor configuration")
        if config.get("lores") is not None:
            raise RuntimeError("the stand-in has no lores stream")
        if main["format"] != "YUV420":
            raise RuntimeError(f"the stand-in produces YUV420 main streams only, not {main['format']}")
        width, height = main["size"]
        if width % 2 or height % 2:
            raise RuntimeError("width and height should be even")
        stride = -(-width // STRIDE_ALIGN) * STRIDE_ALIGN
        main["stride"] = stride
        main["framesize"] = stride * height * 3 // 2
        config["main"] = main

        mode = self._choose_mode(config)
        config["sensor"] = {"bit_depth": SensorFormat(mode.format).bit_depth, "output_size": mode.size}
        if raw is not None:  # libcamera gives the raw stream the mode's format and size
            raw_stride = -(-mode.size[0] * SensorFormat(mode.format).bit_depth // 8 // 32) * 32
            raw.update(
                format=mode.format, size=mode.size, stride=raw_stride, framesize=raw_stride * mode.size[1]
            )
        self._set_mode_controls(mode)
        # libcamera clamps the frame duration limits to what the mode can do.
        limits = config["controls"].get("FrameDurationLimits", (33333, 33333))
        self._frame_duration_us = min(max(int(limits[0]), mode.min_frame_duration_us), _MAX_FRAME_DURATION_US)
        pixel_w, pixel_h = self._sim.sensor.pixel_array
        self._sim.sensor_mode = mode
        self._sim.field_of_view = (mode.crop[2] / pixel_w, mode.crop[3] / pixel_h)
        self._sim.frame_duration_us = self._frame_duration_us

        self.camera_config = config
        count = int(config["buffer_count"])
        # Padding bytes are 0xEE, so a reader that ignores the stride shows visible garbage.
        self._buffers = [np.full(main["framesize"], 0xEE, dtype=np.uint8) for _ in range(count)]
        self._free = list(range(count))
        self._max_queue_len = 1 if config["queue"] and count > 1 else 0
        self.encode_stream_name = config.get("encode") or "main"
        self._sim.configs.append(config)

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        assert self.camera_config is not None
        return self.camera_config[name]

    # -- running

    def start(self, config: dict[str, Any] | None = None, show_preview: Any = False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self._event_loop_running = True
        self._loop_error = None
        self.started = True
        self._stop.clear()
        self._sensor = threading.Thread(target=self._sensor_loop, name="stand-in-sensor", daemon=True)
        self._sensor.start()

    def stop(self) -> None:
        if not self.started:
            return
        if self._event_loop_running and self._loop_error is not None:
            # picamera2 hands the stop to its event loop and waits for it without a timeout; that loop
            # is gone, so this never returns (close() stops the preview first, and does not hang).
            stand_in.hang()
        self._stop.set()
        if self._sensor is not None and self._sensor is not threading.current_thread():
            self._sensor.join()
        self.started = False
        with self.lock:
            leftovers, self.completed_requests = self.completed_requests, []
        for request in leftovers:
            request.release()

    def close(self) -> None:
        if not self.is_open:
            return
        self._event_loop_running = False  # stop_preview(): the event loop thread is joined first
        self.stop()
        running = [e for e in self._encoders if e.running]
        self._sim.stats.encoders_running_at_close += len(running)
        for encoder in running:
            encoder.stop()
        self._encoders.clear()
        self.is_open = False
        if self._sim.owner is self:
            self._sim.owner = None
        if self in stand_in._instances:
            stand_in._instances.remove(self)

    def _sensor_loop(self) -> None:
        assert self.camera_config is not None
        main = self.camera_config["main"]
        width, height = main["size"]
        stride = main["stride"]
        duration = self._frame_duration_us / 1_000_000
        pattern = TestPattern(width, height, hue=self._sim.hue)
        due = time.monotonic()
        sequence = 0
        while True:
            due += duration
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            late = time.monotonic() - due
            if late > duration:
                # Woken late (a busy machine): a sensor never bursts, the missed frames are lost.
                due += int(late / duration) * duration
            if not self._sim.delivering:
                continue
            index = self._take_buffer()
            if index is None:
                self._sim.stats.starved += 1
                continue
            sequence += 1
            stamp = now_ms()
            picture = pattern.draw(sequence, stamp_ms=stamp).to_ndarray()  # (height * 3 // 2, width)
            _write_padded(self._buffers[index], picture, width, height, stride)
            now_ns = time.monotonic_ns()
            self._sim.remember(stamp, now_ns / 1e9, picture)
            metadata = {
                "SensorTimestamp": round(due * 1e9),  # the frame's slot: as regular as a sensor's
                "FrameDuration": self._frame_duration_us,
                "ExposureTime": 10000,
            }
            self._sim.stats.frames += 1
            try:
                self._process(CompletedRequest(self, index, metadata))
            except Exception as exc:
                # As picamera2's NullPreview: logged and raised again, which ends its thread; nothing
                # processes requests after that, so no frame reaches anyone.
                _log.exception("Exception during process_requests()")
                self._loop_error = self._sim.loop_error = exc
                return

    def _take_buffer(self) -> int | None:
        with self._buffer_lock:
            held = len(self._buffers) - len(self._free)
            self._sim.stats.max_held = max(self._sim.stats.max_held, held)
            return self._free.pop(0) if self._free else None

    def _recycle(self, index: int) -> None:
        with self._buffer_lock:
            if index not in self._free:
                self._free.append(index)

    def _process(self, request: CompletedRequest) -> None:
        # As picamera2's process_requests: waiting jobs get the request, then encoders, then it is
        # released unless kept as the one queued request.
        with self.lock:
            request.acquire()  # held while jobs and encoders run
            self.completed_requests.append(request)
            while self._job_list and self.completed_requests:
                job = self._job_list.pop(0)
                if not job._complete(self.completed_requests[0]):
                    continue
                self.completed_requests.pop(0)
            for encoder in list(self._encoders):
                encoder.encode(encoder.name, request)
            while len(self.completed_requests) > self._max_queue_len:
                self.completed_requests.pop(0).release()
        request.release()

    # -- capturing

    def capture_request(self, wait: Any = None, signal_function: Any = None, flush: Any = None) -> Any:
        job = Job()
        with self.lock:
            if self.completed_requests:
                job._complete(self.completed_requests.pop(0))
            else:
                self._job_list.append(job)
        if wait is None:
            wait = signal_function is None
        if wait is False:
            return job
        if wait is True or _VERSION < (0, 3, 20):
            return job.get_result()  # before 0.3.20 a number of seconds only meant "wait"
        return job.get_result(timeout=float(wait))

    def wait(self, job: Job, timeout: float | None = None) -> CompletedRequest:
        return job.get_result(timeout=timeout)

    def cancel_all_and_flush(self) -> None:
        with self.lock:
            for job in self._job_list:
                job.cancel()
            self._job_list = []

    def capture_array(self, name: str = "main", wait: Any = None) -> np.ndarray:
        request = self.capture_request(wait=wait)
        try:
            return request.make_array(name)
        finally:
            request.release()

    # -- encoding

    def start_encoder(
        self,
        encoder: Any = None,
        output: Any = None,
        pts: Any = None,
        quality: Any = None,
        name: str | None = None,
    ) -> None:
        """As picamera2: allowed while the camera runs; an encoder with no framerate gets the configured
        mode's fastest rate, but at most 30 (not the FrameDurationLimits asked for)."""
        if encoder is None:
            raise RuntimeError("No encoder specified")
        if output is not None:
            encoder.output = output
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        name = name or self.encode_stream_name
        stream = self.camera_config.get(name)
        if stream is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        encoder.name = name
        encoder.width, encoder.height = stream["size"]
        encoder.format = stream["format"]
        encoder.stride = stream["stride"]
        min_frame_duration = max(self.camera_ctrl_info["FrameDurationLimits"][1].min, 33333)
        try:
            if encoder.framerate is None:
                encoder.framerate = 1_000_000 / min_frame_duration
        except AttributeError:
            pass
        encoder.start(quality=quality)
        record = encoder.describe() | {"key_frames_forced": 0, "stopped": False}
        encoder._record = record
        self._sim.encoders.append(record)
        with self.lock:
            self._encoders.add(encoder)

    def stop_encoder(self, encoders: Any = None) -> None:
        if encoders is None:
            chosen = list(self._encoders)
        elif isinstance(encoders, list | set):
            chosen = list(encoders)
        else:
            chosen = [encoders]
        for encoder in chosen:
            encoder.stop()
        with self.lock:
            for encoder in chosen:
                self._encoders.remove(encoder)  # KeyError for one never started here, as picamera2

    @property
    def encoders(self) -> set[Any]:
        return self._encoders


if _VERSION < (0, 3, 20):
    del Picamera2.cancel_all_and_flush  # added in picamera2 0.3.20, with capture_request(wait=seconds)


def _write_padded(buffer: np.ndarray, picture: np.ndarray, width: int, height: int, stride: int) -> None:
    flat = picture.reshape(-1)
    y = flat[: width * height].reshape(height, width)
    chroma = flat[width * height :].reshape(2, height // 2, width // 2)
    buffer[: stride * height].reshape(height, stride)[:, :width] = y
    offset = stride * height
    for plane in chroma:
        size = (stride // 2) * (height // 2)
        buffer[offset : offset + size].reshape(height // 2, stride // 2)[:, : width // 2] = plane
        offset += size
