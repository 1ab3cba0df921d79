#!/usr/bin/env bash
# Installs what the test suite needs beyond the project's Python packages: Debian's Chromium (the
# demo page tests) and npm (LiteRT.js for the demo's device mode, scripts/vendor-web.sh), Prometheus (a real scrape of /metrics), kubectl (its built-in kustomize
# renders k8s/ for the manifest tests), podman with runc and catatonit (its pods' pause process),
# mmdebstrap (the Debian base image) and docker-registry (a local registry) for the release tests
# (tests/k8s/test_release_podman.py), and, each in a virtualenv of its own with the versions of
# its requirements/*.txt, checkov (.cache/venv-scan, the policy scan of k8s/) and MediaPipe
# (.cache/venv-mediapipe, the on-device task library for the mobile test): their pins clash with
# .venv's. Best effort: where it cannot install (not root, no apt-get, no package index), the
# tests that need them skip with a reason.
set -u
cd "$(dirname "$0")/.." || exit 0

# Side environments: tools whose pins clash with .venv's (TensorFlow's numpy and protobuf), each
# in a virtualenv of its own with exactly the versions of its requirements/*.txt (`make lock`
# compiles them), re-installed whenever that file changes; uv is the one `make` put into .venv.
#   checkov   -> .cache/venv-scan       the policy scan of k8s/ (pip install --dry-run checkov into
#                                       .venv would downgrade packaging, platformdirs, ...)
#   mediapipe -> .cache/venv-mediapipe  MediaPipe Tasks, the on-device task library, opening the
#                                       exported .tflite files as apps do
UV=.venv/bin/uv
side_env() {  # side_env VENV PINS WHAT
  local venv=$1 pins=$2 what=$3
  cmp -s "$pins" "$venv/installed-requirements.txt" && return 0
  echo "install-test-tools: installing $what ($pins) into $venv" >&2
  rm -rf "$venv"
  if [ -x "$UV" ]; then
    { "$UV" venv --quiet --python python3 "$venv" \
        && "$UV" pip install --quiet --python "$venv/bin/python" -r "$pins"; } >/dev/null 2>&1
  else
    { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet -r "$pins"; } >/dev/null 2>&1
  fi && cp "$pins" "$venv/installed-requirements.txt" && return 0
  rm -rf "$venv"
  echo "install-test-tools: $what install failed; the tests needing it will skip" >&2
}
side_env .cache/venv-scan requirements/checkov.txt checkov
side_env .cache/venv-mediapipe requirements/mediapipe.txt mediapipe
# MediaPipe's hand models (.cache/hand_models), taken out of a hash-pinned wheel: the hand-crop
# tests and versions whose contract crops the hand need them.
bash scripts/fetch-hand-models.sh \
  || echo "install-test-tools: hand models not fetched; the hand-crop tests will skip" >&2

# LiteRT.js for the demo page's device mode (service/static/vendor/, from web/package-lock.json
# with npm ci); run last, once npm may have been installed from Debian below.
vendor_web() {
  bash scripts/vendor-web.sh \
    || echo "install-test-tools: LiteRT.js not vendored; the demo's device-mode tests will skip" >&2
}
trap vendor_web EXIT

need=()
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need+=(kubectl)
for tool in podman runc catatonit mmdebstrap docker-registry; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: no apt-get; tests needing ${need[*]} will skip" >&2; exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "install-test-tools: not root; tests needing ${need[*]} will skip" >&2; exit 0
  fi
fi
echo "install-test-tools: installing ${need[*]} from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
# One at a time: a missing package must not block the others.
for pkg in ${need[@]+"${need[@]}"}; do
  $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
    || echo "install-test-tools: apt-get install $pkg failed; the tests needing it will skip" >&2
done
exit 0
