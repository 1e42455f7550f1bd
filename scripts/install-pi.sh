#!/usr/bin/env bash
# Install the kiosk on Raspberry Pi OS Bookworm or Trixie (Pi 4, Pi 5) from this checkout, as root:
#
#   sudo scripts/install-pi.sh [--with-server] [--start]
#
# System packages, the project in /opt/kiosk/.venv (with the OS's picamera2 and lgpio visible; the
# versions of constraints.txt, numpy the OS's major), the `kiosk` user and its groups,
# /etc/kiosk/kiosk.toml (only if there is none), and the systemd unit, enabled. Running it again
# changes only what differs: it is also the update command.
#
# Options:
#   --with-server  also install and enable the call server (kiosk-server.service, user kiosk-server)
#   --start        start (or restart) the services at the end
#   --no-enable    install the units but do not enable them
#   --root DIR     install under DIR instead of / (a test or an image build): files, directories and
#                  unit links are made there; apt, users, chown, the venv and running services are
#                  only printed
#   --dry-run      change nothing, print what would be done
#   --print-constraints  print the pip constraints this machine would install with, and exit
#   --check-picamera2    check the OS's picamera2 is new enough (0 if so or if there is none), and exit
# See docs/install.md.
set -euo pipefail
# What is installed must be readable by the kiosk user, whatever root's own umask is.
umask 022

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
DRY_RUN=0
WITH_SERVER=0
START=0
ENABLE=1
PRINT_CONSTRAINTS=0
CHECK_PICAMERA2=0

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
    --root)
        [ $# -ge 2 ] || { echo "install-pi: --root needs a directory" >&2; exit 2; }
        ROOT=$2
        shift 2
        ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --with-server) WITH_SERVER=1; shift ;;
    --start) START=1; shift ;;
    --no-enable) ENABLE=0; shift ;;
    --print-constraints) PRINT_CONSTRAINTS=1; shift ;;
    --check-picamera2) CHECK_PICAMERA2=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install-pi: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# ----------------------------------------------------------------------------- Python package versions

# The venv gets constraints.txt's versions (what the tests ran with) and no source builds but these:
# pyalsaaudio has no wheels (an sdist only) and is compiled against the Pi's own alsa-lib (gcc,
# python3-dev and libasound2-dev come from apt). Anything else built on a Pi would take hours or fail;
# tests/test_dependencies.py checks that exactly these lack a linux aarch64 wheel.
SOURCE_BUILT=(pyalsaaudio)

# The version of the OS's numpy (python3-numpy), read from the OS's Python; empty if it has none.
system_numpy() {
    python3 -I -c 'import importlib.metadata as m; print(m.version("numpy"))' 2>/dev/null || true
}

version_at_least() { # version floor
    [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# The venv's numpy constraint, given the OS's numpy version ("" for none). picamera2's compiled
# helpers from apt (simplejpeg) are built against the OS's numpy, and the venv sees the OS's
# packages, so the numpy they import is the venv's: it must be of the OS's major.
# - The OS's numpy, when it is at least pyproject.toml's floor: pip installs none (Trixie: 2.2).
# - Else constraints.txt's pin of the same major, newer than the OS's: numpy keeps its ABI from an
#   older to a newer release of a major (Bookworm: 1.24, below livekit's 1.26, so 1.26.4).
# - An OS with no numpy: constraints.txt's own lines.
numpy_constraint() { # system-numpy-version
    local system=$1 floor pin major=${1%%.*}
    if [ -z "$system" ]; then
        grep -E '^numpy==' "$SRC/constraints.txt"
        return 0
    fi
    floor=$(sed -n 's/^ *"numpy>=\([0-9.]*\).*/\1/p' "$SRC/pyproject.toml")
    if [ -z "$floor" ]; then
        echo "install-pi: no \"numpy>=...\" in pyproject.toml's dependencies" >&2
        return 1
    fi
    if version_at_least "$system" "$floor"; then
        echo "numpy==$system"
        return 0
    fi
    pin=$(sed -n "s/^numpy==\\($major\\.[0-9][0-9a-z.]*\\).*/\\1/p" "$SRC/constraints.txt" | head -n 1)
    if [ -z "$pin" ]; then
        echo "install-pi: the OS's numpy $system is older than pyproject.toml's $floor, and constraints.txt" \
            "pins no numpy $major.x to use instead" >&2
        return 1
    fi
    echo "numpy==$pin"
}

# constraints.txt as this machine installs it: its numpy line(s) replaced by the decision above.
pi_constraints() {
    local system numpy
    system=$(system_numpy)
    numpy=$(numpy_constraint "$system") || return 1
    grep -vE '^numpy==' "$SRC/constraints.txt"
    echo "# numpy for this machine (the OS's numpy: ${system:-none}), by scripts/install-pi.sh"
    echo "$numpy"
}

if ((PRINT_CONSTRAINTS)); then
    pi_constraints
    exit 0
fi

# picamera2 before 0.3.20 has no timeout on capture_request(wait=) and no cancel_all_and_flush: a camera
# that stops delivering blocks the kiosk's camera thread for good. The floor is the kiosk's own
# (kiosk/media/picamera.py MIN_PICAMERA2_VERSION), read from the source so there is one.
picamera2_floor() {
    sed -n 's/^MIN_PICAMERA2_VERSION = "\([0-9.]*\)".*/\1/p' "$SRC/kiosk/media/picamera.py"
}

system_picamera2() {
    python3 -I -c 'import importlib.metadata as m; print(m.version("picamera2"))' 2>/dev/null || true
}

# 0 if the OS's picamera2 is new enough, or absent (not a Pi: the kiosk then has no Pi camera); else
# the reason on stderr and 1.
picamera2_new_enough() {
    local installed floor
    installed=$(system_picamera2)
    floor=$(picamera2_floor)
    [ -n "$installed" ] || return 0
    if [ -z "$floor" ]; then
        echo "install-pi: no MIN_PICAMERA2_VERSION in kiosk/media/picamera.py" >&2
        return 1
    fi
    version_at_least "${installed%%-*}" "$floor" && return 0
    echo "install-pi: picamera2 $installed is too old: the kiosk needs $floor or newer (update Raspberry" \
        "Pi OS: sudo apt-get update && sudo apt-get full-upgrade)" >&2
    return 1
}

if ((CHECK_PICAMERA2)); then
    picamera2_new_enough
    exit $?
fi

ROOT=$(realpath -m "$ROOT")
# On the real root everything is done; under a prefix, what touches the running system is printed.
LIVE=0
if [ "$ROOT" = / ]; then
    LIVE=1
    P=""
else
    P=$ROOT
fi
if ((LIVE && !DRY_RUN)) && [ "$(id -u)" -ne 0 ]; then
    echo "install-pi: run as root (sudo $0)" >&2
    exit 1
fi

WORK=""
trap '[ -z "$WORK" ] || rm -rf "$WORK"' EXIT

OPT=/opt/kiosk
VENV=$OPT/.venv
CHANGES=0

say() { echo "install-pi: $*"; }
changed() { CHANGES=$((CHANGES + 1)); say "$*"; }

# Run a command that changes the live system; printed instead under --dry-run or --root.
live() {
    if ((DRY_RUN || !LIVE)); then
        say "would run: $*"
        return 0
    fi
    "$@"
}

# ----------------------------------------------------------------------------- helpers for files

ensure_dir() { # path mode [owner:group]
    local dir=$P$1 mode=$2 owner=${3:-}
    if [ ! -d "$dir" ]; then
        if ((DRY_RUN)); then say "would create $1/"; else mkdir -p "$dir"; changed "created $1/"; fi
    fi
    if [ -d "$dir" ] && [ "$(stat -c %a "$dir")" != "${mode#0}" ]; then
        if ((DRY_RUN)); then say "would chmod $mode $1"; else chmod "$mode" "$dir"; changed "chmod $mode $1"; fi
    fi
    [ -z "$owner" ] || ensure_owner "$1" "$owner"
}

ensure_owner() { # path owner:group (live only: a prefix has no kiosk user)
    local path=$P$1 owner=$2
    ((LIVE)) || return 0
    if [ ! -e "$path" ] || [ "$(stat -c %U:%G "$path")" = "$owner" ]; then return 0; fi
    if ((DRY_RUN)); then say "would chown $owner $1"; else chown "$owner" "$path"; changed "chown $owner $1"; fi
}

install_file() { # source target mode [owner:group]: copies only when the content differs
    local source=$1 target=$P$2 mode=$3 owner=${4:-}
    if [ ! -f "$target" ] || ! cmp -s "$source" "$target"; then
        if ((DRY_RUN)); then
            say "would install $2"
        else
            mkdir -p "$(dirname "$target")"
            # A temporary file and a rename: a running kiosk never reads a half-written file.
            cp "$source" "$target.new.$$"
            chmod "$mode" "$target.new.$$"
            mv -f "$target.new.$$" "$target"
            changed "installed $2"
        fi
    elif [ "$(stat -c %a "$target")" != "${mode#0}" ]; then
        if ((DRY_RUN)); then say "would chmod $mode $2"; else chmod "$mode" "$target"; changed "chmod $mode $2"; fi
    fi
    [ -z "$owner" ] || ensure_owner "$2" "$owner"
}

install_if_absent() { # source target mode [owner:group]: a person's own config is never replaced
    local target=$P$2
    if [ -e "$target" ]; then
        say "kept the existing $2"
        [ -z "${4:-}" ] || ensure_owner "$2" "$4"
        return 0
    fi
    install_file "$@"
}

sync_tree() { # source-dir target-dir: the target ends up with exactly the source's files
    local from=$1 to=$2 rel
    while IFS= read -r -d '' rel; do
        install_file "$from/$rel" "$to/$rel" 0644
    done < <(cd "$from" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -printf '%P\0' | sort -z)
    [ -d "$P$to" ] || return 0
    while IFS= read -r -d '' rel; do
        if [ ! -e "$from/$rel" ]; then
            if ((DRY_RUN)); then say "would remove $to/$rel"; else rm -f "$P$to/$rel"; changed "removed $to/$rel"; fi
        fi
    done < <(cd "$P$to" && find . -type f -printf '%P\0' | sort -z)
}

# ----------------------------------------------------------------------------- 1. system packages

# python3-picamera2 and python3-lgpio come from Raspberry Pi OS's own repository: picamera2 needs
# the libcamera bindings only it ships, and a Pi 5 has GPIO only through lgpio. gcc, python3-dev and
# libasound2-dev build pyalsaaudio; the GL, EGL, GLES, DRM/GBM and SDL2 libraries let Kivy draw on
# KMS/DRM with no X server; libmtdev1 is Kivy's multitouch input.
APT_PACKAGES=(python3 python3-venv python3-pip python3-dev gcc pkg-config libasound2-dev alsa-utils
    python3-picamera2 python3-lgpio python3-numpy
    libgl1 libgl1-mesa-dri libegl1 libgles2 libgbm1 libdrm2
    libsdl2-2.0-0 libsdl2-image-2.0-0 libsdl2-mixer-2.0-0 libsdl2-ttf-2.0-0 libmtdev1)
# Only on a Pi are these two expected; elsewhere (a test machine) they are skipped with a warning.
PI_ONLY_PACKAGES=" python3-picamera2 python3-lgpio "

install_packages() {
    if ((!LIVE)); then
        say "would run: apt-get install ${APT_PACKAGES[*]}"
        return 0
    fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        # Outputs are captured, not piped into `grep -q`: with pipefail its early exit fails the pipe.
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    live apt-get update -qq
    local available=()
    for pkg in "${missing[@]}"; do
        if [[ $(apt-cache policy "$pkg" 2>/dev/null) =~ Candidate:\ [0-9] ]]; then
            available+=("$pkg")
        elif [[ $PI_ONLY_PACKAGES == *" $pkg "* ]]; then
            say "warning: $pkg is not available here (not Raspberry Pi OS?); skipping it"
        else
            echo "install-pi: package $pkg is not available from apt" >&2
            exit 1
        fi
    done
    ((${#available[@]})) || return 0
    if ((DRY_RUN)); then
        say "would run: apt-get install ${available[*]}"
        return 0
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${available[@]}"
    changed "installed packages: ${available[*]}"
}

# ----------------------------------------------------------------------------- 2. users and groups

# SupplementaryGroups= fails the unit if a group is missing, so each one is made sure of.
KIOSK_GROUPS=(video audio gpio render input)

ensure_user() { # name home
    local name=$1 home=$2
    if ((!LIVE)); then
        say "would make sure system user $name exists (home $home)"
        return 0
    fi
    getent passwd "$name" >/dev/null && return 0
    live useradd --system --user-group --home-dir "$home" --no-create-home --shell /usr/sbin/nologin "$name"
    ((DRY_RUN)) || changed "created user $name"
}

ensure_groups() {
    local group missing=()
    if ((!LIVE)); then
        say "would make sure user kiosk is in groups ${KIOSK_GROUPS[*]}"
        return 0
    fi
    for group in "${KIOSK_GROUPS[@]}"; do
        if ! getent group "$group" >/dev/null; then
            live groupadd --system "$group"
            ((DRY_RUN)) || changed "created group $group"
        fi
        [[ " $(id -nG kiosk 2>/dev/null) " == *" $group "* ]] || missing+=("$group")
    done
    ((${#missing[@]})) || return 0
    local joined
    joined=$(IFS=,; echo "${missing[*]}")
    live usermod --append --groups "$joined" kiosk
    ((DRY_RUN)) || changed "added kiosk to groups $joined"
}

# ----------------------------------------------------------------------------- 3. the project

install_project() {
    ensure_dir /opt 0755
    ensure_dir $OPT 0755
    # The package itself goes into the venv; the documents, configs and units are kept beside it.
    local part
    for part in docs config systemd; do
        sync_tree "$SRC/$part" "$OPT/$part"
    done
    install_file "$SRC/README.md" "$OPT/README.md" 0644
    install_file "$SRC/pyproject.toml" "$OPT/pyproject.toml" 0644
    install_file "$SRC/constraints.txt" "$OPT/constraints.txt" 0644
    install_file "$SRC/scripts/install-pi.sh" "$OPT/install-pi.sh" 0755

    if ((!LIVE)); then
        say "would create $VENV (--system-site-packages) and pip install $SRC into it with constraints.txt"
        return 0
    fi
    # The versions this machine gets, and the source's fingerprint with them, which decides whether
    # pip runs again (pip would reinstall every time).
    local constraints fingerprint stamp=$VENV/.kiosk-source no_binary
    constraints=$(pi_constraints) || exit 1
    fingerprint=$({
        (cd "$SRC" && find kiosk pyproject.toml -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
            | sort -z | xargs -0 sha256sum)
        echo "$constraints"
    } | sha256sum | cut -d' ' -f1)
    no_binary=$(IFS=,; echo "${SOURCE_BUILT[*]}")
    if [ ! -x "$VENV/bin/python" ]; then
        # --system-site-packages: picamera2 and lgpio exist only as Raspberry Pi OS packages.
        live python3 -m venv --system-site-packages "$VENV"
        ((DRY_RUN)) || changed "created $VENV"
    fi
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ]; then return 0; fi
    if ((DRY_RUN)); then
        say "would run: $VENV/bin/python -m pip install --upgrade --only-binary=:all: --no-binary=$no_binary" \
            "--constraint constraints.txt $SRC"
        say "  with $(grep -E '^numpy==' <<<"$constraints" | paste -sd ' ') (the OS's numpy: $(system_numpy))"
        return 0
    fi
    # pip builds in the source tree (build/, *.egg-info): a scratch copy keeps root-owned files out of
    # the checkout.
    WORK=$(mktemp -d)
    cp -r "$SRC/kiosk" "$SRC/pyproject.toml" "$SRC/README.md" "$WORK/"
    find "$WORK" -name __pycache__ -prune -exec rm -rf {} +
    # constraints.txt's versions, numpy of the OS's major (pi_constraints); wheels only, but for
    # SOURCE_BUILT.
    printf '%s\n' "$constraints" >"$WORK/constraints.txt"
    "$VENV/bin/python" -m pip install -q --root-user-action=ignore --upgrade pip
    "$VENV/bin/python" -m pip install -q --root-user-action=ignore --upgrade --only-binary=:all: \
        --no-binary="$no_binary" --constraint "$WORK/constraints.txt" "$WORK"
    echo "$fingerprint" >"$stamp"
    changed "installed the kiosk package into $VENV"
}

link_command() {
    local link=$P/usr/local/bin/kiosk
    [ "$(readlink "$link" 2>/dev/null)" = "$VENV/bin/kiosk" ] && return 0
    if ((DRY_RUN)); then say "would link /usr/local/bin/kiosk"; return 0; fi
    mkdir -p "$(dirname "$link")"
    ln -sfn "$VENV/bin/kiosk" "$link"
    changed "linked /usr/local/bin/kiosk -> $VENV/bin/kiosk"
}

# ----------------------------------------------------------------------------- 4. config and units

install_config() {
    ensure_dir /etc 0755
    ensure_dir /etc/kiosk 0755
    # Readable by the kiosk user, not by everyone: it may hold the auth token.
    install_if_absent "$SRC/config/kiosk.toml" /etc/kiosk/kiosk.toml 0640 root:kiosk
    if ((WITH_SERVER)); then
        install_if_absent "$SRC/config/server.env" /etc/kiosk/server.env 0600 root:root
    fi
    ensure_dir /var/lib 0755
    ensure_dir /var/lib/kiosk 0750 kiosk:kiosk
}

UNITS_CHANGED=0

install_units() {
    local before=$CHANGES unit
    ensure_dir /etc/systemd/system 0755
    install_file "$SRC/systemd/kiosk.service" /etc/systemd/system/kiosk.service 0644
    if ((WITH_SERVER)); then
        install_file "$SRC/systemd/kiosk-server.service" /etc/systemd/system/kiosk-server.service 0644
    fi
    ((CHANGES == before)) || UNITS_CHANGED=1
    if ((UNITS_CHANGED)); then live systemctl daemon-reload; fi
    ((ENABLE)) || return 0
    local units=(kiosk.service)
    ((WITH_SERVER)) && units+=(kiosk-server.service)
    local systemctl=(systemctl)
    ((LIVE)) || systemctl=(systemctl --root="$ROOT")
    if ! command -v systemctl >/dev/null; then
        say "would enable ${units[*]} (no systemctl here)"
        return 0
    fi
    for unit in "${units[@]}"; do
        # `systemctl --root` works offline, so a prefix gets its unit links too.
        if [ "$("${systemctl[@]}" is-enabled "$unit" 2>/dev/null)" = enabled ]; then continue; fi
        if ((DRY_RUN)); then say "would enable $unit"; continue; fi
        "${systemctl[@]}" enable --quiet "$unit"
        changed "enabled $unit"
    done
}

start_services() {
    local units=(kiosk.service) unit
    ((WITH_SERVER)) && units=(kiosk-server.service kiosk.service)
    for unit in "${units[@]}"; do
        if ((START)); then
            live systemctl restart "$unit"
        elif ((CHANGES)) && ((LIVE)) && systemctl is-active --quiet "$unit"; then
            # An update: the running service gets the new code and units.
            live systemctl restart "$unit"
        fi
    done
}

# ----------------------------------------------------------------------------- main

((LIVE)) || say "installing under $ROOT (packages, users, venv and services are only printed)"
((DRY_RUN)) && say "dry run: nothing is changed"
install_packages
if ((LIVE)) && ! picamera2_new_enough; then
    # apt installed python3-picamera2 if it was missing, but not a newer one over an old one.
    live apt-get install -y -qq --only-upgrade python3-picamera2
    ((DRY_RUN)) || picamera2_new_enough || exit 1
fi
ensure_user kiosk /var/lib/kiosk
ensure_groups
((WITH_SERVER)) && ensure_user kiosk-server /var/lib/kiosk-server
install_project
link_command
install_config
install_units
start_services

if ((CHANGES == 0)); then
    say "nothing changed"
else
    say "done: $CHANGES change(s)"
fi
if ((LIVE && !DRY_RUN)); then
    say "next: put this kiosk's auth token in /etc/kiosk/auth-token (mode 0640, group kiosk), edit"
    say "      /etc/kiosk/kiosk.toml, check with: sudo -u kiosk kiosk doctor  (see docs/install.md)"
fi
