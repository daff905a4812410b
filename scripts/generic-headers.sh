#!/bin/sh
# Build one self-contained kernel header tree for BCC from Debian's split header packages
# (linux-headers-<ver>-<flavour>, whose Makefile includes linux-headers-<ver>-common):
#
#   scripts/generic-headers.sh DEST [FLAVOUR_DIR]
#
# DEST gets include/ and arch/<arch>/include/ (the common sources, then the flavour's generated
# files over them) and the flavour's .config. BCC takes it as BCC_KERNEL_SOURCE; our programs read
# only tracepoint fields (their layout comes from the running kernel's format files), so a tree of
# another kernel version is safe. The image carries one (Dockerfile); tests build one in a temp dir.
set -eu
DEST=${1:?usage: generic-headers.sh DEST [FLAVOUR_DIR]}
FLAVOUR=${2:-}
if [ -z "$FLAVOUR" ]; then
    ARCH=$(dpkg --print-architecture)
    FLAVOUR=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n 1)
fi
[ -n "$FLAVOUR" ] && [ -f "$FLAVOUR/Makefile" ] || { echo "generic-headers: no flavour header dir ($FLAVOUR)" >&2; exit 1; }
COMMON=$(sed -n 's/^include \(.*\)\/Makefile$/\1/p' "$FLAVOUR/Makefile" | head -n 1)
KARCH=$(sed -n 's/^override ARCH = //p' "$FLAVOUR/.kernelvariables" 2>/dev/null | head -n 1)
[ -d "$COMMON/include" ] || { echo "generic-headers: $FLAVOUR/Makefile names no common tree ($COMMON)" >&2; exit 1; }
[ -n "$KARCH" ] && [ -d "$COMMON/arch/$KARCH/include" ] || { echo "generic-headers: no arch/$KARCH/include in $COMMON" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/arch/$KARCH"
cp -a "$COMMON/include" "$DEST/"
cp -a "$COMMON/arch/$KARCH/include" "$DEST/arch/$KARCH/"
cp -a "$FLAVOUR/include/." "$DEST/include/"
cp -a "$FLAVOUR/arch/$KARCH/include/." "$DEST/arch/$KARCH/include/"
cp "$FLAVOUR/.config" "$DEST/.config"
[ -f "$DEST/include/generated/utsrelease.h" ] || { echo "generic-headers: no utsrelease.h in $FLAVOUR" >&2; exit 1; }
echo "generic-headers: $DEST from $(basename "$FLAVOUR") (arch $KARCH)"
