#!/bin/sh
# Build the container image with podman on a Debian machine without Docker (run as root).
#
#   scripts/image.sh setup   podman, buildah, runc, debootstrap; the debian:bookworm-slim base
#   scripts/image.sh build   setup, then podman build -t $IMAGE .
#
# The base image is a `debootstrap --variant=minbase bookworm` tree imported as
# debian:bookworm-slim (no registry but Debian's archive is reachable here); its tarball is cached
# in $CACHE so later builds skip debootstrap. Builds use host networking: podman's own networking
# would rewrite the host's firewall rules and turn on IP forwarding. The host's CA bundle is
# mounted read-only into the build so pip trusts whatever the host trusts; it is not copied into
# the image.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-localhost/ebpf-edge-agent:dev}
CACHE=${CACHE:-/var/lib/ebpf-edge-agent/image-base}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
BASE=docker.io/library/debian:bookworm-slim
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
export CONTAINERS_CONF="$ROOT/deploy/containers.conf"
say() { printf 'image: %s\n' "$*"; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (podman storage in /var/lib/containers, debootstrap)"

setup() {
    missing=""
    for p in podman buildah runc debootstrap; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        say "installing:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update -qq
        # shellcheck disable=SC2086
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing uidmap >/dev/null
    fi
    if podman image exists "$BASE"; then
        return 0
    fi
    TAR="$CACHE/bookworm-minbase.tar"
    if [ ! -s "$TAR" ]; then
        say "debootstrap --variant=minbase bookworm (once; cached in $CACHE)"
        mkdir -p "$CACHE"
        TMP=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        trap 'rm -rf "$TMP"' EXIT
        debootstrap --variant=minbase bookworm "$TMP" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $CACHE/debootstrap.log"
        rm -rf "$TMP"/var/cache/apt/archives/*.deb "$TMP"/var/lib/apt/lists/*
        tar -C "$TMP" --numeric-owner -cf "$TAR.tmp" .
        mv "$TAR.tmp" "$TAR"
        rm -rf "$TMP"
        trap - EXIT
    fi
    say "importing $TAR as $BASE"
    podman import --quiet "$TAR" "$BASE" >/dev/null
}

build() {
    setup
    [ -r "$CA_BUNDLE" ] || die "no CA bundle at $CA_BUNDLE (set CA_BUNDLE)"
    say "building $IMAGE"
    start=$(date +%s)
    version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/agent/__init__.py")
    revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
    if [ "$revision" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then
        revision="$revision-dirty"
    fi
    source=$(git -C "$ROOT" remote get-url origin 2>/dev/null || echo "${SOURCE_URL:-unknown}")
    podman build --format docker --network=host --pull=never \
        --volume "$CA_BUNDLE:/run/host-ca.crt:ro" \
        --build-arg PIP_CERT=/run/host-ca.crt \
        --label org.opencontainers.image.version="$version" \
        --label org.opencontainers.image.revision="$revision" \
        --label org.opencontainers.image.source="$source" \
        -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT"
    say "built $IMAGE in $(( $(date +%s) - start )) s, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
}

case "${1:-build}" in
    setup) setup ;;
    build) build ;;
    *) die "usage: $0 [setup|build]" ;;
esac
