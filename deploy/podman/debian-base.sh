#!/usr/bin/env bash
# A Debian 12 (bookworm) base image with Python 3.11 (python3, venv) made from Debian's own
# packages with mmdebstrap, imported into podman. Used as the Dockerfile's PYTHON_IMAGE when no
# registry is reachable (only a Debian mirror), and as the base of the local nginx image.
#
#   deploy/podman/debian-base.sh [TAG]        default TAG: localhost/digits-debian:bookworm
#
# Needs root (or podman's rootless set-up), mmdebstrap and podman; DEBIAN_MIRROR picks the mirror.
# Exit status 3: the image was made but podman cannot run containers on this host.
# Variant `apt`: the Essential packages and apt (the nginx image installs with it), plus python3,
# python3-venv (ensurepip, so a virtualenv gets pip) and passwd (groupadd, useradd); merged /usr
# without the usrmerge package (which would pull in perl); no manuals, documentation or locales.
set -euo pipefail

tag=${1:-localhost/digits-debian:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
hooks=/usr/share/mmdebstrap/hooks

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The tarball goes to podman through the pipe; mmdebstrap's chatter (its hooks print even with
# --quiet) to a log, shown when something fails.
if ! mmdebstrap --quiet --variant=apt --include=python3,python3-venv,passwd \
       --hook-dir="$hooks/merged-usr" --hook-dir="$hooks/eatmydata" \
       --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
       --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
       --aptopt='Acquire::Retries "3"' --aptopt='APT::Install-Recommends "false"' \
       --format=tar bookworm - "$mirror" 2>"$log" \
     | podman import --quiet \
         --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
         --change 'ENV LANG=C.UTF-8' \
         --change 'CMD ["/bin/bash"]' \
         - "$tag" >/dev/null; then
  tail -30 "$log" >&2
  echo "error: could not make $tag (mmdebstrap from $mirror, then podman import)" >&2
  exit 1
fi
if ! version=$(podman run --rm "$tag" python3 --version 2>&1); then
  echo "error: podman made $tag but cannot run a container of it: $version" >&2
  exit 3  # smoke.sh: podman cannot run here
fi
echo "$tag: $version"
