#!/usr/bin/env bash
# Build the imgcls image for linux/amd64 and push it to ECR; prints the image URI at the end.
#   usage: scripts/build_and_push.sh [REPOSITORY]          (default: imgcls)
# Needs: docker with a running engine, the AWS CLI (`uv run` puts it on PATH) and credentials.
# Environment:
#   DOCKER                            docker client (default: docker)
#   AWS_REGION / AWS_DEFAULT_REGION   region (else the CLI config's region)
#   AWS_ENDPOINT_URL                  AWS API endpoint, honoured by the AWS CLI (e.g. moto in tests)
#   ECR_REGISTRY_HOST                 push to this registry host instead of the one ECR reports
#                                     (tests: a local registry; also a mirror or proxy)
#   BASE_IMAGE, EXTRA_CA_BUNDLE, BAKE_WEIGHTS   as for `make image`
set -euo pipefail
cd "$(dirname "$0")/.."

repository="${1:-imgcls}"
docker="${DOCKER:-docker}"
die() { echo "build_and_push: $*" >&2; exit 1; }

command -v aws >/dev/null || die "the AWS CLI is not on PATH; run this with 'uv run scripts/build_and_push.sh' or install awscli"

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}"
[ -n "$region" ] || die "no AWS region: set AWS_REGION or run 'aws configure set region REGION'"
export AWS_DEFAULT_REGION="$region"

account=$(aws sts get-caller-identity --query Account --output text 2>&1) \
    || die "no usable AWS credentials (sts get-caller-identity failed): $account"

command -v "$docker" >/dev/null || die "docker ('$docker') is not installed"
"$docker" info >/dev/null 2>&1 || die "no Docker engine answers ('$docker info' failed); start Docker first"

if ! aws ecr describe-repositories --repository-names "$repository" >/dev/null 2>&1; then
    echo "build_and_push: creating ECR repository $repository (scan on push)"
    aws ecr create-repository --repository-name "$repository" \
        --image-scanning-configuration scanOnPush=true >/dev/null
fi
repository_uri=$(aws ecr describe-repositories --repository-names "$repository" \
    --query 'repositories[0].repositoryUri' --output text)
registry="${ECR_REGISTRY_HOST:-${repository_uri%%/*}}"
image_uri="$registry/$repository"

echo "build_and_push: logging in to $registry (account $account, region $region)"
aws ecr get-login-password | "$docker" login --username AWS --password-stdin "$registry"

# A tag must name what was built: the commit, marked when tracked files have uncommitted changes.
if git_sha=$(git rev-parse --short=12 HEAD 2>/dev/null); then
    git diff --quiet HEAD -- || git_sha="$git_sha-dirty"
else
    git_sha=unversioned
fi
# linux/amd64: SageMaker instances are x86; an image built on an ARM laptop would not start there.
PLATFORM=linux/amd64 bash scripts/build_image.sh "$repository:$git_sha" \
    "${BASE_IMAGE:-debian:bookworm-slim}" "${EXTRA_CA_BUNDLE:-}" "${BAKE_WEIGHTS:-1}"

for tag in "$git_sha" latest; do
    "$docker" tag "$repository:$git_sha" "$image_uri:$tag"
    "$docker" push "$image_uri:$tag"
done
echo "build_and_push: pushed $image_uri:$git_sha and :latest"
echo "$image_uri:$git_sha"
