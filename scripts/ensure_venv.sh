#!/usr/bin/env bash
# Create or reuse a virtualenv holding the pinned requirements.
# Usage: scripts/ensure_venv.sh VENV_DIR
# The install is skipped when the venv works and its recorded requirements
# hash matches, so repeat runs cost a second instead of minutes.
set -euo pipefail
venv="${1:-.venv}"
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
want="$(cat "$root/requirements.txt" "$root/requirements-dev.txt" | sha256sum | cut -c1-16)-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
stamp="$venv/.sustain-requirements"

healthy() {
  [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
    "$venv/bin/python" -c 'import torch, torchvision, timm, numpy, pytest' >/dev/null 2>&1
}

if healthy; then
  echo "✓ Environment up to date: $venv"
else
  echo "Installing pinned requirements into $venv (first time takes a few minutes)..."
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # pip's chatter goes to a log, shown only when the install fails.
  log="$venv/install.log"
  if ! { "$venv/bin/python" -m pip install -q --upgrade pip &&
         "$venv/bin/python" -m pip install -q -r "$root/requirements-dev.txt"; } >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -40 >&2
    echo "✗ Installing the requirements failed (full log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
  echo "✓ Installed: $("$venv/bin/python" -c 'import torch, torchvision, timm, numpy; print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, numpy {numpy.__version__}")')"
fi
# The package itself is installed editable from this checkout every time:
# it is quick, and a cached venv may have been built from another clone.
if ! out="$("$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" 2>&1)"; then
  echo "$out" >&2
  exit 1
fi
