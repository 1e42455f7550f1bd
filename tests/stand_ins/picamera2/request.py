"""Stand-in CompletedRequest and MappedArray: a request holds one pool buffer until released."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from picamera2.picamera2 import Picamera2


def _shape(array: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    # As picamera2 documents for YUV420: an image 50% taller than the frame, stride padding kept.
    if config["format"] not in ("YUV420", "YVU420"):
        raise RuntimeError(f"Format {config['format']} not supported by the stand-in")
    _, height = config["size"]
    return array.reshape((height * 3 // 2, config["stride"]))


class CompletedRequest:
    def __init__(self, picam2: Picamera2, index: int, metadata: dict[str, Any]) -> None:
        self.picam2 = picam2
        self.ref_count = 1
        self._lock = threading.Lock()
        self._index = index
        self._metadata = metadata
        self.config: dict[str, Any] | None = dict(picam2.camera_config or {})
        self.stream_map: dict[str, Any] | None = {"main": "main"}

    def _buffer(self, name: str) -> np.ndarray:
        if self.config is None:
            raise RuntimeError("CompletedRequest used after its last release")
        if name != "main":
            raise RuntimeError(f"Stream {name!r} is not defined")
        return self.picam2._buffers[self._index]

    def acquire(self) -> None:
        with self._lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        with self._lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count > 0:
                return
        self.picam2._recycle(self._index)
        self.config = None
        self.stream_map = None

    def make_buffer(self, name: str) -> np.ndarray:
        """A 1-D copy of the named stream's buffer."""
        buffer = self._buffer(name)
        self.picam2._sim.stats.copies += 1
        return np.array(buffer, dtype=np.uint8)

    def make_array(self, name: str) -> np.ndarray:
        assert self.config is not None
        config = self.config[name]
        return _shape(self.make_buffer(name), config)

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)


class MappedArray:
    """The request's buffer, mapped (no copy) for the duration of the `with` block."""

    def __init__(
        self, request: CompletedRequest, stream: str, reshape: bool = True, write: bool = True
    ) -> None:
        self._request = request
        self._stream = stream
        self._reshape = reshape
        self._array: np.ndarray | None = None

    def __enter__(self) -> MappedArray:
        array = self._request._buffer(self._stream)
        if self._reshape:
            assert self._request.config is not None
            array = _shape(array, self._request.config[self._stream])
        self._array = array
        return self

    def __exit__(self, *exc: object) -> None:
        self._array = None

    @property
    def array(self) -> np.ndarray | None:
        return self._array
