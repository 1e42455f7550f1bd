"""The emulated camera's picture: a moving test pattern that carries its capture time.

The capture time (milliseconds, modulo 2**32) is drawn as 32 large black/white blocks across the
top of the luma plane, followed by a second row with the inverted bits as a check. The blocks are
big enough to survive VP8/H.264 at low bitrates, so a receiver can read the time back from the
decoded frame and measure glass-to-glass latency.
"""

from __future__ import annotations

import time

import av
import numpy as np

STAMP_BITS = 32
STAMP_ROWS = 2
BLOCK_HEIGHT = 16
_BLACK = 16
_WHITE = 235


def now_ms() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


class TestPattern:
    """Draws YUV420 frames of a given size; one instance per camera."""

    __test__ = False  # not a pytest test class

    def __init__(self, width: int = 640, height: int = 480, hue: int = 0) -> None:
        if width % 2 or height % 2 or width < STAMP_BITS * 4 or height < 64:
            raise ValueError(f"test pattern size {width}x{height} must be even and at least 128x64")
        self.width = width
        self.height = height
        self.block_width = width // STAMP_BITS
        y = np.linspace(40, 200, width, dtype=np.float32)
        self._luma = np.tile(y, (height, 1)).astype(np.uint8)
        cw, ch = width // 2, height // 2
        u = (np.arange(ch, dtype=np.int32)[:, None] * 160 // ch + 48 + hue) % 256
        self._u = np.broadcast_to(u, (ch, cw)).astype(np.uint8)
        self._v = np.full((ch, cw), (128 + hue * 3) % 256, dtype=np.uint8)
        self._bits = 1 << np.arange(STAMP_BITS - 1, -1, -1, dtype=np.uint64)

    def draw(self, index: int, stamp_ms: int | None = None) -> av.VideoFrame:
        """Frame number `index` with `stamp_ms` (default: now) embedded."""
        w, h = self.width, self.height
        buf = np.empty((h * 3 // 2, w), dtype=np.uint8)
        luma = buf[:h]
        luma[:] = self._luma
        # A bright square that moves one step per frame, so a frozen picture is visible.
        size = h // 6
        x = (index * 8) % (w - size)
        y0 = STAMP_ROWS * BLOCK_HEIGHT + 8 + (index * 3) % (h - size - STAMP_ROWS * BLOCK_HEIGHT - 8)
        luma[y0 : y0 + size, x : x + size] = _WHITE
        self._stamp(luma, now_ms() if stamp_ms is None else stamp_ms)
        chroma = buf[h:].reshape(h, w // 2)
        chroma[: h // 2] = self._u
        chroma[h // 2 :] = self._v
        return av.VideoFrame.from_ndarray(buf, format="yuv420p")

    def _stamp(self, luma: np.ndarray, stamp_ms: int) -> None:
        bits = (np.uint64(stamp_ms & 0xFFFFFFFF) & self._bits) != 0
        bw = self.block_width
        for row, values in enumerate((bits, ~bits)):
            band = luma[row * BLOCK_HEIGHT : (row + 1) * BLOCK_HEIGHT, : bw * STAMP_BITS]
            pixels = np.where(values, _WHITE, _BLACK).astype(np.uint8)
            band[:] = np.repeat(pixels, bw)[None, :]


def read_stamp(frame: av.VideoFrame) -> int | None:
    """The capture time embedded by TestPattern, or None if the frame carries none."""
    if frame.width < STAMP_BITS * 4 or frame.height < 64:
        return None
    plane = frame.planes[0]
    luma = np.frombuffer(plane, dtype=np.uint8).reshape(frame.height, plane.line_size)
    bw = frame.width // STAMP_BITS
    inset_x, inset_y = bw // 4, BLOCK_HEIGHT // 4
    rows = []
    for row in range(STAMP_ROWS):
        band = luma[row * BLOCK_HEIGHT + inset_y : (row + 1) * BLOCK_HEIGHT - inset_y, : bw * STAMP_BITS]
        cells = band.reshape(band.shape[0], STAMP_BITS, bw)[:, :, inset_x : bw - inset_x]
        rows.append(cells.mean(axis=(0, 2)) > 128)
    if not np.all(rows[0] != rows[1]):
        return None
    value = 0
    for bit in rows[0]:
        value = (value << 1) | int(bit)
    return value


def latency_ms(stamp_ms: int, at_ms: int | None = None) -> int:
    """Milliseconds from an embedded stamp to `at_ms` (default now), across the 2**32 wrap."""
    return ((now_ms() if at_ms is None else at_ms) - stamp_ms) & 0xFFFFFFFF
