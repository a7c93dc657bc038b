#!/usr/bin/env bash
# Repair the training environment, then prove it works (SPEC §9).
#
#   ./fix_environment.sh [--config FILE]
#
# 1. Picks the Python: $SUSTAIN_PYTHON if set, else the project's .venv, else python3 on PATH.
# 2. Prints the Python, the package versions and the accelerator.
# 3. Reinstalls NumPy as 'numpy<2.0' only when the torch↔NumPy round trip fails
#    or NumPy >= 2 is installed; a healthy environment is left untouched, so the
#    script is safe to run again and again.
# 4. Runs the diagnostics (training_diagnostics.py, the same checks as
#    `sustain doctor`; --config FILE is passed on to also check that run's data)
#    and reports their real result: exit 0 and the banner when nothing FAILs,
#    otherwise the failures and exit 1.
#
# No `set -e`: each step's status is checked explicitly, so the script always
# reaches its verdict instead of dying silently half-way.
set -uo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi

cd "$(dirname "$0")" || { echo "❌ cannot enter the project folder"; exit 1; }

if [ -n "${SUSTAIN_PYTHON:-}" ]; then
  PY="$SUSTAIN_PYTHON"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY="$(command -v python3 || command -v python || true)"
fi
if [ -z "$PY" ]; then
  echo "❌ No Python found. Run 'make venv' first (it creates .venv with the pinned requirements)."
  exit 1
fi

if ! "$PY" -c 'import yaml, pydantic' >/dev/null 2>&1; then
  echo "❌ $PY does not have the project's requirements (pyyaml, pydantic, torch, ...)."
  echo "   Run 'make venv' (it creates .venv with the pinned requirements), then run this script again."
  exit 1
fi

NEEDS_NUMPY_REPAIR=3  # environment_probe's exit code when NumPy must be reinstalled
probe() {
  "$PY" -c 'import sys; from sustain.diagnostics import environment_probe; sys.exit(environment_probe())'
}

echo "=== Environment ($PY) ==="
probe
status=$?
if [ "$status" -eq "$NEEDS_NUMPY_REPAIR" ]; then
  echo
  echo "🔧 Repairing NumPy: pip install 'numpy<2.0'"
  if ! "$PY" -m pip install --quiet 'numpy<2.0'; then
    echo "❌ pip could not install numpy<2.0 (see its message above)"
  fi
  echo "=== Environment after the repair ==="
  probe
  status=$?
  if [ "$status" -eq "$NEEDS_NUMPY_REPAIR" ]; then
    echo "❌ NumPy still does not work with torch after the repair"
  fi
elif [ "$status" -ne 0 ]; then
  echo "⚠️  The environment probe stopped with exit code $status (the diagnostics below say why)"
else
  echo "✓ Nothing to repair"
fi

echo
echo "=== Diagnostics ==="
report="$(mktemp "${TMPDIR:-/tmp}/sustain-doctor.XXXXXX")"
trap 'rm -f "$report"' EXIT
# The JSON report goes to the file; the checks' own lines (stderr) are shown here as they run.
"$PY" training_diagnostics.py "$@" --json 2>&1 >"$report"
status=$?

if [ "$status" -eq 0 ]; then
  echo
  echo "✅ ALL CHECKS PASSED - READY TO TRAIN!"
  exit 0
fi

echo
echo "❌ The diagnostics failed (exit code $status):"
if ! "$PY" - "$report" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1], encoding="utf-8"))
for check in report["checks"]:
    if check["status"] == "FAIL":
        print(f"  - {check['name']}: {check['detail']}")
        print(f"    fix: {check['hint']}")
PYEOF
then
  echo "  (no report: the diagnostics stopped before finishing; see the messages above)"
fi
exit 1
