#!/usr/bin/env bash
# Set up what the project needs on Debian 12 / Raspberry Pi OS Bookworm: system packages, then the
# virtual environment at .venv/ with the project and its test tools. With --tests, also the servers
# and the browser the test suite starts (scripts/run-tests.sh passes it; the kiosk app needs none of
# them). Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# libasound2-dev and gcc build pyalsaaudio; alsa-utils gives aplay/arecord for checking a device.
# libgl1, libgl1-mesa-dri and libegl1 let Kivy render (offscreen through EGL where there is no display).
APT_PACKAGES=(python3 python3-venv python3-pip python3-dev gcc pkg-config libasound2-dev alsa-utils
    libgl1 libgl1-mesa-dri libegl1 libmtdev1)
# What the tests start for themselves, each a private instance on loopback.
TEST_APT_PACKAGES=(
    chromium  # a real browser peer for the web client's tests (Playwright drives it; no browser download)
    coturn  # turnserver for the TURN tests, which start their own on a private network namespace
    redis-server  # shared live state for several server processes (`kiosk server --redis`); tests start their own
    postgresql  # users and call logs shared by server processes on several hosts (`kiosk server --database`); tests start their own
    janus)  # the SFU for group calls larger than the mesh (VideoRoom plugin); tests start their own
case "${1:-}" in
    --tests) APT_PACKAGES+=("${TEST_APT_PACKAGES[@]}") ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing system packages: ${missing[*]}" >&2
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
    if [[ " ${missing[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null; then
        # Debian enables coturn's system service on install and starts it under systemd (all interfaces,
        # port 3478). The tests run their own turnserver: do not leave that one running or starting at boot.
        "${sudo_cmd[@]}" systemctl disable coturn.service >/dev/null 2>&1 || true
        if [ -d /run/systemd/system ]; then "${sudo_cmd[@]}" systemctl stop coturn.service || true; fi
    fi
    if [[ " ${missing[*]} " == *" redis-server "* ]]; then
        # Likewise Debian's redis-server service (port 6379): the tests start a private redis-server, and
        # a deployment runs the one it configures. Without systemd (a container) the package's init
        # script may have started it: stop that one too.
        if command -v systemctl >/dev/null; then
            "${sudo_cmd[@]}" systemctl disable redis-server.service >/dev/null 2>&1 || true
            if [ -d /run/systemd/system ]; then "${sudo_cmd[@]}" systemctl stop redis-server.service || true; fi
        fi
        if [ ! -d /run/systemd/system ] && [ -x /etc/init.d/redis-server ]; then
            "${sudo_cmd[@]}" /etc/init.d/redis-server stop >/dev/null 2>&1 || true
        fi
    fi
    if [[ " ${missing[*]} " == *" postgresql "* ]]; then
        # Likewise Debian's postgresql service (the cluster it creates, port 5432): the tests run a private
        # PostgreSQL from the package's binaries (/usr/lib/postgresql/<version>/bin), and a deployment
        # runs the database it configures (docs/scale-out.md).
        if command -v systemctl >/dev/null; then
            "${sudo_cmd[@]}" systemctl disable postgresql.service >/dev/null 2>&1 || true
            if [ -d /run/systemd/system ]; then "${sudo_cmd[@]}" systemctl stop postgresql.service || true; fi
        fi
        if [ ! -d /run/systemd/system ] && [ -x /etc/init.d/postgresql ]; then
            "${sudo_cmd[@]}" /etc/init.d/postgresql stop >/dev/null 2>&1 || true
        fi
    fi
    if [[ " ${missing[*]} " == *" janus "* ]]; then
        # Likewise Debian's janus service (HTTP API on 8088, all interfaces, demo rooms): the tests start
        # a private janus from a generated configuration, and a deployment configures its own.
        if command -v systemctl >/dev/null; then
            "${sudo_cmd[@]}" systemctl disable janus.service >/dev/null 2>&1 || true
            if [ -d /run/systemd/system ]; then "${sudo_cmd[@]}" systemctl stop janus.service || true; fi
        fi
        if [ ! -d /run/systemd/system ] && [ -x /etc/init.d/janus ]; then
            "${sudo_cmd[@]}" /etc/init.d/janus stop >/dev/null 2>&1 || true
        fi
    fi
fi

python=${KIOSK_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)" >&2
    "$python" -m venv .venv
fi

# Reinstall only when the dependency list or the pinned versions changed. constraints.txt holds the
# exact version of every package (transitive ones too) that the tests ran with.
stamp=.venv/.kiosk-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup: installing Python packages into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]" --constraint constraints.txt
    echo "$want" > "$stamp"
fi
