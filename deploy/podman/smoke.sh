#!/usr/bin/env bash
# The serving image, built and run for real with podman (no Docker engine, no registry but PyPI
# and a Debian mirror):
#
#   1. a Debian 12 base with Python 3.11 made with mmdebstrap (debian-base.sh);
#   2. the Dockerfile's `api` target built on it (PYTHON_IMAGE), with the host's CA bundle given to
#      pip, and the nginx image (nginx.Containerfile) on the same base;
#   3. tests/test_image.py against them: the image's user, health check, contents and size; one
#      container answering /readyz and /predict on 127.0.0.1; then docker-compose.yml's topology
#      (compose.py: three replicas behind nginx) losing no request while replicas are stopped
#      and killed under load.
#
#   deploy/podman/smoke.sh            (as root; .ci/run calls it)
#
# Where podman cannot run containers at all, it says why and exits 0 (skipped); any other failure
# fails. Containers it started are removed at the end; the images stay (podman images).
set -euo pipefail
cd "$(dirname "$0")/../.."

export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
python=${PYTHON:-.venv/bin/python}
base=localhost/digits-debian:bookworm
image=localhost/digits:smoke
nginx_image=localhost/digits-nginx:smoke
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

skip() {
  echo "image smoke test SKIPPED: $*" >&2
  exit 0
}
step() { echo "== $(date +%T) $*"; }
log=$(mktemp)
quietly() {  # run "$@" with its output in $log, shown only when it fails
  if ! "$@" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "failed: $*" >&2
    return 1
  fi
}

for tool in podman mmdebstrap; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed (Debian: apt-get install podman runc mmdebstrap)"
done
[ "$(id -u)" = 0 ] || skip "needs root: mmdebstrap and rootful podman"
if ! info=$(podman info 2>&1); then
  skip "podman does not work here: $(echo "$info" | tail -1)"
fi

cleanup() {
  "$python" deploy/podman/compose.py down >/dev/null 2>&1 || true
  podman ps --all --format '{{.Names}}' | grep '^digits-smoke' | xargs -r podman rm --force --time 5 >/dev/null || true
}
trap 'cleanup; rm -f "$log"' EXIT
cleanup

started=$(date +%s)
step "Debian base ($base) with mmdebstrap"
status=0
deploy/podman/debian-base.sh "$base" || status=$?
case $status in
  0) ;;
  3) skip "podman cannot run a container here (its error is above)";;
  *) exit "$status";;
esac

step "api image ($image) on $base"
ca_args=()
if [ -f "$ca_bundle" ]; then  # pip in the build trusts what the host trusts (a TLS-intercepting proxy's CA)
  ca_args=(--volume "$ca_bundle:/etc/ssl/certs/host-ca-bundle.crt:ro"
           --build-arg PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt)
fi
quietly podman build --format docker --network host --target api \
  --build-arg PYTHON_IMAGE="$base" "${ca_args[@]}" --tag "$image" .

step "nginx image ($nginx_image) on $base"
quietly podman build --format docker --network host --build-arg BASE_IMAGE="$base" \
  --file deploy/podman/nginx.Containerfile --tag "$nginx_image" deploy/podman

step "tests/test_image.py"
IMAGE_UNDER_TEST="$image" NGINX_IMAGE_UNDER_TEST="$nginx_image" \
  "$python" -m pytest -q -p no:cacheprovider tests/test_image.py
step "done in $(( $(date +%s) - started )) s; $image: $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
