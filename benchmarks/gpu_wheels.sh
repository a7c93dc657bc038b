#!/usr/bin/env bash
# Gather, here, the wheels the GPU machine lacks, for benchmarks/gpu_check.sh to install there.
#
#   benchmarks/gpu_wheels.sh                 # into .gpu_wheels/ (ignored by git; carried to the GPU machine)
#   GPU_PYTHON=3.12 benchmarks/gpu_wheels.sh mlflow-skinny==3.17.2   # plus extra requirements
#
# The GPU image (docs/performance.md › GPU check) holds torch, timm, numpy,
# scikit-learn, safetensors, matplotlib, pyyaml, tqdm, pillow, psutil,
# tensorboard and onnx, but not pydantic, which `sustain.config` imports.
# Nothing can be downloaded there, so pip resolves the wheels here for that
# machine's Python and platform (x86-64, manylinux) and gpu_check.sh installs
# them with `pip install --no-index --find-links .gpu_wheels --target ...`.
# The pinned versions come from requirements.txt, so the two never drift.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${GPU_WHEELS:-$ROOT/.gpu_wheels}"
PYVER="${GPU_PYTHON:-3.12}"          # python3 --version on the GPU machine
PY="${PYTHON:-python3}"

pin() {  # the exact pin of a package in requirements.txt, e.g. pydantic==2.14.4
    local line
    line="$(grep -iE "^$1==" "$ROOT/requirements.txt" | head -n1 | sed 's/[[:space:]]*#.*//')"
    if [[ -z "$line" ]]; then
        echo "gpu_wheels: $1 is not pinned in requirements.txt" >&2
        exit 2
    fi
    echo "$line"
}

# pip resolves the dependencies (pydantic-core, annotated-types, typing-inspection,
# typing-extensions) for the target platform, so none is named by hand.
requirements=("$(pin pydantic)" "$@")
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done

mkdir -p "$DEST"
"$PY" -m pip download --quiet --only-binary=:all: --implementation cp --python-version "$PYVER" \
    "${platforms[@]}" --dest "$DEST" "${requirements[@]}"
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST ($(du -sh "$DEST" | cut -f1)) for Python $PYVER:"
ls "$DEST"
