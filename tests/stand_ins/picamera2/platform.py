"""Stand-in picamera2.platform: which Raspberry Pi this is, found once, when picamera2 is imported.

As picamera2 does, it goes through /dev/video0..63 (here the stand-in's simulated nodes) asking each for
its card name: "pispbe" (the Pi 5's back end) means PISP, "bcm2835-isp" ends the search on VC4, and
nothing found (or any error) leaves VC4.
"""

from __future__ import annotations

from enum import Enum

from picamera2 import stand_in


class Platform(Enum):
    VC4 = 0
    PISP = 1


def _detect() -> Platform:
    try:
        nodes = stand_in.video_nodes()
        for num in range(64):
            card = nodes.get(f"/dev/video{num}")
            if card == "pispbe":
                return Platform.PISP
            if card == "bcm2835-isp":
                break
    except Exception:
        pass
    return Platform.VC4


_platform = _detect()


def get_platform() -> Platform:
    return _platform
