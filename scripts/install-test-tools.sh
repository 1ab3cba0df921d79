#!/usr/bin/env bash
# Installs what the test suite needs beyond Python packages: Debian's Chromium (the demo page
# test) and Prometheus (a real scrape of /metrics). Best effort: where it cannot install (not
# root, no apt-get), the tests that need them skip with a reason.
set -u
need=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
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
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "install-test-tools: apt-get install ${need[*]} failed; those tests will skip" >&2
exit 0
