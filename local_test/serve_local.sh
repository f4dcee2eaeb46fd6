#!/usr/bin/env bash
# Serve test_dir/model/ (run train_local.sh first) on http://127.0.0.1:${PORT:-8080}; Ctrl-C stops it.
#   usage: local_test/serve_local.sh [IMAGE] [extra docker run args...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
image="${1:-imgcls:latest}"
shift || true
[ -f "$TEST_DIR/model/model.pt" ] || { echo "serve_local: no model in $TEST_DIR/model; run local_test/train_local.sh first" >&2; exit 1; }
# -it only with a terminal, so Ctrl-C reaches the server; scripts and CI run it without one.
[ -t 0 ] && RUN_FLAGS+=(-it)
exec "$DOCKER" run "${RUN_FLAGS[@]}" -p "127.0.0.1:${PORT:-8080}:8080" -v "$TEST_DIR/model:/opt/ml/model:ro" "$@" "$image" serve
