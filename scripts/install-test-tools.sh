#!/usr/bin/env bash
# Installs what the test suite needs beyond the project's Python packages: Debian's Chromium (the
# demo page test), Prometheus (a real scrape of /metrics) and kubectl (its built-in kustomize
# renders k8s/ for the manifest tests), and checkov in its own virtualenv .cache/venv-scan (the
# policy scan of k8s/; checkov pins packages that would clash with .venv's). Best effort: where
# it cannot install (not root, no apt-get, no package index), the tests that need them skip
# with a reason.
set -u
cd "$(dirname "$0")/.." || exit 0

# checkov: a separate venv, so its pins never touch .venv (pip install --dry-run checkov into
# .venv would downgrade packaging, platformdirs, importlib_metadata, ...). Exactly the versions of
# requirements/checkov.txt (`make lock` compiles it), re-installed whenever that file changes; uv
# is the one `make` put into .venv.
SCAN=.cache/venv-scan
PINS=requirements/checkov.txt
UV=.venv/bin/uv
if ! cmp -s "$PINS" "$SCAN/installed-requirements.txt"; then
  echo "install-test-tools: installing checkov ($PINS) into $SCAN" >&2
  rm -rf "$SCAN"
  if [ -x "$UV" ]; then
    { "$UV" venv --quiet --python python3 "$SCAN" \
        && "$UV" pip install --quiet --python "$SCAN/bin/python" -r "$PINS"; } >/dev/null 2>&1
  else
    { python3 -m venv "$SCAN" && "$SCAN/bin/pip" install --quiet -r "$PINS"; } >/dev/null 2>&1
  fi && cp "$PINS" "$SCAN/installed-requirements.txt" \
    || echo "install-test-tools: checkov install failed; the policy scan test will skip" >&2
fi

need=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v kubectl >/dev/null 2>&1 || need+=(kubectl)
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
for pkg in "${need[@]}"; do  # one at a time: a missing package must not block the others
  $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null 2>&1 \
    || echo "install-test-tools: apt-get install $pkg failed; the tests needing it will skip" >&2
done
exit 0
