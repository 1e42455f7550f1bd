"""The private parts of aiortc and aioice the kiosk relies on, checked once at start.

aiortc has no public API for several things a kiosk needs (sending a camera's own H.264 with the
receiver's bitrate estimates and keyframe requests, releasing video frames on the RTP marker bit,
closing a connection that is still connecting, the audio level for an SFU, the selected ICE pair),
so the kiosk reaches into it: the names are listed below, each with where it is used. A release
that renames one would fail in the middle of a call with an AttributeError, or quietly stop doing
what it did. `check_aiortc()` looks each of them up on the classes and modules, without making a
connection, and raises `IncompatibleLibrary` with one line naming the version and what is gone.

pyproject.toml pins aiortc and aioice to the minor releases these names were checked against
(`TESTED`); this is for an installation that got another version anyway.
"""

from __future__ import annotations

import dis
import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import CodeType, ModuleType
from typing import Any

# The versions the names below were checked against: the same ranges as pyproject.toml's (a test
# compares them).
TESTED = {"aiortc": ">=1.16,<1.17", "aioice": ">=0.13,<0.14"}

_MISSING = object()
_passed = False  # set once the check passed: it runs once per process


class IncompatibleLibrary(RuntimeError):
    """An installed library lacks something the kiosk uses; the message is one line."""


@dataclass(frozen=True)
class Need:
    library: str  # "aiortc" or "aioice"
    name: str  # what the message calls it when it is gone
    used_by: str  # where the kiosk uses it
    present: Callable[[], bool]


def check_aiortc() -> None:
    """Raise IncompatibleLibrary if anything in `needs()` is gone. Once passed, it returns at once."""
    global _passed
    if _passed:
        return
    gone: dict[str, list[str]] = {}
    for need in needs():
        try:
            ok = need.present()
        except Exception:  # a changed signature, a moved module: gone as far as the kiosk is concerned
            ok = False
        if not ok:
            gone.setdefault(need.library, []).append(need.name)
    if gone:
        raise IncompatibleLibrary("; ".join(_describe(library, names) for library, names in gone.items()))
    _passed = True


def exit_code_for(command: str) -> int:
    """For the `kiosk` command line: 0 if the libraries are usable, else the one line on stderr and 2."""
    try:
        check_aiortc()
    except IncompatibleLibrary as exc:
        print(f"kiosk {command}: {exc}", file=sys.stderr)
        return 2
    return 0


def version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(_module(library), "__version__", "(unknown version)"))


def _describe(library: str, names: list[str]) -> str:
    under = "" if library == "aiortc" else f" (with aiortc {version('aiortc')})"
    verb = "is" if len(names) == 1 else "are"
    return (
        f"{library} {version(library)}{under} is not supported: {', '.join(names)} {verb} gone "
        f"(tested: {library} {TESTED[library]})"
    )


# ----------------------------------------------------------------------------- what is looked up


def needs() -> list[Need]:
    """Every private name the kiosk uses, each with a test that needs no connection."""
    sender, receiver, jb = "aiortc.rtcrtpsender", "aiortc.rtcrtpreceiver", "aiortc.jitterbuffer"
    transceiver, ice_transport = "aiortc.rtcrtptransceiver", "aiortc.rtcicetransport"
    peer_py, jitter_py, sfu_py = "kiosk/calls/peer.py", "kiosk/calls/jitter.py", "kiosk/calls/sfu.py"
    endpoint_py, encoding_py = "kiosk/endpoint.py", "kiosk/media/encoding.py"
    return [
        # A camera's own H.264 (or the shared encoder's packets): its sender's hooks.
        _method(sender, "RTCRtpSender", "_send_keyframe", peer_py),
        _method(sender, "RTCRtpSender", "_handle_rtcp_packet", peer_py),
        _assigned(sender, "RTCRtpSender", "_ssrc", peer_py),
        _assigned(transceiver, "RTCRtpTransceiver", "_codecs", peer_py),
        _assigned(
            "aiortc.rtcpeerconnection",
            "RTCPeerConnection",
            "_codecs",
            peer_py,
            name="RTCRtpTransceiver._codecs (negotiated by RTCPeerConnection)",
        ),
        *_names("aiortc.rtp", ("unpack_remb_fci", "RTCP_PSFB_APP", "RtcpPsfbPacket"), peer_py),
        # Closing a connection that is still connecting.
        _method("aiortc.rtcpeerconnection", "RTCPeerConnection", "__connect", peer_py),
        # Video frames released on the marker bit: the receiver's buffer and the buffer's insides.
        _assigned(receiver, "RTCRtpReceiver", "__jitter_buffer", jitter_py),
        _method(jb, "JitterBuffer", "_remove_frame", jitter_py),
        _method(jb, "JitterBuffer", "remove", jitter_py),
        *(
            Need("aiortc", f"JitterBuffer.{field}", jitter_py, _jitter_buffer_has(field))
            for field in ("capacity", "_capacity", "_origin", "_packets", "_is_video")
        ),
        Need("aiortc", "JitterFrame(data, timestamp)", jitter_py, _jitter_frame),
        _assigned(
            receiver, "RTCRtpReceiver", "_data", jitter_py, name="RtpPacket._data (set by RTCRtpReceiver)"
        ),
        # Our SDP says we decode Opus' in-band FEC: aiortc's shared codec table, opus with its parameters.
        Need("aiortc", "aiortc.codecs.CODECS['audio'] with opus parameters", peer_py, _opus_in_codec_table),
        # Receiver reports and NACKs reach the shared encoders through the sender's RTCP hook.
        *_names(
            "aiortc.rtp", ("RtcpRrPacket", "RtcpSrPacket", "RtcpRtpfbPacket", "RTCP_RTPFB_NACK"), peer_py
        ),
        # The audio level an SFU reads from our audio.
        _method(sender, "RTCRtpSender", "_next_encoded_frame", sfu_py),
        _assigned(sender, "RTCEncodedFrame", "audio_level", sfu_py),
        # The shared encoders are set up as aiortc sets up its own.
        *_names(
            "aiortc.codecs.vpx",
            ("MIN_BITRATE", "MAX_BITRATE", "DEFAULT_BITRATE", "number_of_threads"),
            encoding_py,
        ),
        *_names("aiortc.codecs.h264", ("MIN_BITRATE", "MAX_BITRATE", "DEFAULT_BITRATE"), encoding_py),
        # The selected ICE pair (`kiosk endpoint --report`).
        _assigned(ice_transport, "RTCIceTransport", "_connection", endpoint_py),
        # aioice: the pair, and the host addresses ICE offers (kiosk/calls/ice.py replaces the function,
        # which works only while aioice looks it up by name when it gathers).
        _assigned("aioice.ice", "Connection", "_nominated", endpoint_py, library="aioice"),
        Need("aioice", "aioice.ice.get_host_addresses", "kiosk/calls/ice.py", _host_addresses_hook),
    ]


def _opus_in_codec_table() -> bool:
    codecs = getattr(_module("aiortc.codecs"), "CODECS", None)
    audio = codecs.get("audio", []) if isinstance(codecs, dict) else []
    return any(
        getattr(c, "mimeType", "").lower() == "audio/opus"
        and isinstance(getattr(c, "parameters", None), dict)
        for c in audio
    )


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _lookup(module: str, *path: str) -> Any:
    found: Any = _module(module)
    if found is None:
        return _MISSING
    for part in path:
        found = getattr(found, part, _MISSING)
        if found is _MISSING:
            return _MISSING
    return found


def _private(cls: str, attribute: str) -> str:
    """The name as Python stores it: `__connect` in RTCPeerConnection is `_RTCPeerConnection__connect`."""
    return f"_{cls}{attribute}" if attribute.startswith("__") else attribute


def _method(module: str, cls: str, attribute: str, used_by: str, library: str = "aiortc") -> Need:
    stored = _private(cls, attribute)
    return Need(library, f"{cls}.{attribute}", used_by, lambda: callable(_lookup(module, cls, stored)))


def _names(module: str, attributes: tuple[str, ...], used_by: str) -> list[Need]:
    return [Need("aiortc", f"{module}.{a}", used_by, _defined(module, a)) for a in attributes]


def _defined(module: str, attribute: str) -> Callable[[], bool]:
    return lambda: _lookup(module, attribute) is not _MISSING


def _assigned(
    module: str, cls: str, attribute: str, used_by: str, *, library: str = "aiortc", name: str = ""
) -> Need:
    """An instance attribute: some method of the class assigns it (read from its bytecode, so no
    instance is made: most of these need a running event loop or a transport)."""
    stored = _private(cls, attribute)

    def present() -> bool:
        found = _lookup(module, cls)
        return isinstance(found, type) and any(_stores(f.__code__, stored) for f in _functions(found))

    return Need(library, name or f"{cls}.{attribute}", used_by, present)


def _functions(cls: type) -> Iterator[Any]:
    for _, member in inspect.getmembers(cls):
        function = getattr(member, "fget", member)  # a property's getter
        if hasattr(function, "__code__"):
            yield function


def _codes(code: CodeType) -> Iterator[CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _codes(const)


def _stores(code: CodeType, attribute: str) -> bool:
    return any(
        ins.opname == "STORE_ATTR" and ins.argval == attribute
        for inner in _codes(code)
        for ins in dis.get_instructions(inner)
    )


def _loads_global(code: CodeType, name: str) -> bool:
    return any(
        ins.opname == "LOAD_GLOBAL" and ins.argval == name
        for inner in _codes(code)
        for ins in dis.get_instructions(inner)
    )


def _jitter_buffer_has(field: str) -> Callable[[], bool]:
    """A field of a video JitterBuffer as jitter.py reads it: the ring of packet slots, its size, the
    sequence number at its start (None while empty), and the video flag."""

    def present() -> bool:
        from aiortc.jitterbuffer import JitterBuffer

        buffer = JitterBuffer(capacity=16, is_video=True)
        expected: dict[str, Callable[[Any], bool]] = {
            "capacity": lambda value: value == 16,
            "_capacity": lambda value: value == 16,
            "_origin": lambda value: value is None,
            "_packets": lambda value: isinstance(value, list) and len(value) == 16,
            "_is_video": lambda value: value is True,
        }
        return expected[field](getattr(buffer, field))

    return present


def _jitter_frame() -> bool:
    from aiortc.jitterbuffer import JitterFrame

    frame = JitterFrame(data=b"x", timestamp=1)
    return frame.data == b"x" and frame.timestamp == 1


def _host_addresses_hook() -> bool:
    import aioice.ice

    functions = _functions(aioice.ice.Connection)
    return callable(getattr(aioice.ice, "get_host_addresses", None)) and any(
        _loads_global(f.__code__, "get_host_addresses") for f in functions
    )
