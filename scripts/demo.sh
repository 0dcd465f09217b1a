#!/usr/bin/env bash
# Build the demo dataset from the face photos shipped inside installed packages, in a virtual
# environment: the active one, else .venv/ in the checkout (created and installed on first use,
# reused as is while pyproject.toml is unchanged; see scripts/venv.sh). Arguments after OUT go
# to `fgid build` (e.g. --verbose).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
fgid_env ""
out="${1:-out/demo}"
shift || true
exec "$VIRTUAL_ENV/bin/fgid" build --demo "$out" "$@"
