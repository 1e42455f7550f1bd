"""The picamera2 stand-in (tests/stand_ins/picamera2), importable as `picamera2` inside a test."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

STAND_INS = Path(__file__).parent / "stand_ins"


def _drop_stand_in_modules() -> None:
    for name in [m for m in sys.modules if m == "picamera2" or m.startswith("picamera2.")]:
        del sys.modules[name]


@pytest.fixture
def pi(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The picamera2 stand-in importable as `picamera2`; yields its control module (no camera yet)."""
    monkeypatch.syspath_prepend(str(STAND_INS))
    _drop_stand_in_modules()
    stand_in = importlib.import_module("picamera2.stand_in")
    assert Path(stand_in.__file__).is_relative_to(STAND_INS), "the real picamera2 must not be used here"
    stand_in.reset()
    yield stand_in
    stand_in.reset()
    _drop_stand_in_modules()
