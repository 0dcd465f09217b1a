#!/usr/bin/env bash
# Set up (idempotent) and build the demo dataset from photos shipped inside installed packages.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e .
exec fgid build --demo "${1:-out/demo}"
