#!/usr/bin/env bash
# `make demo`: train on the embedded sample dataset, serve the model, predict a few images, stop.
set -euo pipefail
out=${DEMO_OUT:-demo_out}
port=${DEMO_PORT:-8080}
rm -rf "$out"
mkdir -p "$out"

echo "== 1/3 train (sample dataset: 4 shape classes in the dogImages layout)"
imgcls make-sample "$out/dogImages" --classes 4 --per-class 40 10 10 --image-size 96
imgcls train --data "$out/dogImages" --model-dir "$out/model" --output-dir "$out/output" \
  --backbone resnet18 --weights none --image-size 64 --epochs 4 --batch-size 16 --finetune all
echo "plots: $out/output/data/learning_curves.png $out/output/data/confusion_matrix.png"

echo "== 2/3 serve on 127.0.0.1:$port"
imgcls serve --model-dir "$out/model" --port "$port" >"$out/serve.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fs "http://127.0.0.1:$port/ping" >/dev/null; then break; fi
  kill -0 $server 2>/dev/null || { cat "$out/serve.log"; exit 1; }
  sleep 1
done
curl -fs "http://127.0.0.1:$port/ping" >/dev/null || { echo "server not ready after 120 s"; tail -50 "$out/serve.log"; exit 1; }

echo "== 3/3 predict (image/jpeg bytes -> top-k JSON)"
for image in "$out"/dogImages/test/*/*_00000.jpg; do
  echo "$(basename "$(dirname "$image")"):"
  curl -fs -X POST -H "Content-Type: image/jpeg" -H "X-Amzn-SageMaker-Custom-Attributes: top_k=2" \
    --data-binary "@$image" "http://127.0.0.1:$port/invocations"
  echo
done
echo "demo done: model in $out/model"
