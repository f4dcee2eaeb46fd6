#!/usr/bin/env bash
# Train like a SageMaker job: test_dir is mounted at /opt/ml; the model lands in test_dir/model/.
#   usage: local_test/train_local.sh [IMAGE] [extra docker run args...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
image="${1:-imgcls:latest}"
shift || true
# Start clean: SageMaker gives every job empty output and model folders, and the toolkit
# keeps an existing output/failure file.
# checkpoints/ stays, as a spot restart finds it: a second run of the same job reports it finished and
# writes its model again; a run with other hyperparameters or data moves it to checkpoints/stale/ and trains anew.
rm -rf "$TEST_DIR/model" "$TEST_DIR/output"
mkdir -p "$TEST_DIR/model" "$TEST_DIR/output"
# --hostname matches resourceconfig.json, which the toolkit resolves before it starts.
exec "$DOCKER" run "${RUN_FLAGS[@]}" --hostname algo-1 -v "$TEST_DIR:/opt/ml" "$@" "$image" train
