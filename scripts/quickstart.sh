#!/usr/bin/env bash
# The main job behind `make run`: train the default model on the embedded digits, export it to
# models/digits/VERSION, then serve it and answer a first prediction. Ctrl-C stops the server.
# Environment: PORT (default 3000), GRPC_PORT (the Open Inference Protocol over gRPC, default
# 8001 as Triton's; 0: off), MODELS_DIR (default models), EPOCHS (default: the config's).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${PORT:-3000}"
GRPC_PORT="${GRPC_PORT:-8001}"
MODELS_DIR="${MODELS_DIR:-models}"
extra=()
[ -n "${EPOCHS:-}" ] && extra+=(--epochs "$EPOCHS")
# ${extra[@]+"${extra[@]}"}, not "${extra[@]}": bash before 4.4 (macOS's 3.2) calls an empty
# array unbound under set -u (tests/unit/test_scripts.py).

echo "==> training the default model (small CNN on the embedded scikit-learn digits)"
handserve train --export --export-name digits --models-dir "$MODELS_DIR" ${extra[@]+"${extra[@]}"}

echo "==> models available"
handserve models --models-dir "$MODELS_DIR"

echo "==> serving on http://localhost:$PORT (demo page: /demo, API docs: /)"
handserve serve --port "$PORT" --grpc-port "$GRPC_PORT" --models-dir "$MODELS_DIR" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 180); do
  if curl -fsS "http://localhost:$PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "server exited" >&2; exit 1; fi
  sleep 1
done
curl -fsS "http://localhost:$PORT/readyz" >/dev/null

echo "==> curl -F file=@examples/images/digit_7.png 'http://localhost:$PORT/predict?top_k=3'"
curl -fsS -F "file=@examples/images/digit_7.png" "http://localhost:$PORT/predict?top_k=3"
echo
echo "==> the server keeps answering; Ctrl-C stops it"
wait "$server"
