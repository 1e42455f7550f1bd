"""Installs as a real user's machine would: constraints.txt is the set the tests run with, a Raspberry
Pi's venv keeps the numpy major of its OS (scripts/install-pi.sh), and every package a Pi installs has
a wheel for linux aarch64 on Python 3.11 (Bookworm) and 3.13 (Trixie), so nothing but the packages
listed in SOURCE_BUILT is ever compiled on a Pi.

The wheel checks ask PyPI (a resolver dry run for that platform, metadata only): they need network
access, and fail, not skip, without it.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import ssl
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
INSTALLER = ROOT / "scripts" / "install-pi.sh"
PYPI = "https://pypi.org/simple"

# Built from source on the Pi, deliberately; each has no wheel for linux aarch64 (checked below, so
# the list cannot go stale, and nothing else may join it unnoticed). install-pi.sh's SOURCE_BUILT.
SOURCE_BUILT = {
    "pyalsaaudio": "only an sdist on PyPI; compiled against the Pi's own alsa-lib by install-pi.sh, "
    "which installs gcc, python3-dev and libasound2-dev first",
}
# From Raspberry Pi OS's apt repository, never from pip on the Pi (and so in neither pyproject.toml's
# dependencies nor constraints.txt). numpy too comes from apt when the OS's is new enough (Trixie).
FROM_APT = {
    "picamera2": "python3-picamera2: needs the libcamera Python bindings, which only Raspberry Pi OS ships",
    "lgpio": "python3-lgpio: the GPIO pin factory a Pi 5 needs, built for the OS's kernel interface",
}
# What a venv comes with (pip freeze leaves them out): not pinned. colorzero (gpiozero) declares
# setuptools but does not import it.
TOOLING = {"pip", "setuptools", "wheel"}
# (Python, the OS's glibc): Raspberry Pi OS Bookworm and Trixie, 64-bit.
PI_PYTHONS = {"3.11": (2, 36), "3.13": (2, 41)}


# ----------------------------------------------------------------------------- reading the pins


def constraint_lines() -> list[Requirement]:
    lines = (line.strip() for line in CONSTRAINTS.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def target_environment(python: str, machine: str = "aarch64") -> dict[str, str]:
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_version": f"{python}.0",
    }


def pins_for(environment: dict[str, str] | None = None) -> dict[str, str]:
    """name -> exact version, for the constraint lines whose markers hold in `environment` (default:
    this interpreter)."""
    pins: dict[str, str] = {}
    for req in constraint_lines():
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: {req} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt pins {name} twice for {environment or 'this machine'}"
        pins[name] = spec.version
    return pins


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def runtime_requirements() -> list[Requirement]:
    return [Requirement(line) for line in pyproject()["dependencies"]]  # type: ignore[attr-defined]


def installer_array(name: str) -> list[str]:
    """A bash array of install-pi.sh, e.g. SOURCE_BUILT=(pyalsaaudio)."""
    match = re.search(rf"^{name}=\(([^)]*)\)", INSTALLER.read_text(), re.MULTILINE)
    assert match, f"no {name}=(...) in {INSTALLER}"
    return [word for word in match.group(1).split() if not word.startswith("#")]


# ----------------------------------------------------------------------------- constraints.txt


def test_constraints_are_exactly_what_the_tests_run_with() -> None:
    """Every package kiosk[test] needs, transitively, installed here at the pinned version, and no pin
    for anything it does not need (a stale line)."""
    top = [*runtime_requirements()]
    top += [Requirement(line) for line in pyproject()["optional-dependencies"]["test"]]  # type: ignore[index]
    needed: dict[str, str] = {}
    todo: list[Requirement] = list(top)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in needed:
            continue
        needed[name] = importlib.metadata.version(req.name)
        for line in importlib.metadata.requires(req.name) or []:
            dep = Requirement(line)
            extras = req.extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(dep)
    for name in TOOLING:
        needed.pop(name, None)
    pins = pins_for()
    wrong = {name: (version, pins.get(name)) for name, version in needed.items() if pins.get(name) != version}
    assert not wrong, f"installed version vs constraints.txt (update the file): {wrong}"
    assert set(pins) == set(needed), f"pinned but not needed: {sorted(set(pins) - set(needed))}"


def test_constraints_agree_with_pyproject_ranges() -> None:
    """Each runtime dependency's pin, on every platform the markers name, is inside pyproject's range."""
    for environment in (target_environment("3.11", "x86_64"), *map(target_environment, PI_PYTHONS)):
        pins = pins_for(environment)
        for req in runtime_requirements():
            version = pins[canonicalize_name(req.name)]
            assert req.specifier.contains(version, prereleases=True), (req, version, environment)


def test_numpy_pins_one_of_each_major_by_platform() -> None:
    """numpy 2 on CI (x86_64, Python 3.11) and on 3.13; numpy 1 on an aarch64 3.11 (a Bookworm Pi
    without the OS's numpy), and that is the pin run-tests.sh's numpy 1 pass uses."""
    assert Version(pins_for(target_environment("3.11", "x86_64"))["numpy"]).major == 2
    assert Version(pins_for(target_environment("3.13"))["numpy"]).major == 2
    assert Version(pins_for(target_environment("3.11"))["numpy"]).major == 1


def test_setup_installs_with_the_constraints_and_reinstalls_when_they_change() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r'pip install .*-e "\.\[test\]" --constraint constraints\.txt', setup)
    assert "cat pyproject.toml constraints.txt | sha256sum" in setup


# ----------------------------------------------------------------------------- install-pi.sh's numpy


def installer_on_a_pi(tmp_path: Path, option: str, answer: str | None) -> subprocess.CompletedProcess[str]:
    """install-pi.sh `option` on a machine whose OS's Python answers the installer's one question to
    it (a package's version) with `answer` (None: not installed): a stand-in python3 on PATH."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    body = f"echo {answer}" if answer else "exit 1"
    (stubs / "python3").write_text(f"#!/bin/sh\n{body}\n")
    (stubs / "python3").chmod(0o755)
    return subprocess.run(
        ["bash", str(INSTALLER), option],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"},
    )


def pi_constraints(tmp_path: Path, system_numpy: str | None) -> subprocess.CompletedProcess[str]:
    """install-pi.sh --print-constraints on a machine whose OS's Python has this numpy (None: none)."""
    return installer_on_a_pi(tmp_path, "--print-constraints", system_numpy)


def numpy_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("numpy")]


@pytest.mark.parametrize(
    ("os_name", "system_numpy", "expected"),
    [
        # Bookworm: Python 3.11, numpy 1.24, older than livekit's 1.26: the numpy 1 pin, same major.
        ("bookworm", "1.24.2", "numpy==1.26.4"),
        ("bookworm, numpy 1.26", "1.26.4", "numpy==1.26.4"),
        # Trixie: Python 3.13, numpy 2.2: the OS's own, so pip installs no numpy.
        ("trixie", "2.2.4", "numpy==2.2.4"),
    ],
)
def test_the_pi_venv_keeps_the_numpy_major_of_its_os(
    os_name: str, system_numpy: str, expected: str, tmp_path: Path
) -> None:
    result = pi_constraints(tmp_path, system_numpy)
    assert result.returncode == 0, result.stderr
    assert numpy_lines(result.stdout) == [expected], os_name
    version = expected.removeprefix("numpy==")
    assert Version(version).major == Version(system_numpy).major
    numpy_range = next(r.specifier for r in runtime_requirements() if r.name == "numpy")
    assert numpy_range.contains(version)
    # Everything else is constraints.txt's, unchanged.
    others = [line for line in result.stdout.splitlines() if not line.startswith(("numpy", "#"))]
    assert others == [
        line for line in CONSTRAINTS.read_text().splitlines() if not line.startswith(("numpy", "#")) and line
    ]


def test_an_os_without_numpy_gets_the_constraints_own_lines(tmp_path: Path) -> None:
    result = pi_constraints(tmp_path, None)
    assert result.returncode == 0, result.stderr
    assert numpy_lines(result.stdout) == numpy_lines(CONSTRAINTS.read_text())


def test_an_os_numpy_with_no_usable_pin_stops_the_installer(tmp_path: Path) -> None:
    result = pi_constraints(tmp_path, "0.9.1")
    assert result.returncode != 0
    assert "the OS's numpy 0.9.1 is older than pyproject.toml's 1.26" in result.stderr


def test_the_numpy_floor_the_installer_compares_with_is_pyprojects() -> None:
    """install-pi.sh reads the floor from pyproject.toml's "numpy>=X": it must be written so."""
    numpy = [line for line in pyproject()["dependencies"] if line.startswith("numpy")]  # type: ignore[attr-defined]
    assert len(numpy) == 1 and re.match(r"numpy>=1\.26(,|$)", numpy[0]), numpy


# ----------------------------------------------------------------------------- aarch64 wheels on PyPI


def pip_environment() -> dict[str, str]:
    """PyPI only: this machine's pip configuration adds local indexes, wheel directories and a
    constraint file, none of which a Pi has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if "PIP_CERT" in os.environ:
        env["PIP_CERT"] = os.environ["PIP_CERT"]
    return env


@pytest.fixture(scope="module")
def pypi() -> None:
    cafile = os.environ.get("PIP_CERT")
    context = ssl.create_default_context(cafile=cafile if cafile and Path(cafile).exists() else None)
    try:
        with urllib.request.urlopen(f"{PYPI}/pip/", timeout=20, context=context) as response:
            response.read(1)
    except OSError as exc:
        pytest.fail(
            f"PyPI is unreachable ({exc}): this test resolves the pinned versions for linux aarch64 "
            f"against {PYPI} and needs network access to it"
        )


def pip_for_pi(python: str, *args: str) -> subprocess.CompletedProcess[str]:
    """pip, resolving wheels only for a 64-bit Raspberry Pi OS with this Python (its glibc's tags)."""
    glibc_major, glibc_minor = PI_PYTHONS[python]
    platforms = ["manylinux2014_aarch64"]
    platforms += [f"manylinux_{glibc_major}_{minor}_aarch64" for minor in range(17, glibc_minor + 1)]
    abi = "cp" + python.replace(".", "")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    command += ["--index-url", PYPI, "--only-binary=:all:", "--implementation", "cp", "--abi", abi]
    command += ["--python-version", python, *(f"--platform={p}" for p in platforms), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=pip_environment())


def explain(result: subprocess.CompletedProcess[str], python: str) -> str:
    output = result.stdout + result.stderr
    missing = re.findall(r"satisfies the requirement (\S+)", output)
    # A pin with no wheel, met by a range: "... no matching distributions available for your
    # environment:" followed by the names, indented.
    block = re.search(
        r"no matching distributions available for your environment:\n((?:[ \t]+\S+\n?)+)", output
    )
    missing += block.group(1).split() if block else []
    if missing:
        return (
            f"no linux aarch64 wheel for Python {python} on PyPI for {', '.join(sorted(set(missing)))}: a Pi "
            f"would have to build it from source. Pin a version that has one in constraints.txt, or, if it "
            f"is meant to be built on the Pi, add it to SOURCE_BUILT (here and in install-pi.sh) with why.\n"
            f"{output}"
        )
    if re.search(r"(?i)connection|resolve|unreachable|timed out|max retries", output):
        return f"pip could not reach PyPI ({PYPI}); this test needs network access to it.\n{output}"
    return output


@pytest.mark.parametrize("python", list(PI_PYTHONS))
def test_every_pinned_dependency_has_an_aarch64_wheel(python: str, pypi: None, tmp_path: Path) -> None:
    """A resolver dry run of the runtime dependencies at constraints.txt's pins (markers evaluated for
    aarch64 and this Python: numpy 1.26.4 on 3.11, which Bookworm's venv gets; numpy 2 on 3.13, which
    a Trixie without python3-numpy gets), wheels only: it succeeds only if every package, transitive
    ones too, has a wheel for the Pi. Every package it picks must be pinned."""
    pins = pins_for(target_environment(python))
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    requirements = [str(r) for r in runtime_requirements() if canonicalize_name(r.name) not in SOURCE_BUILT]
    report = tmp_path / "report.json"
    result = pip_for_pi(python, "--constraint", str(constraints), "--report", str(report), *requirements)
    assert result.returncode == 0, explain(result, python)
    picked = {
        canonicalize_name(item["metadata"]["name"]): (
            item["metadata"]["version"],
            item["download_info"]["url"],
        )
        for item in json.loads(report.read_text())["install"]
    }
    for name, (version, url) in picked.items():
        assert url.endswith(".whl"), (name, url)
        if name not in TOOLING:
            assert pins.get(name) == version, (
                f"{name} {version} is not pinned in constraints.txt ({pins.get(name)})"
            )
    for name in (*SOURCE_BUILT, *FROM_APT):
        assert name not in picked, f"{name} is installed by pip on the Pi: {picked[name]}"


@pytest.mark.parametrize("python", list(PI_PYTHONS))
def test_the_source_built_packages_are_exactly_those_without_an_aarch64_wheel(
    python: str, pypi: None
) -> None:
    pins = pins_for(target_environment(python))
    for name in SOURCE_BUILT:
        assert name in pins, f"{name} is built on the Pi but not pinned in constraints.txt"
        result = pip_for_pi(python, "--no-deps", f"{name}=={pins[name]}")
        output = result.stdout + result.stderr
        assert result.returncode != 0, (
            f"{name} {pins[name]} now has a linux aarch64 wheel for Python {python}: take it (drop {name} "
            f"from SOURCE_BUILT here and in install-pi.sh) or say here why it is still built"
        )
        assert "No matching distribution" in output, explain(result, python)


def test_the_source_built_list_is_the_installers_and_hides_no_dependencies() -> None:
    """install-pi.sh lets exactly these build (--no-binary); the wheel check leaves them out of its
    resolution, so they must not bring dependencies of their own."""
    assert set(installer_array("SOURCE_BUILT")) == set(SOURCE_BUILT)
    for name in SOURCE_BUILT:
        assert not importlib.metadata.requires(name), f"{name} has dependencies the wheel check would miss"
    assert "--only-binary=:all:" in INSTALLER.read_text()


def test_the_apt_packages_are_not_installed_by_pip() -> None:
    apt = installer_array("APT_PACKAGES")
    pinned = (
        set(pins_for())
        | set(pins_for(target_environment("3.11")))
        | set(pins_for(target_environment("3.13")))
    )
    runtime = {canonicalize_name(r.name) for r in runtime_requirements()}
    for name in FROM_APT:
        assert f"python3-{name}" in apt, name
        assert name not in runtime and name not in pinned, name


# ----------------------------------------------------------------------------- install-pi.sh's picamera2


def check_picamera2(tmp_path: Path, installed: str | None) -> subprocess.CompletedProcess[str]:
    """install-pi.sh --check-picamera2 where the OS's Python has this picamera2 (None: none)."""
    return installer_on_a_pi(tmp_path, "--check-picamera2", installed)


@pytest.mark.parametrize(
    ("installed", "accepted"),
    [("0.3.19", False), ("0.3.9", False), ("0.3.20", True), ("0.3.36", True), ("1.0.0", True), (None, True)],
)
def test_the_installer_refuses_a_picamera2_older_than_the_kiosk_needs(
    tmp_path: Path, installed: str | None, accepted: bool
) -> None:
    from kiosk.media.picamera import MIN_PICAMERA2_VERSION

    result = check_picamera2(tmp_path, installed)
    assert (result.returncode == 0) == accepted, result.stderr
    if not accepted:
        assert f"picamera2 {installed} is too old: the kiosk needs {MIN_PICAMERA2_VERSION}" in result.stderr
