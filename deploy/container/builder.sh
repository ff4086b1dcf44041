# Sourced by the container scripts: CONTAINER_BUILDER is docker where an engine answers, else buildah
# (installed from Debian, with debootstrap, when missing and this is a root Debian machine).
# CONTAINER_BUILDER=docker|buildah chooses by hand.
detect_builder() {
    if [ -n "${CONTAINER_BUILDER:-}" ]; then return; fi
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        CONTAINER_BUILDER=docker
        return
    fi
    if ! command -v buildah >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            echo "container: no Docker engine answers; installing Debian's buildah and debootstrap" >&2
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
        else
            echo "container: FAILED: no Docker engine answers and buildah is missing (install docker, or buildah and debootstrap)" >&2
            exit 1
        fi
    fi
    CONTAINER_BUILDER=buildah
}
# buildah builds and runs with chroot isolation: no user namespaces or cgroups needed.
export BUILDAH_ISOLATION=chroot
