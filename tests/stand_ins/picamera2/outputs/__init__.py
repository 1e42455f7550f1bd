"""Stand-in picamera2.outputs: the Output base class encoders write to."""

from __future__ import annotations

from typing import Any


class Output:
    def __init__(self, pts: Any = None) -> None:
        self.recording = False
        self.ptsoutput = pts
        self.needs_pacing = False
        self.needs_add_stream = False

    def start(self) -> None:
        self.recording = True

    def stop(self) -> None:
        self.recording = False

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        """Called with each encoded frame (timestamp in microseconds from the encoder's first frame)
        by the V4L2 encoder's poll thread, or by the libav encoder in the camera's event loop."""

    def _add_stream(self, encoder_stream: Any, *args: Any, **kwargs: Any) -> None:
        """Told about the encoder's stream when it starts."""


__all__ = ["Output"]
