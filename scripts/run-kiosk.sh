#!/usr/bin/env bash
# The main job: set up, then run the kiosk app on the emulated device with an embedded call server.
# In a window where there is a display; offscreen, saving a PNG of each screen in screenshots/, where
# there is none. It prints the `kiosk endpoint` command with which you can call it. Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kiosk run --config config/emulated.toml --screenshots screenshots "$@"
