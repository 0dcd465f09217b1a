#!/usr/bin/env bash
# Install headless Chromium (Debian package) for the report rendering test. Idempotent.
# Prints the browser path on success; exits non-zero (and says why) when it cannot install.
set -euo pipefail
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; exit 0; fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install chromium by hand" >&2; exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "not root and no passwordless sudo: install chromium by hand" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive
# A lock held by another apt run is waited for, not broken.
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >&2
$SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium >&2
command -v chromium
