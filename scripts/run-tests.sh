#!/usr/bin/env bash
# The whole test suite: set up, lint, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
.venv/bin/ruff check kiosk tests bench
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
