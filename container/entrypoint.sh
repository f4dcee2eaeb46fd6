#!/bin/sh
# SageMaker starts the image as `docker run IMAGE train` or `docker run IMAGE serve`; both are
# console scripts in /opt/venv/bin. Any other command runs as given (bash, python -c ..., imgcls).
set -e
if [ "$#" -eq 0 ]; then
    echo "usage: docker run IMAGE train | serve | COMMAND [ARGS...]" >&2
    exit 2
fi
if [ "$1" = train ]; then
    # Our check of SageMaker's config files comes first: the toolkit answers a broken one with a
    # traceback longer than FailureReason's 1,024 characters, or with exit 0 when output/ is missing.
    python -m imgcls.sagemaker_config
fi
# exec: the command replaces this shell, so signals from tini reach it directly.
exec "$@"
