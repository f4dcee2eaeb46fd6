#!/bin/sh
# Run a build step trusting an optional extra CA (BuildKit secret `extra_ca`), e.g. a corporate
# TLS-intercepting proxy. The bundle lives in /tmp for this step only and never lands in a layer.
set -eu
extra=/run/secrets/extra_ca
if [ -s "$extra" ]; then
    bundle=$(mktemp)
    trap 'rm -f "$bundle"' EXIT
    cat /etc/ssl/certs/ca-certificates.crt "$extra" >"$bundle"
    export SSL_CERT_FILE="$bundle" PIP_CERT="$bundle" REQUESTS_CA_BUNDLE="$bundle"
    "$@"
else
    exec "$@"
fi
