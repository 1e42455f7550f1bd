#!/usr/bin/env bash
# The whole test suite: set up, lint, type-check, then pytest; then the tests that touch numpy again under
# numpy 1 (CI's venv has numpy 2, a Bookworm Pi keeps its OS's numpy 1: constraints.txt,
# scripts/install-pi.sh). With arguments, pytest runs only with them (lint and type check still run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
.venv/bin/ruff check kiosk tests bench
.venv/bin/mypy kiosk  # pyproject.toml [tool.mypy]: strict for kiosk.calls and kiosk.protocol
if (($#)); then
    exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
fi

status=0
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=20 || status=$?  # the slowest 20 listed: the suite must stay under 20 min

# numpy 1: constraints.txt's numpy 1 pin in a directory of its own, put before the venv's numpy 2 on
# PYTHONPATH (numpy only: PyAV, livekit and the rest are the venv's, as on a Pi).
NUMPY1_TESTS=(tests/test_media.py tests/test_alsa.py tests/test_aec.py tests/test_cameras.py tests/test_encoding.py)
numpy1=$(sed -n 's/^numpy==\(1\.[0-9.]*\).*/\1/p' constraints.txt | head -n 1)
if [ -z "$numpy1" ]; then
    echo "run-tests: constraints.txt pins no numpy 1.x for the numpy 1 pass" >&2
    exit 1
fi
target=.venv/numpy1
if [ "$(cat "$target/.version" 2>/dev/null)" != "$numpy1" ]; then
    echo "run-tests: installing numpy $numpy1 into $target" >&2
    rm -rf "$target"
    .venv/bin/python -m pip install -q --no-deps --only-binary=:all: --target "$target" "numpy==$numpy1"
    echo "$numpy1" >"$target/.version"
fi
PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH} .venv/bin/python -c '
import sys
import numpy
if numpy.__version__ != sys.argv[1]:
    sys.exit(f"run-tests: the numpy 1 pass imports numpy {numpy.__version__} from {numpy.__file__}")
import aiortc, av, livekit.rtc  # noqa: E401,F401  (they must load beside numpy 1, as on a Pi)
' "$numpy1"
echo "run-tests: ${NUMPY1_TESTS[*]} under numpy $numpy1" >&2
PYTHONPATH=$target${PYTHONPATH:+:$PYTHONPATH} .venv/bin/python -m pytest -q -p no:cacheprovider \
    "${NUMPY1_TESTS[@]}" || status=$?
exit "$status"
