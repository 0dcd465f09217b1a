#!/usr/bin/env bash
# Run the default test suite (arguments go to pytest) in a virtual environment: the active one,
# else .venv/ in the checkout, with fgid[dev] installed on first use and reused as is while
# pyproject.toml is unchanged (see scripts/venv.sh). Called by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
. scripts/venv.sh
fgid_env dev
exec "$FGID_PYTHON" -m pytest -q "$@"
