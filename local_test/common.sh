# Shared by the local_test scripts: the docker client and the `docker run` flags every run needs.
# shellcheck shell=bash
DOCKER="${DOCKER:-docker}"
command -v "$DOCKER" >/dev/null || { echo "$(basename "$0"): '$DOCKER' not found; install Docker" >&2; exit 1; }
# The folder mounted at /opt/ml; TEST_DIR=... points the scripts at another one.
TEST_DIR="${TEST_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/test_dir}"
# DataLoader workers share tensors through /dev/shm; Docker's 64 MB default kills them.
RUN_FLAGS=(--rm --shm-size "${SHM_SIZE:-2g}")
# Give the container the GPUs when the NVIDIA runtime is installed.
if "$DOCKER" info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
    RUN_FLAGS+=(--gpus all)
fi
