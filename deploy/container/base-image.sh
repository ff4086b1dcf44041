#!/usr/bin/env bash
# The container base image, built from Debian's own packages: no Docker Hub needed.
#
# Debian bookworm (debootstrap, minbase) + Debian's python3.11 and pip, tagged $BASE_IMAGE, which
# bentofile.yaml and bentofile.gpu.yaml name as docker.base_image. Built once and kept: run again it
# says so and does nothing (REBUILD=1 builds it anew). Needs root and debootstrap.
#
#   deploy/container/base-image.sh docker|buildah
#
# Environment: BASE_IMAGE (default localhost/capsnet-python:3.11-bookworm), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), SSL_CERT_FILE (when set, that CA bundle is the image's, so that pip and uv
# inside the build trust the same package-index certificates as this machine).
set -euo pipefail

BUILDER=${1:?usage: base-image.sh docker|buildah}
BASE_IMAGE=${BASE_IMAGE:-localhost/capsnet-python:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=python3.11,python3-pip,ca-certificates

step() { echo "base-image: $*" >&2; }
fail() { echo "base-image: FAILED: $*" >&2; exit 1; }

exists() {
    case $BUILDER in
        docker) docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 ;;
        buildah) buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1 ;;
        *) fail "unknown builder '$BUILDER' (docker or buildah)" ;;
    esac
}

if exists && [ -z "${REBUILD:-}" ]; then
    step "$BASE_IMAGE already exists (REBUILD=1 to build it again)"
    exit 0
fi
[ "$(id -u)" = 0 ] || fail "debootstrap needs root"
command -v debootstrap >/dev/null || fail "debootstrap is missing (apt-get install debootstrap)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

step "1/3 debootstrap $SUITE (minbase + $PACKAGES) from $MIRROR"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap (log above)"; }

step "2/3 trim: apt lists and caches, docs, man pages; pip may install into the system Python"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
       "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*
# BentoML's Dockerfile installs uv with this pip; uv then makes the service's own venv.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
if [ -n "${SSL_CERT_FILE:-}" ] && [ -f "$SSL_CERT_FILE" ]; then
    cp "$SSL_CERT_FILE" "$root/etc/ssl/certs/ca-certificates.crt"
fi

step "3/3 import as $BASE_IMAGE with $BUILDER"
tar -C "$root" -cf "$work/rootfs.tar" .
envs=(LANG=C.UTF-8 PYTHONUNBUFFERED=1 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
case $BUILDER in
    docker)
        changes=()
        for e in "${envs[@]}"; do changes+=(--change "ENV $e"); done
        docker import "${changes[@]}" --change 'CMD ["python3"]' "$work/rootfs.tar" "$BASE_IMAGE" >/dev/null ;;
    buildah)
        ctr=$(buildah from scratch)
        buildah add "$ctr" "$work/rootfs.tar" / >/dev/null
        for e in "${envs[@]}"; do buildah config --env "$e" "$ctr"; done
        buildah config --cmd python3 "$ctr"
        buildah commit --rm -q "$ctr" "$BASE_IMAGE" >/dev/null ;;
esac
exists || fail "$BASE_IMAGE was not created"
step "done: $BASE_IMAGE"
