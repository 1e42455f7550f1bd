"""The picamera2 stand-in (tests/stand_ins/picamera2), importable as `picamera2` inside a test.

Its package metadata (tests/stand_ins/picamera2-0.3.36.dist-info) is found by importlib.metadata as a
real installation's would be; `present_picamera2_version` puts another version ahead of it."""

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


def present_picamera2_version(
    stand_in: ModuleType, monkeypatch: pytest.MonkeyPatch, directory: Path, version: str
) -> None:
    """Make picamera2 `version` the installed one as far as package metadata goes: its dist-info is put
    ahead of the stand-in's on sys.path (as an older system package found first would be), and the
    next `import picamera2` is a fresh one, which then behaves as that version where it models one."""
    entry = directory / f"site-{version}"  # one sys.path entry per version: one dist-info in each
    dist = entry / f"picamera2-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: picamera2\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(entry))
    stand_in.reimport()
