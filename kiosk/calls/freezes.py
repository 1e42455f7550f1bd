"""Video freezes as WebRTC's statistics define them (freezeCount, totalFreezesDuration): a gap between
two shown frames longer than max(3 x the mean gap so far, the mean + 150 ms). Counted as frames come,
in constant memory, so a kiosk reports what Chromium reports and the two compare."""

from __future__ import annotations

from dataclasses import dataclass

FREEZE_EXTRA_SECONDS = 0.150


@dataclass
class FreezeMeter:
    frames: int = 0
    freeze_count: int = 0
    freeze_seconds: float = 0.0
    first_at: float | None = None
    last_at: float | None = None

    def frame(self, at: float) -> None:
        """A frame shown (decoded) at `at`, seconds."""
        if self.last_at is not None and self.first_at is not None and self.frames >= 2:
            gap = at - self.last_at
            mean = (self.last_at - self.first_at) / (self.frames - 1)
            if gap > max(3 * mean, mean + FREEZE_EXTRA_SECONDS):
                self.freeze_count += 1
                self.freeze_seconds += gap
        if self.first_at is None:
            self.first_at = at
        self.last_at = at
        self.frames += 1

    @property
    def span(self) -> float:
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.last_at - self.first_at

    @property
    def freeze_share(self) -> float:
        """Time frozen over the time from the first frame to the last."""
        return self.freeze_seconds / self.span if self.span > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return (self.frames - 1) / self.span if self.span > 0 else 0.0
