"""Stand-in Picamera2: a simulated sensor thread plays the part of libcamera plus picamera2's event loop."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, Future
from typing import Any

import numpy as np

from kiosk.media.pattern import TestPattern, now_ms
from picamera2 import stand_in
from picamera2.request import CompletedRequest

STRIDE_ALIGN = 64  # bytes; the Pi's ISP pads each luma row to this (chroma rows to half of it)
_STREAM_KEYS = ("format", "size", "stride", "preserve_ar")


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


class Picamera2:
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
        self.camera_properties = {"Model": sim.model, "Location": sim.location, "Rotation": sim.rotation}
        self.lock = threading.Lock()  # the job list and completed requests, as in picamera2
        self._job_list: list[Job] = []
        self.completed_requests: list[CompletedRequest] = []
        self._encoders: set[Any] = set()
        self._buffers: list[np.ndarray] = []
        self._free: list[int] = []
        self._buffer_lock = threading.Lock()
        self._max_queue_len = 0
        self._sensor: threading.Thread | None = None
        self._stop = threading.Event()
        self.encode_stream_name = "main"

    # -- configuration

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        transform: Any = None,
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        stream: dict[str, Any] = {"format": "XBGR8888", "size": (1280, 720), "preserve_ar": True}
        for key, value in (main or {}).items():
            if key not in _STREAM_KEYS:
                raise ValueError(f"Bad key {key!r}: valid stream configuration keys are {_STREAM_KEYS}")
            stream[key] = value
        width, height = stream["size"]
        stream["size"] = (width - width % 2, height - height % 2)
        return {
            "use_case": use_case,
            "transform": transform,
            "colour_space": colour_space,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "lores": lores,
            "raw": raw,
            "controls": {"FrameDurationLimits": (33333, 33333)} | dict(controls or {}),
            "sensor": sensor,
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
        if main["format"] != "YUV420":
            raise RuntimeError(f"the stand-in produces YUV420 main streams only, not {main['format']}")
        width, height = main["size"]
        if width % 2 or height % 2:
            raise RuntimeError("width and height should be even")
        stride = -(-width // STRIDE_ALIGN) * STRIDE_ALIGN
        main["stride"] = stride
        main["framesize"] = stride * height * 3 // 2
        config["main"] = main
        self.camera_config = config
        count = int(config["buffer_count"])
        # Padding bytes are 0xEE, so a reader that ignores the stride shows visible garbage.
        self._buffers = [np.full(main["framesize"], 0xEE, dtype=np.uint8) for _ in range(count)]
        self._free = list(range(count))
        self._max_queue_len = 1 if config["queue"] and count > 1 else 0
        self._sim.configs.append(config)

    def camera_configuration(self) -> dict[str, Any] | None:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        assert self.camera_config is not None
        return self.camera_config[name]

    @property
    def camera_controls(self) -> dict[str, tuple[Any, Any, Any]]:
        return {"FrameDurationLimits": (8333, 1_000_000, 33333)}

    # -- running

    def start(self, config: dict[str, Any] | None = None, show_preview: Any = False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        self.started = True
        self._stop.clear()
        self._sensor = threading.Thread(target=self._sensor_loop, name="stand-in-sensor", daemon=True)
        self._sensor.start()

    def stop(self) -> None:
        if not self.started:
            return
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
        self.stop()
        for encoder in list(self._encoders):
            if encoder.running:
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
        duration = self.camera_config["controls"]["FrameDurationLimits"][0] / 1_000_000
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
                "FrameDuration": round(duration * 1e6),
                "ExposureTime": 10000,
            }
            self._sim.stats.frames += 1
            self._process(CompletedRequest(self, index, metadata))

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
        if wait is False:
            return job
        return job.get_result(timeout=None if wait in (None, True) else float(wait))

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
        if encoder is None:
            raise RuntimeError("No encoder specified")
        if output is not None:
            encoder.output = output
        assert self.camera_config is not None
        name = name or self.encode_stream_name
        stream = self.camera_config.get(name)
        if stream is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        encoder.name = name
        encoder.width, encoder.height = stream["size"]
        encoder.format = stream["format"]
        encoder.stride = stream["stride"]
        if getattr(encoder, "framerate", None) is None:
            duration = self.camera_config["controls"]["FrameDurationLimits"][0]
            encoder.framerate = 1_000_000 / max(duration, 33333)
        encoder.start(quality=quality)
        self._sim.encoders.append(encoder.describe())
        with self.lock:
            self._encoders.add(encoder)

    def stop_encoder(self, encoders: Any = None) -> None:
        chosen = list(self._encoders) if encoders is None else [encoders]
        for encoder in chosen:
            encoder.stop()
        with self.lock:
            for encoder in chosen:
                self._encoders.discard(encoder)


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
