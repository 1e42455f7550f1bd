#!/usr/bin/env bash
# The main job on a machine with no Pi hardware: set up, then run the emulated demo call.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kiosk demo "$@"
