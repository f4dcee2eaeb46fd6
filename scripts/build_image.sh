#!/usr/bin/env bash
# Build the imgcls image locally. `make image` calls this; CI and the tests do too.
#   usage: scripts/build_image.sh [IMAGE] [BASE_IMAGE] [EXTRA_CA_BUNDLE] [BAKE_WEIGHTS]
#   IMAGE            tag to build (default imgcls:latest)
#   BASE_IMAGE       Debian bookworm base (default debian:bookworm-slim)
#   EXTRA_CA_BUNDLE  optional PEM file trusted by the install steps only (TLS-intercepting proxy)
#   BAKE_WEIGHTS     1 bakes the pretrained ResNet50 weights in (needs PyTorch's weights server), 0 skips
# Environment: DOCKER (client, default: one that has BuildKit), PLATFORM (default linux/amd64),
# FORCE_BUILD=1 (rebuild even when IMAGE already has the same build inputs), EXTRA_BUILD_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${1:-imgcls:latest}"
base_image="${2:-debian:bookworm-slim}"
extra_ca="${3:-}"
bake_weights="${4:-1}"
platform="${PLATFORM:-linux/amd64}"

# BuildKit (secrets, cache mounts) needs buildx with a recent client; Debian's 20.10 client has it built in.
if [ -z "${DOCKER:-}" ]; then
    if docker buildx version >/dev/null 2>&1 || [ ! -x /usr/bin/docker ]; then DOCKER=docker; else DOCKER=/usr/bin/docker; fi
fi
command -v "$DOCKER" >/dev/null || { echo "build_image: docker client '$DOCKER' not found; install Docker" >&2; exit 1; }
"$DOCKER" info >/dev/null 2>&1 || { echo "build_image: no Docker engine answers ('$DOCKER info' failed); start dockerd" >&2; exit 1; }
case "$bake_weights" in 0|1) ;; *) echo "build_image: BAKE_WEIGHTS must be 0 or 1, not '$bake_weights'" >&2; exit 2 ;; esac
if [ -n "$extra_ca" ] && [ ! -s "$extra_ca" ]; then
    echo "build_image: EXTRA_CA_BUNDLE '$extra_ca' is not a readable, non-empty file" >&2; exit 2
fi
base_id=$("$DOCKER" image inspect --format '{{.Id}}' "$base_image" 2>/dev/null) \
    || base_id="$base_image"   # not local yet: the build pulls it

# Everything the image is made from; a local image labelled with the same hash is reused as it is.
inputs_hash=$( {
    printf 'base=%s bake=%s platform=%s\n' "$base_id" "$bake_weights" "$platform"
    find container pyproject.toml uv.lock .dockerignore -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-16 )
if [ "${FORCE_BUILD:-0}" != 1 ] \
   && [ "$("$DOCKER" image inspect --format '{{index .Config.Labels "imgcls.build-inputs"}}' "$image" 2>/dev/null)" = "$inputs_hash" ]; then
    echo "build_image: $image is up to date (build inputs $inputs_hash); FORCE_BUILD=1 rebuilds"
else
    build_args=(--file container/Dockerfile --tag "$image" --platform "$platform"
                --build-arg "BASE_IMAGE=$base_image" --build-arg "BAKE_WEIGHTS=$bake_weights"
                --label "imgcls.build-inputs=$inputs_hash")
    [ -n "$extra_ca" ] && build_args+=(--secret "id=extra_ca,src=$extra_ca")
    # shellcheck disable=SC2206  # EXTRA_BUILD_ARGS is a user-supplied word list
    build_args+=(${EXTRA_BUILD_ARGS:-})
    echo "build_image: building $image from $base_image (BAKE_WEIGHTS=$bake_weights, extra CA: ${extra_ca:-none})"
    previous_id=$("$DOCKER" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    started=$SECONDS
    DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "${build_args[@]}" .
    echo "build_image: built $image in $((SECONDS - started)) s"
    # The image this tag named before is now untagged: remove it (a no-op while other tags or containers use it).
    if [ -n "$previous_id" ] && [ "$previous_id" != "$("$DOCKER" image inspect --format '{{.Id}}' "$image")" ] \
       && [ "$("$DOCKER" image inspect --format '{{len .RepoTags}}' "$previous_id" 2>/dev/null)" = 0 ]; then
        "$DOCKER" image rm "$previous_id" >/dev/null 2>&1 || true
    fi
fi

size_bytes=$("$DOCKER" image inspect --format '{{.Size}}' "$image")
echo "build_image: $image size $(awk -v b="$size_bytes" 'BEGIN { printf "%.2f GB", b / 1e9 }') ($size_bytes bytes; goal < 8 GB)"
