"""When a stream's samples were produced or played, for measuring delay from the audio itself.

The emulated microphone and speaker keep one each (saved beside what the speaker wrote); the network
lab's mouth-to-ear figure (kiosk/netlab/mouth_to_ear.py) reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class SampleClock:
    """When a stream's samples were produced or played: (monotonic time, samples before it) pairs."""

    rate: int
    points: list[tuple[float, int]] = field(default_factory=list)

    def mark(self, at: float, samples: int) -> None:
        self.points.append((at, samples))

    def time_of(self, sample: float) -> float | None:
        """When sample number `sample` was produced (interpolated); None outside the timeline."""
        if not self.points or sample < self.points[0][1] or sample > self.points[-1][1] + self.rate:
            return None
        counts = np.array([p[1] for p in self.points], dtype=np.float64)
        times = np.array([p[0] for p in self.points], dtype=np.float64)
        index = int(np.searchsorted(counts, sample, side="right")) - 1
        index = max(0, index)
        return float(times[index] + (sample - counts[index]) / self.rate)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"rate": self.rate, "points": self.points}))

    @classmethod
    def load(cls, path: Path) -> SampleClock:
        data = json.loads(path.read_text())
        return cls(int(data["rate"]), [(float(t), int(n)) for t, n in data["points"]])
