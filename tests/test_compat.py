"""kiosk/calls/compat.py: the private parts of aiortc and aioice the kiosk uses, checked at start; a
missing one is one line naming the library's version, and `kiosk run/endpoint/demo` exit 2."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import aioice.ice
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtptransceiver import RTCRtpTransceiver
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from kiosk import cli
from kiosk.calls import Calls, compat

ROOT = Path(__file__).resolve().parent.parent
AIORTC = compat.version("aiortc")
AIOICE = compat.version("aioice")
TESTED_AIORTC = f"(tested: aiortc {compat.TESTED['aiortc']})"


@pytest.fixture(autouse=True)
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: the check not yet passed."""
    monkeypatch.setattr(compat, "_passed", False)


def failure() -> str:
    with pytest.raises(compat.IncompatibleLibrary) as info:
        compat.check_aiortc()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_installed_aiortc_and_aioice_pass() -> None:
    gone = [need.name for need in compat.needs() if not need.present()]
    assert gone == []
    compat.check_aiortc()


def test_the_tested_ranges_are_the_ones_pyproject_pins_and_the_installed_versions_are_in_them() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {(r := Requirement(line)).name.lower(): r.specifier for line in dependencies}
    for library, tested in compat.TESTED.items():
        assert pins[library] == SpecifierSet(tested), library
        assert compat.version(library) in SpecifierSet(tested), library


def test_a_missing_method_is_named_with_the_aiortc_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    assert failure() == (
        f"aiortc {AIORTC} is not supported: RTCRtpSender._send_keyframe is gone {TESTED_AIORTC}"
    )


def test_a_name_mangled_method_is_named_as_the_source_spells_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCPeerConnection, "_RTCPeerConnection__connect")
    assert "RTCPeerConnection.__connect is gone" in failure()


def test_an_instance_attribute_the_constructor_no_longer_sets_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_codecs` and `_ssrc` are instance attributes: the check reads what the class's methods assign."""
    original: Callable[..., None] = RTCRtpTransceiver.__init__

    def renamed(self: RTCRtpTransceiver, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        self.negotiated_codecs = self.__dict__.pop("_codecs")

    monkeypatch.setattr(RTCRtpTransceiver, "__init__", renamed)
    assert failure() == (
        f"aiortc {AIORTC} is not supported: RTCRtpTransceiver._codecs is gone {TESTED_AIORTC}"
    )


def test_a_jitter_buffer_field_jitter_py_reads_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    original: Callable[..., None] = JitterBuffer.__init__

    def renamed(self: JitterBuffer, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)
        self.slots = self.__dict__.pop("_packets")

    monkeypatch.setattr(JitterBuffer, "__init__", renamed)
    assert "JitterBuffer._packets is gone" in failure()


def test_several_gone_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    monkeypatch.delattr(RTCRtpSender, "_handle_rtcp_packet")
    assert failure() == (
        f"aiortc {AIORTC} is not supported: RTCRtpSender._send_keyframe, RTCRtpSender._handle_rtcp_packet "
        f"are gone {TESTED_AIORTC}"
    )


def test_aioice_is_named_with_its_own_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(aioice.ice, "get_host_addresses")
    assert failure() == (
        f"aioice {AIOICE} (with aiortc {AIORTC}) is not supported: aioice.ice.get_host_addresses is gone "
        f"(tested: aioice {compat.TESTED['aioice']})"
    )


def test_the_check_runs_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    compat.check_aiortc()
    calls: list[int] = []
    monkeypatch.setattr(compat, "needs", lambda: calls.append(1) or [])
    compat.check_aiortc()
    compat.check_aiortc()
    assert calls == []


def test_the_sdk_refuses_to_start_with_an_unsupported_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(RTCRtpSender, "_next_encoded_frame")
    with pytest.raises(compat.IncompatibleLibrary, match=r"RTCRtpSender\._next_encoded_frame is gone"):
        Calls("http://127.0.0.1:9")


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["endpoint", "--server", "http://127.0.0.1:9", "--auth-token", "t", "--answer"],
        ["run", "--config", str(ROOT / "config" / "emulated.toml")],
    ],
    ids=lambda argv: argv[0],
)
def test_the_commands_that_make_calls_print_one_line_and_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"kiosk {argv[0]}: aiortc {AIORTC} is not supported: RTCRtpSender._send_keyframe is gone "
        f"{TESTED_AIORTC}\n"
    )


def test_a_command_that_makes_no_call_does_not_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(RTCRtpSender, "_send_keyframe")
    assert cli.main(["check-config", "--config", str(ROOT / "config" / "emulated.toml")]) == 0
    assert "not supported" not in capsys.readouterr().err
