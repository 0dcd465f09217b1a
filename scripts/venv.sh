# Sourced by scripts/demo.sh, scripts/test.sh and .ci/run (not run on its own).
#
# fgid_env EXTRAS  ("" for the base install, "dev" for the tests) makes sure fgid is installed
# into a virtual environment and sets FGID_PYTHON to that environment's python:
#   - inside an active virtual environment (sys.prefix != sys.base_prefix): that one;
#   - otherwise `.venv/` in the checkout, created with `python3 -m venv` on first use;
#   - FGID_VENV=DIR: that folder, created if missing, even when another one is active.
# pip runs only inside a virtual environment (never into the system Python, PEP 668), and only
# when the stamp in the environment (a hash of pyproject.toml, this checkout's path and the
# Python version, per install) says this pyproject.toml is not installed there yet: a rerun with
# nothing changed starts at once.

fgid_die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

fgid_env() {
  local extras="$1" base="${FGID_PYTHON_BASE:-python3}" venv="" py
  command -v "$base" >/dev/null 2>&1 || fgid_die "no $base on PATH (Python >= 3.10 is needed)"
  "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fgid_die "$("$base" -V 2>&1) is too old: Python >= 3.10 is needed"
  if [ -n "${FGID_VENV:-}" ]; then
    venv="$FGID_VENV"
  elif "$base" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    venv="$("$base" -c 'import sys; print(sys.prefix)')"
  else
    venv="$PWD/.venv"
  fi
  py="$venv/bin/python"
  if [ ! -x "$py" ]; then
    echo "creating the virtual environment $venv (python3 -m venv)" >&2
    "$base" -m venv "$venv" \
      || fgid_die "python3 -m venv $venv failed (on Debian/Ubuntu: apt install python3-venv)"
  fi
  local stamp_dir="$venv" wanted have name
  wanted="$("$py" - "$PWD/pyproject.toml" <<'EOF'
import hashlib, sys
from pathlib import Path
pyproject = Path(sys.argv[1])
h = hashlib.sha256(pyproject.read_bytes())
h.update(f"\n{pyproject.parent}\n{sys.version}".encode())
print(h.hexdigest())
EOF
  )" || fgid_die "cannot run $py"
  # The dev install includes the base one: a matching dev stamp satisfies both.
  for name in ${extras:-base} dev; do
    have="$(cat "$stamp_dir/.fgid-installed-$name" 2>/dev/null || true)"
    if [ "$have" = "$wanted" ] && "$py" -c 'import importlib.metadata as m; m.distribution("fgid")' \
      2>/dev/null; then
      FGID_PYTHON="$py"
      export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
      return 0
    fi
  done
  echo "installing fgid${extras:+[$extras]} into $venv (pip install -e; the first time takes minutes)" >&2
  rm -f "$stamp_dir"/.fgid-installed-*
  "$py" -m pip install -q -e ".${extras:+[$extras]}" || fgid_die "pip install failed (see above)"
  echo "$wanted" >"$stamp_dir/.fgid-installed-${extras:-base}"
  FGID_PYTHON="$py"
  export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
}
