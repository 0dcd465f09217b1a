# Sourced by scripts/demo.sh, scripts/test.sh and .ci/run (not run on its own).
#
# fgid_env EXTRAS  ("" for the base install, "dev" for the tests) makes sure fgid is installed
# into a virtual environment and sets FGID_PYTHON to that environment's python:
#   - inside an active virtual environment (sys.prefix != sys.base_prefix): that one;
#   - otherwise `.venv/` in the checkout, created with `python3 -m venv` on first use;
#   - FGID_VENV=DIR: that folder, created if missing, even when another one is active.
# FGID_PYTHON_BASE names the Python that creates it (default python3, >= 3.10).
# pip runs only inside a virtual environment (never into the system Python, PEP 668), and only
# when the stamp in the environment (a hash of pyproject.toml and scripts/constraints.txt, this
# checkout's path and the Python version, per install) says they are not installed there yet: a
# rerun with nothing changed starts at once.

fgid_die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

fgid_env() {
  local extras="$1" base="${FGID_PYTHON_BASE:-python3}" venv="" py active wanted have name
  command -v "$base" >/dev/null 2>&1 || fgid_die "no $base on PATH (Python >= 3.10 is needed)"
  # One start of the base Python: exit 1 when too old, else the active venv's prefix or "".
  active="$("$base" -c 'import sys
if sys.version_info < (3, 10): sys.exit(1)
print(sys.prefix if sys.prefix != sys.base_prefix else "")')" \
    || fgid_die "$("$base" -V 2>&1) is too old: Python >= 3.10 is needed"
  if [ -n "${FGID_VENV:-}" ]; then
    venv="$FGID_VENV"
  elif [ -n "$active" ]; then
    venv="$active"
  else
    venv="$PWD/.venv"
  fi
  py="$venv/bin/python"
  if [ ! -x "$py" ]; then
    echo "creating the virtual environment $venv (python3 -m venv)" >&2
    "$base" -m venv "$venv" \
      || fgid_die "python3 -m venv $venv failed (on Debian/Ubuntu: apt install python3-venv)"
  fi
  # One start of the environment's Python: the stamp this checkout wants ("-" + it when fgid
  # is not installed there at all, so no stamp matches).
  wanted="$("$py" -c 'import hashlib, importlib.metadata as m, sys
from pathlib import Path
p = Path(sys.argv[1])
h = hashlib.sha256(p.read_bytes() + (p.parent / "scripts" / "constraints.txt").read_bytes())
h.update(f"\n{p.parent}\n{sys.version}".encode())
try:
    m.distribution("fgid")
    print(h.hexdigest())
except m.PackageNotFoundError:
    print("-" + h.hexdigest())' "$PWD/pyproject.toml")" || fgid_die "cannot run $py"
  # The dev install includes the base one: a matching dev stamp satisfies both.
  for name in ${extras:-base} dev; do
    have="$(cat "$venv/.fgid-installed-$name" 2>/dev/null || true)"
    if [ "$have" = "$wanted" ]; then
      FGID_PYTHON="$py"
      export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
      return 0
    fi
  done
  echo "installing fgid${extras:+[$extras]} into $venv (pip install -e; the first time takes minutes)" >&2
  rm -f "$venv"/.fgid-installed-*
  # pip's own output goes to a log in the environment (its per-index warnings would flood a CI
  # log); on failure its last lines are shown.
  # scripts/constraints.txt fixes every version to one known-good resolution (an unconstrained
  # resolve of .[dev] backtracks through boto3/botocore releases for many minutes);
  # FGID_NO_CONSTRAINTS=1 resolves afresh. To regenerate it: FGID_NO_CONSTRAINTS=1 in a new
  # environment, then `pip freeze --exclude-editable` (header kept).
  local pins=(-c scripts/constraints.txt)
  [ -n "${FGID_NO_CONSTRAINTS:-}" ] && pins=()
  if ! "$py" -m pip install -q "${pins[@]}" -e ".${extras:+[$extras]}" >"$venv/pip-install.log" 2>&1; then
    grep -v "^WARNING: Location" "$venv/pip-install.log" | tail -n 20 >&2
    fgid_die "pip install failed (the whole log: $venv/pip-install.log)"
  fi
  echo "${wanted#-}" >"$venv/.fgid-installed-${extras:-base}"
  FGID_PYTHON="$py"
  export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
}
