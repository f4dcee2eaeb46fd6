# Sourced by .ci/run: a Docker engine and a bookworm base image on a machine that can pull nothing.
#   - installs the Debian packages it needs when they are missing;
#   - reuses an engine that already answers, otherwise starts dockerd in the background and
#     stops it (by PID, on exit) when the sourcing shell ends;
#   - builds the base image with debootstrap once, then reuses it;
#   - exports what the build and the tests read: DOCKER, BASE_IMAGE, EXTRA_CA_BUNDLE, BAKE_WEIGHTS.
# Settings (environment): DOCKER_DATA_ROOT, DOCKER_STATE_DIR, BASE_IMAGE, DEBIAN_MIRROR (default: the
# mirror of this machine's own apt sources, see .ci/apt_mirror.sh).

docker_engine_setup() {
    local state_dir="${DOCKER_STATE_DIR:-/var/tmp/imgcls-docker}"
    local data_root="${DOCKER_DATA_ROOT:-/var/lib/docker}"
    local mirror="${DEBIAN_MIRROR:-}"  # default: the mirror this machine's apt uses
    if [ -z "$mirror" ]; then
        mirror=$(bash "$(dirname "${BASH_SOURCE[0]}")/apt_mirror.sh") || return 1
    fi
    mkdir -p "$state_dir"

    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io containerd runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v iptables >/dev/null || missing+=(iptables)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "docker_engine: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi

    # The 20.10 client understands DOCKER_BUILDKIT=1 without buildx (the 28.x one on PATH does not).
    export DOCKER="${DOCKER:-/usr/bin/docker}"

    if "$DOCKER" info >/dev/null 2>&1; then
        echo "docker_engine: reusing the engine that already answers"
    else
        echo "docker_engine: starting dockerd (data root $data_root, log $state_dir/dockerd.log)"
        dockerd --data-root "$data_root" --pidfile "$state_dir/dockerd.pid" >"$state_dir/dockerd.log" 2>&1 &
        DOCKER_ENGINE_PID=$!
        trap docker_engine_stop EXIT
        local waited=0
        until "$DOCKER" info >/dev/null 2>&1; do
            if ! kill -0 "$DOCKER_ENGINE_PID" 2>/dev/null || [ "$waited" -ge 60 ]; then
                echo "docker_engine: dockerd did not come up; last log lines:" >&2
                tail -n 20 "$state_dir/dockerd.log" >&2
                return 1
            fi
            sleep 1
            waited=$((waited + 1))
        done
    fi

    # debootstrap's minbase is very close to debian:bookworm-slim, which the Dockerfile expects.
    export BASE_IMAGE="${BASE_IMAGE:-imgcls-base/debian:bookworm-minbase}"
    if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "docker_engine: reusing base image $BASE_IMAGE"
    else
        echo "docker_engine: building base image $BASE_IMAGE with debootstrap"
        local rootfs="$state_dir/rootfs"
        rm -rf "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$state_dir/debootstrap.log" 2>&1 \
            || { tail -n 20 "$state_dir/debootstrap.log" >&2; return 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
        rm -rf "$rootfs"
    fi

    # PyPI is reached through a TLS-intercepting proxy whose CA only the host trusts.
    if [ -z "${EXTRA_CA_BUNDLE:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        export EXTRA_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
    fi
    # PyTorch's weights server is unreachable here, so the pretrained weights cannot be baked in.
    export BAKE_WEIGHTS="${BAKE_WEIGHTS:-0}"
    echo "docker_engine: ready (DOCKER=$DOCKER BASE_IMAGE=$BASE_IMAGE EXTRA_CA_BUNDLE=${EXTRA_CA_BUNDLE:-none} BAKE_WEIGHTS=$BAKE_WEIGHTS)"
}

docker_engine_stop() {
    [ -n "${DOCKER_ENGINE_PID:-}" ] || return 0
    echo "docker_engine: stopping dockerd (pid $DOCKER_ENGINE_PID)"
    kill -TERM "$DOCKER_ENGINE_PID" 2>/dev/null || true
    # dockerd stops its containers and containerd first; give it time before returning.
    for _ in $(seq 1 30); do
        kill -0 "$DOCKER_ENGINE_PID" 2>/dev/null || return 0
        sleep 1
    done
    echo "docker_engine: dockerd (pid $DOCKER_ENGINE_PID) still running after 30 s" >&2
}

docker_engine_setup
