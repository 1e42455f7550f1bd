"""What a call's receiver saw, the same way for every kind of peer (kiosk, Chromium, bare aiortc), so
that the figures of different pairs over the same impaired path compare.

- Audio: `concealed_share`, the share of playout time made up (concealed, or silence) because packets
  were missing: Chromium's concealedSamples / totalSamplesReceived.
- Video: `freeze_share`, the share of the watched time spent in freezes as WebRTC's stats define one
  (an inter-frame gap longer than max(3 x the mean interval, mean + 150 ms)), and frames per second.
- Delay: mouth-to-ear and glass-to-glass, where the pair can measure them (None where it cannot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kiosk.calls.freezes import FreezeMeter


@dataclass
class PairQuality:
    """One direction of one call: what the receiving side saw."""

    pair: str  # "kiosk", "chromium", "aiortc"
    profile: str
    audio_concealed_share: float | None = None
    audio_delay_ms_p50: float | None = None
    audio_delay_ms_p95: float | None = None
    video_freeze_share: float | None = None
    video_fps: float | None = None
    video_delay_ms_p95: float | None = None
    video_width: int | None = None
    figures: dict[str, float] = field(default_factory=dict)  # what only some profiles have
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _meter(arrivals: Sequence[float]) -> FreezeMeter:
    meter = FreezeMeter()
    for at in arrivals:
        meter.frame(at)
    return meter


def freeze_share(arrivals: Sequence[float]) -> float:
    """Time in freezes over the time from the first frame to the last (kiosk.calls.freezes' rule)."""
    return _meter(arrivals).freeze_share


def frames_per_second(arrivals: Sequence[float]) -> float:
    return _meter(arrivals).frames_per_second
