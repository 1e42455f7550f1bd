"""Stand-in picamera2.encoders.encoder: the Encoder base class and Quality."""

from __future__ import annotations

import threading
from enum import Enum
from typing import Any

from picamera2.outputs import Output


class Quality(Enum):
    VERY_LOW = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    VERY_HIGH = 4


class Encoder:
    def __init__(self, framerate: float = 30) -> None:
        self.width = 0
        self.height = 0
        self.stride = 0
        self.format: str | None = None
        self.name: str | None = None
        self._framerate = framerate  # only picamera2's raw-video path reads this
        self._output: list[Output] = []
        self._running = False
        self._lock = threading.Lock()
        self.firsttimestamp: int | None = None
        self.frames_encoded = 0
        # The stand-in's record of this encoder in SimulatedCamera.encoders (set by start_encoder).
        self._record: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def output(self) -> Any:
        return self._output[0] if len(self._output) == 1 else self._output

    @output.setter
    def output(self, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, Output) for v in values):
            raise RuntimeError("Must pass Output")
        self._output = values

    def encode(self, stream: Any, request: Any) -> None:
        """Called by the camera's event loop with each request (picamera2's process_requests)."""
        with self._lock:
            if not self._running:
                return
            self._encode(stream, request)
        self.frames_encoded += 1

    def _encode(self, stream: Any, request: Any) -> None:
        raise NotImplementedError("the stand-in has no raw-video encoder")

    def start(self, quality: Any = None) -> None:
        with self._lock:
            if self._running:
                raise RuntimeError("Encoder already running")
            self.frames_encoded = 0
            self._setup(quality)
            self._running = True
            self.firsttimestamp = None  # timestamps count from each start's first frame
            for out in self._output:
                out.start()
            self._start()

    def stop(self) -> None:
        with self._lock:
            if not self._running:
                raise RuntimeError("Encoder already stopped")
            self._running = False
            self._stop()
            for out in self._output:
                out.stop()
        if self._record is not None:
            self._record["stopped"] = True

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        for out in self._output:
            out.outputframe(frame, keyframe, timestamp, packet, audio)

    def _setup(self, quality: Any) -> None:
        pass

    def _start(self) -> None:
        pass

    def _stop(self) -> None:
        pass

    def _timestamp(self, request: Any) -> int:
        ts = request.get_metadata()["SensorTimestamp"] // 1000
        if self.firsttimestamp is None:
            self.firsttimestamp = ts
        return ts - self.firsttimestamp

    def _count_forced_key_frame(self) -> None:
        if self._record is not None:
            self._record["key_frames_forced"] += 1

    def describe(self) -> dict[str, Any]:
        return {"class": type(self).__name__}


__all__ = ["Encoder", "Quality"]
