#!/bin/sh
# SageMaker starts the image as `docker run IMAGE train` or `docker run IMAGE serve`; both are
# console scripts in /opt/venv/bin. Any other command runs as given (bash, python -c ..., imgcls).
set -e
if [ "$#" -eq 0 ]; then
    echo "usage: docker run IMAGE train | serve | COMMAND [ARGS...]" >&2
    exit 2
fi
# exec: the command replaces this shell, so signals from tini reach it directly.
exec "$@"
