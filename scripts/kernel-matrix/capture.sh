#!/bin/bash
# Capture tracefs tracepoint `format` files from Debian kernels booted under
# QEMU (TCG, no KVM) with virtme-ng, plus the same files from the host kernel.
#
# Usage: capture.sh [DEST] [SUITE...]
#   DEST   fixtures root (default /work/main/tests/fixtures/tracepoints)
#   SUITE  any of bullseye bookworm trixie host (default: all four)
#
# Needs root (apt-get install, mounting tracefs on the host). Never installs the
# guest kernels into the host: they are only `dpkg -x`-ed under $WORK/<suite>.
set -euo pipefail

WORK=${KMATRIX_WORK:-/tmp/kmatrix}
DEST=${1:-/work/main/tests/fixtures/tracepoints}
shift || true
SUITES=("$@")
[ ${#SUITES[@]} -gt 0 ] || SUITES=(bullseye bookworm trixie host)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=$WORK/cache
VENV=$WORK/venv
VNG_VERSION=${VNG_VERSION:-1.42}

# every tracepoint a registered probe needs or can use, as system/event (agent/probes/registry.py)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mapfile -t EVENTS < <(cd "$ROOT" && /usr/bin/python3 -m agent.probes.registry tracepoints --slash)
[ ${#EVENTS[@]} -gt 0 ] || { echo "capture.sh: no tracepoints from agent.probes.registry" >&2; exit 1; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$WORK" "$CACHE"

# ---------------------------------------------------------------- tools
ensure_tools() {
  if ! command -v qemu-system-x86_64 >/dev/null; then
    log "installing qemu-system-x86"
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends qemu-system-x86
  fi
  # vng uses `file`/`strings` to read the kernel version, depmod for modules.dep
  # virtme-run needs busybox to build its initramfs (Debian kernels need modules: 9p, virtio).
  for b in file:file strings:binutils depmod:kmod busybox:busybox-static; do
    command -v "${b%%:*}" >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${b##*:}"
  done
  if [ ! -x "$VENV/bin/vng" ]; then
    log "installing virtme-ng $VNG_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "virtme-ng==$VNG_VERSION"
  fi
}

# ---------------------------------------------------------------- fetch
# Private apt configuration per suite: nothing touches the host's apt state.
apt_private() {
  local tool=$1 suite=$2; shift 2
  local d=$WORK/apt-$suite
  "$tool" \
    -o Dir::Etc::sourcelist="$d/sources.list" \
    -o Dir::Etc::sourceparts="$d/sources.list.d" \
    -o Dir::State="$d/state" \
    -o Dir::State::status="$d/state/status" \
    -o Dir::Cache="$d/cache" \
    -o APT::Architecture=amd64 \
    -o Debug::NoLocking=1 \
    "$@"
}

fetch_suite() {
  local suite=$1
  local d=$WORK/apt-$suite
  mkdir -p "$d/state/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d"
  : > "$d/state/status"
  cat > "$d/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $suite main
EOF
  log "$suite: apt update (private state in $d)"
  local pkg=
  if apt_private apt-get "$suite" -q update >&2; then
    # Resolve the ABI-versioned image package through the metapackage.
    pkg=$(apt_private apt-cache "$suite" show linux-image-amd64 2>/dev/null \
          | sed -n 's/^Depends: .*\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | head -1)
  fi
  if [ -z "$pkg" ]; then
    # Offline or mirror trouble: fall back to whatever is cached.
    local cached
    cached=$(ls "$CACHE/$suite"/linux-image-*.deb 2>/dev/null | head -1 || true)
    [ -n "$cached" ] || { log "$suite: could not resolve linux-image-amd64 and nothing cached"; return 1; }
    log "$suite: could not resolve linux-image-amd64; using cached $cached"
    echo "$cached"; return 0
  fi
  local ver
  ver=$(apt_private apt-cache "$suite" show "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
  log "$suite: $pkg $ver"
  mkdir -p "$CACHE/$suite"
  local deb
  deb=$(ls "$CACHE/$suite/${pkg}_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ] || ! dpkg-deb -f "$deb" Version | grep -qxF "$ver"; then
    rm -f "$CACHE/$suite/"*.deb
    (cd "$CACHE/$suite" && apt_private apt-get "$suite" -q download "$pkg" >&2)
    deb=$(ls "$CACHE/$suite/${pkg}_"*.deb | head -1)
  else
    log "$suite: using cached $deb"
  fi
  echo "$deb"
}

unpack_suite() {
  local suite=$1 deb=$2
  local root=$WORK/$suite
  local stamp=$root/.unpacked-from
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(basename "$deb")" ]; then
    log "$suite: already unpacked"
  else
    rm -rf "$root"; mkdir -p "$root"
    log "$suite: dpkg -x $(basename "$deb")"
    dpkg -x "$deb" "$root"
    basename "$deb" > "$stamp"
  fi
}

# ---------------------------------------------------------------- capture
# Runs inside the guest (and on the host): copy the format files into $1.
write_guest_script() {
  cat > "$WORK/guest-capture.sh" <<'EOF'
#!/bin/sh
# $1 = output dir
out=$1
mkdir -p "$out"
uname -r > "$out/UNAME"
T=/sys/kernel/tracing
if [ ! -e $T/events ]; then
  mount -t tracefs nodev $T 2>>"$out/log" || true
fi
if [ ! -e $T/events ]; then
  mount -t debugfs nodev /sys/kernel/debug 2>>"$out/log" || true
  T=/sys/kernel/debug/tracing
fi
echo "tracefs=$T" >> "$out/log"
# events.txt: one system/event per line, written by capture.sh next to this script
while read -r ev; do
  if [ -r "$T/events/$ev/format" ]; then
    mkdir -p "$out/$ev"
    cat "$T/events/$ev/format" > "$out/$ev/format"
  else
    echo "missing: $ev" >> "$out/log"
  fi
done < "$(dirname "$0")/events.txt"
ls $T/events/tcp $T/events/skb >> "$out/log" 2>&1 || true
echo done > "$out/DONE"
EOF
  chmod +x "$WORK/guest-capture.sh"
  printf '%s\n' "${EVENTS[@]}" > "$WORK/events.txt"
}

install_result() {
  local from=$1
  local rel
  rel=$(cat "$from/UNAME")
  log "installing $rel into $DEST/$rel"
  rm -rf "${DEST:?}/$rel"
  mkdir -p "$DEST/$rel"
  cp "$from/UNAME" "$DEST/$rel/UNAME"
  for ev in "${EVENTS[@]}"; do
    if [ -f "$from/$ev/format" ]; then
      mkdir -p "$DEST/$rel/events/$ev"
      cp "$from/$ev/format" "$DEST/$rel/events/$ev/format"
    else
      log "$rel: tracepoint $ev does not exist"
    fi
  done
}

boot_suite() {
  local suite=$1
  local root=$WORK/$suite
  local kimg
  kimg=$(ls "$root"/boot/vmlinuz-* | head -1)
  local out=$WORK/out-$suite
  rm -rf "$out"; mkdir -p "$out"
  # The guest gets a tmpfs on /tmp: only the --rwdir is shared, so the guest
  # script and its list of events have to live inside it.
  cp "$WORK/guest-capture.sh" "$WORK/events.txt" "$out/"
  log "$suite: booting $kimg under TCG"
  local t0=$SECONDS
  # vng exits non-zero (255) regardless of the guest's result: judge by DONE.
  # Without -v the guest console is lost; keep it in a log.
  # vng shells out to virtme-run, so the venv bin dir must be on PATH.
  PATH="$VENV/bin:$PATH" timeout 600 "$VENV/bin/vng" --run "$kimg" --disable-kvm --force-9p \
      --memory 1G --cpus 2 -v --rwdir "$out" \
      --exec "sh $out/guest-capture.sh $out/res" \
      > "$WORK/boot-$suite.log" 2>&1 < /dev/null || true
  log "$suite: vng finished after $((SECONDS - t0)) s"
  if [ ! -f "$out/res/DONE" ]; then
    log "$suite: guest produced no result; see $WORK/boot-$suite.log"
    return 1
  fi
  cat "$out/res/log" >&2
  install_result "$out/res"
}

capture_host() {
  local out=$WORK/out-host
  rm -rf "$out"
  sh "$WORK/guest-capture.sh" "$out/res"
  install_result "$out/res"
}

main() {
  ensure_tools
  write_guest_script
  local rc=0 s deb
  for s in "${SUITES[@]}"; do
    if [ "$s" = host ]; then
      capture_host || rc=1
      continue
    fi
    deb=$(fetch_suite "$s") || { rc=1; continue; }
    unpack_suite "$s" "$deb"
    boot_suite "$s" || rc=1
  done
  return $rc
}

main
