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
        self._levels = np.array([_BLACK, _WHITE], dtype=np.uint8)

    def draw(self, index: int, stamp_ms: int | None = None) -> av.VideoFrame:
        """Frame number `index` with `stamp_ms` (default: now) embedded."""
        w, h = self.width, self.height
        # Written straight into the frame's own planes: one copy of the background per frame, no
        # intermediate buffer (this runs 30 times a second on the emulated device's event loop).
        frame = av.VideoFrame(w, h, "yuv420p")
        luma, u, v = (_plane(frame, i, w >> (i > 0), h >> (i > 0)) for i in range(3))
        luma[:] = self._luma
        u[:] = self._u
        v[:] = self._v
        # A bright square that moves one step per frame, so a frozen picture is visible.
        size = h // 6
        x = (index * 8) % (w - size)
        y0 = STAMP_ROWS * BLOCK_HEIGHT + 8 + (index * 3) % (h - size - STAMP_ROWS * BLOCK_HEIGHT - 8)
        luma[y0 : y0 + size, x : x + size] = _WHITE
        self._stamp(luma, now_ms() if stamp_ms is None else stamp_ms)
        return frame

    def _stamp(self, luma: np.ndarray, stamp_ms: int) -> None:
        bits = ((np.uint64(stamp_ms & 0xFFFFFFFF) & self._bits) != 0).astype(np.uint8)
        bw = self.block_width
        for row, values in enumerate((bits, 1 - bits)):
            band = luma[row * BLOCK_HEIGHT : (row + 1) * BLOCK_HEIGHT, : bw * STAMP_BITS]
            band.reshape(BLOCK_HEIGHT, STAMP_BITS, bw)[:] = self._levels[values][None, :, None]


def _plane(frame: av.VideoFrame, index: int, width: int, height: int) -> np.ndarray:
    """A writable (height, width) view of one plane of `frame` (rows may be padded)."""
    plane = frame.planes[index]
    return np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(height, plane.line_size)[:, :width]


def read_stamp(frame: av.VideoFrame) -> int | None:
    """The capture time embedded by TestPattern, or None if the frame carries none. The sender may
    have scaled the picture down (a lower step of its resolution ladder): the blocks are then a half
    or a quarter as tall, and are looked for at those heights too."""
    if frame.width < STAMP_BITS * 4 or frame.height < 32:
        return None
    plane = frame.planes[0]
    luma = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(frame.height, plane.line_size)
    for divisor in (1, 2, 4):
        stamp = _read_stamp_rows(luma, frame.width, BLOCK_HEIGHT // divisor)
        if stamp is not None:
            return stamp
    return None


def _read_stamp_rows(luma: np.ndarray, width: int, block_height: int) -> int | None:
    bw = width // STAMP_BITS
    # The middle half of each block, both ways: codec ringing at the block edges stays out.
    inset_x, inset_y = bw // 4, block_height // 4
    rows = []
    for row in range(STAMP_ROWS):
        band = luma[row * block_height + inset_y : (row + 1) * block_height - inset_y, : bw * STAMP_BITS]
        cells = band.reshape(band.shape[0], STAMP_BITS, bw)[:, :, inset_x : bw - inset_x]
        rows.append(cells.sum(axis=(0, 2), dtype=np.uint32) > 128 * cells.shape[0] * cells.shape[2])
    if not np.all(rows[0] != rows[1]):
        return None
    return int(np.packbits(rows[0]).view(">u4")[0])


def latency_ms(stamp_ms: int, at_ms: int | None = None) -> int:
    """Milliseconds from an embedded stamp to `at_ms` (default now), across the 2**32 wrap."""
    return ((now_ms() if at_ms is None else at_ms) - stamp_ms) & 0xFFFFFFFF
