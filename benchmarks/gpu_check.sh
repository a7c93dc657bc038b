#!/usr/bin/env bash
# Prove the CUDA path on one GPU, within 6 minutes, and write the figures as JSON (issue 17).
#
#   benchmarks/gpu_check.sh OUTDIR          # on a CUDA machine
#   benchmarks/gpu_check.sh --cpu OUTDIR    # the dry run: the same sections on the CPU, tiny sizes, < 1 min
#
# OUTDIR receives two files: gpu_check.json (every figure, the versions it
# ran with, the goals judged) and gpu_check.log (everything printed).
# Sections, each under a time limit inside one overall budget, so a hung
# section still leaves the summary:
#   env         the GPU, driver, CUDA, torch, timm, ... (benchmarks/gpu_check.py env)
#   cuda_tests  pytest -m cuda tests/training/test_cuda.py (bf16, fp16 + GradScaler, channels_last, guards)
#   demo_*      `sustain data demo` and `sustain train --config configs/demo.yaml` on the device,
#               then its Success Criteria Checklist (all must pass on a GPU)
#   step        EVA02-Base bf16 training step, Sustain's vs a plain timm step (benchmarks/gpu_step.py)
#   ddp         a 1-process torchrun with NCCL (gloo on the CPU)
#   loader      the training DataLoader on this machine's cores: 256 px and 4032x3024 JPEGs
#   summary     merges the sections into gpu_check.json; exit 1 if a section failed
#
# Packages: a machine without pydantic (the GPU image) gets it from the
# wheels that benchmarks/gpu_wheels.sh gathered into .gpu_wheels/ (carry that
# folder along); they are installed into a temporary folder, never into the
# system. PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=gpu
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; shift; fi
if [[ $# -ne 1 ]]; then
    echo "usage: benchmarks/gpu_check.sh [--cpu] OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" && OUT="$(cd "$1" && pwd)" || exit 2
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
exec > >(tee "$OUT/gpu_check.log") 2>&1

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export MPLBACKEND=Agg

if ! "$PY" -c "import pydantic" 2>/dev/null; then
    if ! compgen -G "$ROOT/.gpu_wheels/*.whl" >/dev/null; then
        echo "gpu_check: $PY has no pydantic and no wheels were carried: run benchmarks/gpu_wheels.sh" \
             "where pip can download, and carry .gpu_wheels/ along" >&2
        exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        --target "$WORK/site" "$ROOT"/.gpu_wheels/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
    SUSTAIN_CARRIED_WHEELS="$(cd "$ROOT/.gpu_wheels" && echo *.whl)"
    export SUSTAIN_CARRIED_WHEELS
fi

if [[ $MODE == cpu ]]; then
    BUDGET=240; CPU=(--cpu); DEVICE=cpu
    DEMO=(--per-class 4); TRAIN=(--set train.epochs=2)
else
    BUDGET=540; CPU=(); DEVICE=cuda
    DEMO=(); TRAIN=()
fi
START=$EPOCHREALTIME
DEADLINE=$(( ${START%.*} + BUDGET ))

section() {  # section NAME LIMIT_S COMMAND...: run it, record "name<TAB>exit<TAB>seconds"
    local name=$1 limit=$2 t0 rc left
    shift 2
    left=$(( DEADLINE - ${EPOCHREALTIME%.*} ))
    (( limit > left )) && limit=$left
    echo
    echo "=== $name (limit ${limit} s) ==="
    t0=$EPOCHREALTIME
    if (( limit < 5 )); then
        echo "gpu_check: no time left for $name"; rc=124
    else
        timeout --kill-after=10 "$limit" "$@"; rc=$?
    fi
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t0}")" >>"$WORK/sections.tsv"
}

section env 60 "$PY" -m benchmarks.gpu_check env --out "$WORK/env.json" "${CPU[@]}"
section cuda_tests 150 "$PY" -m pytest tests/training/test_cuda.py -m cuda -q -p no:cacheprovider \
    --junitxml="$WORK/cuda_tests.xml"
section demo_data 60 "$PY" -m sustain data demo --out "$WORK/demo" "${DEMO[@]}"
section demo_train 150 "$PY" -m sustain train --config configs/demo.yaml --set "data.root=$WORK/demo" \
    --set "output_dir=$WORK/demo_run" --set "device=$DEVICE" "${TRAIN[@]}"
section step 240 "$PY" -m benchmarks.gpu_step --out "$WORK/step.json" "${CPU[@]}"
section ddp 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 \
    -m benchmarks.gpu_check ddp --out "$WORK/ddp.json" "${CPU[@]}"
section loader 120 "$PY" -m benchmarks.gpu_check loader --out "$WORK/loader.json" "${CPU[@]}"

"$PY" -m benchmarks.gpu_check summary --work "$WORK" --out "$OUT/gpu_check.json" "${CPU[@]}"
