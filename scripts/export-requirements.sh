#!/usr/bin/env bash
# Writes each deployment target's requirements file from uv.lock, exactly as locked (no
# re-resolution): `bash scripts/export-requirements.sh OUTDIR`. `make lock` and `make
# requirements` run it into requirements/; tests/unit/test_lock.py runs it into a temporary folder
# and compares, so a lock change that was not exported fails the tests.
#   bento-cpu.txt  bentofile.yaml (LiteRT, no TensorFlow)
#   bento-gpu.txt  bentofile-gpu.yaml (TensorFlow with CUDA wheels)
#   tools.txt      k8s/training/Dockerfile: the package's dependencies plus locust
#   tools-gpu.txt  the same with TensorFlow's CUDA wheels (its GPU variant)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: export-requirements.sh OUTDIR}
mkdir -p "$out"
export_() {  # export_ FILE ARGS...: one target, without hashes (BentoML adds lines of its own)
  local file=$1; shift
  uv export --quiet --frozen --no-hashes --no-header --no-emit-project "$@" -o "$out/$file"
}
export_ bento-cpu.txt --no-default-groups --only-group bento-cpu
export_ bento-gpu.txt --no-default-groups --only-group bento-gpu
export_ tools.txt --no-default-groups --group tools
export_ tools-gpu.txt --no-default-groups --group tools --group cuda
