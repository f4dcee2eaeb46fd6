#!/usr/bin/env bash
# POST one JPEG to a running server (serve_local.sh) and print its JSON answer.
#   usage: local_test/predict.sh [IMAGE.jpg] [URL]
set -euo pipefail
test_dir="${TEST_DIR:-$(cd "$(dirname "$0")" && pwd)/test_dir}"
jpeg="${1:-$(find "$test_dir/input/data/train/test" -name '*.jpg' | sort | head -n 1)}"
url="${2:-http://127.0.0.1:${PORT:-8080}/invocations}"
[ -f "$jpeg" ] || { echo "predict: no such image: $jpeg" >&2; exit 1; }
echo "predict: $jpeg -> $url" >&2
curl --silent --show-error --fail-with-body \
     -H 'Content-Type: image/jpeg' -H 'Accept: application/json' \
     --data-binary "@$jpeg" "$url"
echo
