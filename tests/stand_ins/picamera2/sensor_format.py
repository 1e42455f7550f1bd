"""Stand-in picamera2.sensor_format: a raw format's name taken apart ("SRGGB10_CSI2P")."""

from __future__ import annotations

import re


class SensorFormat:
    def __init__(self, fmt_string: str) -> None:
        pixels, _, packing = fmt_string.partition("_")
        self.packing: str | None = packing or None
        match = re.search(r"\d+$", pixels)
        colours = re.search(r"[RGB]+", pixels)
        if match is None or colours is None:
            raise ValueError(f"not a raw sensor format: {fmt_string!r}")
        self.bit_depth = 16 if self.packing in ("PISP_COMP1", "PISP_COMP2") else int(match.group())
        self.bayer_order = colours.group()

    @property
    def mono(self) -> bool:
        return self.bayer_order == "R"

    @property
    def unpacked(self) -> str:
        return f"{'' if self.mono else 'S'}{self.bayer_order}{self.bit_depth}"

    @property
    def format(self) -> str:
        return self.unpacked + (f"_{self.packing}" if self.packing else "")

    def __repr__(self) -> str:
        return self.format

    def __str__(self) -> str:
        return self.format
