#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite. Called by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pip install -q -e ".[dev]"
exec python -m pytest -q "$@"
