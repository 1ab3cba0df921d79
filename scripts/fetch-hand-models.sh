#!/usr/bin/env bash
# Puts MediaPipe's hand models (palm detection, hand landmarks) into .cache/hand_models/, for
# handserve.hands (the --crop-hands training option and versions whose contract crops the hand).
# They come from the package index, not from a download at run time: the mediapipe 0.10.21 wheel
# pinned by hash in requirements/hand-models.txt is downloaded (not installed), and the two
# .tflite files are taken out of it and checked against the sha256 in handserve/hands.py.
# Licence: Apache-2.0 (MediaPipe; the wheel's LICENSE is copied beside the models).
# Usage: scripts/fetch-hand-models.sh [DEST]    (make hand-models; scripts/install-test-tools.sh)
set -eu
cd "$(dirname "$0")/.."
dest=${1:-.cache/hand_models}
py=.venv/bin/python
if "$py" -c "import sys; from handserve import hands; sys.exit(0 if hands.models_ok('$dest') else 1)"
then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-hand-models: downloading the mediapipe wheel (35 MB) to take its hand models" >&2
"$py" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
  --python-version 3.11 --implementation cp --require-hashes -r requirements/hand-models.txt \
  -d "$tmp"
"$py" -c "import sys; from handserve import hands; hands.extract_from_wheel(sys.argv[1], sys.argv[2])" \
  "$tmp"/mediapipe-*.whl "$dest"
echo "fetch-hand-models: $dest ready" >&2
