"""libopus itself, through ctypes: what PyAV's wrapper does not reach.

PyAV decodes and encodes Opus through FFmpeg, which gives no way to conceal a lost packet (Opus'
packet-loss concealment: a decode with no data), to decode the in-band FEC a packet carries for the
one before it, or to tell a running encoder how much loss to protect against. The libopus these need
is the one PyAV's wheel bundles (av.libs), else the system's libopus.so.0.

- `OpusDecoder.decode(payload)`, `.recover(next_payload, samples)` (the lost packet rebuilt from the
  next one's FEC, when it has some), `.conceal(samples)` (PLC);
- `OpusEncoder.encode(pcm)`, `.set_packet_loss(percent)` (in-band FEC for that much loss; 0 turns it
  off), `.set_bitrate(bps)`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms
MAX_FRAME_SAMPLES = 5760  # 120 ms, the longest Opus packet
MAX_PACKET_BYTES = 1500

_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014


class OpusError(Exception):
    pass


@cache
def _lib() -> ctypes.CDLL:
    candidates: list[str] = []
    try:
        import av

        libs = Path(av.__file__).resolve().parent.parent / "av.libs"
        candidates += sorted(glob.glob(str(libs / "libopus*.so*")))
    except ImportError:
        pass
    system = ctypes.util.find_library("opus")
    if system:
        candidates.append(system)
    candidates.append("libopus.so.0")
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_int16),
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_encoder_create.argtypes = [
            ctypes.c_int32,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encode.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int16),
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int32,
        ]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_packet_has_lbrr.argtypes = [ctypes.c_char_p, ctypes.c_int32]
        lib.opus_packet_has_lbrr.restype = ctypes.c_int
        lib.opus_strerror.argtypes = [ctypes.c_int]
        lib.opus_strerror.restype = ctypes.c_char_p
        return lib
    raise OpusError("libopus not found (PyAV's bundled copy, or the system's libopus0)")


def _check(code: int, what: str) -> int:
    if code < 0:
        raise OpusError(f"{what}: {_lib().opus_strerror(code).decode()}")
    return code


def has_fec(payload: bytes) -> bool:
    """Whether an Opus packet carries in-band FEC (LBRR) for the packet before it."""
    return bool(payload) and _lib().opus_packet_has_lbrr(payload, len(payload)) == 1


class OpusDecoder:
    """Decodes to interleaved int16 at 48 kHz, `channels` channels."""

    def __init__(self, channels: int = 2) -> None:
        self.channels = channels
        error = ctypes.c_int()
        self._state = _lib().opus_decoder_create(SAMPLE_RATE, channels, ctypes.byref(error))
        _check(error.value, "opus_decoder_create")
        self._pcm = np.zeros(MAX_FRAME_SAMPLES * channels, dtype=np.int16)

    def _run(self, payload: bytes | None, samples: int, fec: bool) -> np.ndarray:
        if not self._state:
            # A NULL state in opus_decode is a segfault, not an error code.
            raise OpusError("the decoder is closed")
        out = self._pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_int16))
        length = len(payload) if payload else 0
        count = _check(
            _lib().opus_decode(self._state, payload, length, out, samples, int(fec)), "opus_decode"
        )
        return self._pcm[: count * self.channels].copy()

    def decode(self, payload: bytes) -> np.ndarray:
        return self._run(payload, MAX_FRAME_SAMPLES, False)

    def recover(self, next_payload: bytes, samples: int = FRAME_SAMPLES) -> np.ndarray:
        """The packet before `next_payload`, from its FEC (or concealed, if it has none)."""
        return self._run(next_payload, samples, True)

    def conceal(self, samples: int = FRAME_SAMPLES) -> np.ndarray:
        return self._run(None, samples, False)

    def close(self) -> None:
        if self._state:
            _lib().opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


class OpusEncoder:
    """Encodes 20 ms of interleaved int16 at 48 kHz per call, for voice."""

    def __init__(self, channels: int = 1, bitrate: int = 32000) -> None:
        self.channels = channels
        error = ctypes.c_int()
        self._state = _lib().opus_encoder_create(
            SAMPLE_RATE, channels, _APPLICATION_VOIP, ctypes.byref(error)
        )
        _check(error.value, "opus_encoder_create")
        self._out = ctypes.create_string_buffer(MAX_PACKET_BYTES)
        self.packet_loss = 0
        self.set_bitrate(bitrate)

    def _ctl(self, request: int, value: int) -> None:
        # opus_encoder_ctl is variadic: its argument is passed as a plain C int.
        _check(
            _lib().opus_encoder_ctl(ctypes.c_void_p(self._state), ctypes.c_int(request), ctypes.c_int(value)),
            "opus_encoder_ctl",
        )

    def set_bitrate(self, bitrate: int) -> None:
        self._ctl(_SET_BITRATE, bitrate)
        self.bitrate = bitrate

    def set_packet_loss(self, percent: int) -> None:
        """Protect against this much loss with in-band FEC (the encoder spends bits on it); 0: none."""
        percent = max(0, min(100, percent))
        self._ctl(_SET_INBAND_FEC, 1 if percent > 0 else 0)
        self._ctl(_SET_PACKET_LOSS_PERC, percent)
        self.packet_loss = percent

    def encode(self, pcm: np.ndarray) -> bytes:
        data = np.ascontiguousarray(pcm, dtype=np.int16)
        samples = len(data) // self.channels
        count = _check(
            _lib().opus_encode(
                self._state,
                data.ctypes.data_as(ctypes.POINTER(ctypes.c_int16)),
                samples,
                self._out,
                MAX_PACKET_BYTES,
            ),
            "opus_encode",
        )
        return self._out.raw[:count]

    def close(self) -> None:
        if self._state:
            _lib().opus_encoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


def library_path() -> str:
    """Which libopus was loaded (for `kiosk doctor` and the logs)."""
    return str(getattr(_lib(), "_name", "")) or os.fspath("libopus")
