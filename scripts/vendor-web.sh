#!/usr/bin/env bash
# Puts the browser runtime of the /demo page's device mode into service/static/vendor/: LiteRT.js
# (@litertjs/core and its one dependency, Apache-2.0), exactly the versions of web/package-lock.json
# (`npm ci`: refuses a lock that differs from web/package.json, checks every integrity hash), and
# only the files the page loads: the ES module, the helper it imports, and the WebAssembly CPU
# runtime in its two builds (relaxed SIMD, and "compat" for browsers without it). Nothing is
# committed and nothing is loaded from a CDN: the service serves these files under /demo/vendor/,
# and the Bentos pack them (bentofile.yaml: service/static/**).
# Usage: scripts/vendor-web.sh      (make vendor-web; make run; scripts/install-test-tools.sh)
set -eu
cd "$(dirname "$0")/.."
dest=service/static/vendor/litertjs
stamp=$dest/.package-lock.json
# Up to date when the lock it was made from is the lock here.
if cmp -s web/package-lock.json "$stamp"; then exit 0; fi
command -v npm >/dev/null 2>&1 || { echo "vendor-web: npm is not installed (apt-get install npm); the demo's device mode is off" >&2; exit 1; }
(cd web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
tmp=$(mktemp -d service/static/vendor.tmp.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
core=web/node_modules/@litertjs/core
utils=web/node_modules/@litertjs/wasm-utils
mkdir -p "$tmp/core" "$tmp/wasm-utils" "$tmp/wasm"
cp "$core/dist/index.js" "$tmp/core/index.js"
cp "$utils/dist/index.js" "$tmp/wasm-utils/index.js"
for build in litert_wasm_internal litert_wasm_compat_internal; do
  cp "$core/wasm/$build.js" "$core/wasm/$build.wasm" "$tmp/wasm/"
done
# The packages carry no LICENSE file; their package.json says Apache-2.0.
node -e 'for (const p of process.argv.slice(1)) { const j = require("./" + p + "/package.json"); console.log(j.name + " " + j.version + " " + j.license); }' \
  "$core" "$utils" > "$tmp/VERSIONS"
cp web/package-lock.json "$tmp/.package-lock.json"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "vendor-web: $dest ready ($(cat "$dest/VERSIONS" | tr '\n' ';'))" >&2
