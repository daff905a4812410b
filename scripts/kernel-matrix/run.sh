#!/bin/bash
# Kernel matrix: boot Debian's 5.10 (bullseye), 6.1 (bookworm) and 6.12 (trixie) kernels under
# QEMU (software emulation, virtme-ng) and run check-kernel, smoke-test and the real-kernel test
# subset inside each boot; run the same on the host kernel. Results go to
# tests/kernels/results/<suite>.json and the table in docs/platforms.md is re-rendered from them.
#
# Usage: run.sh [SUITE...]     SUITE: bullseye bookworm trixie host (default: all four)
#
# KMATRIX_JOBS=N boots N kernels at once (default 1). A guest spends most of its time in clang
# (BCC compiling a probe), single-threaded, but two guests at once on this 2-core machine were
# slower, not faster: check-kernel took ~100 s per guest instead of 16 s (9p and CPU contention,
# with other work on the host).
#
# KMATRIX_GUEST_TIMEOUT=SECONDS bounds one guest (default 3600; on a quiet machine the whole
# guest suite took 33 min on 5.10, the slowest; other work on the CPUs makes it much longer).
#
# KMATRIX_VNG=PATH boots with that vng instead of the one installed into the cache's venv (the
# interruption test uses a stand-in). Interrupted (SIGTERM, SIGINT, SIGHUP) or finished, the
# script stops every process it started, guests included: a QEMU guest under its own timeout
# timeout would otherwise go on using the CPUs for minutes after make was stopped.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${KMATRIX_CACHE:-/var/lib/ebpf-edge-agent/kernel-matrix}  # not /var/cache: virtme-ng hides it in the guest
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
VENV=$CACHE/vng-venv
VNG_VERSION=${VNG_VERSION:-1.42}
VNG=${KMATRIX_VNG:-$VENV/bin/vng}
JOBS=${KMATRIX_JOBS:-1}
GUEST_TIMEOUT=${KMATRIX_GUEST_TIMEOUT:-3600}
RESULTS=$REPO/tests/kernels/results
SUITES=("$@")
[ ${#SUITES[@]} -gt 0 ] || SUITES=(bullseye bookworm trixie host)

log() { printf '[%(%H:%M:%S)T] kernel-matrix: %s\n' -1 "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

# ---------------------------------------------------------------------------- cleanup
descendants() {
  local c
  for c in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "$c"
    descendants "$c"
  done
}

# Every process below this script (boot subshells, timeout, vng, virtme-run, qemu, the host
# run's pytest): TERM first, KILL what is left after 5 s. The list is taken before any signal,
# so a child orphaned by its parent's death is still on it.
stop_children() {
  local pids left i g f
  pids=$(descendants $$)
  for f in "$GUESTS"/*; do  # guests' process groups (timeout's pgid is its pid), see boot_suite
    [ -f "$f" ] || continue
    g=$(cat "$f" 2>/dev/null || true)
    [ -n "$g" ] && pids="$pids $(pgrep -g "$g" 2>/dev/null | tr '\n' ' ')"
    rm -f "$f"
  done
  pids=$(echo $pids | tr ' ' '\n' | sort -u | xargs)
  [ -n "$pids" ] || return 0
  log "stopping $(echo $pids | wc -w) process(es) this run started (guests included)"
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 50); do
    left=""
    for p in $pids; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
    [ -n "$left" ] || return 0
    sleep 0.1
  done
  log "killing what did not stop:$left"
  kill -KILL $left $(descendants $$) 2>/dev/null || true
  for i in $(seq 20); do  # until the kernel has delivered it: gone when this script ends
    pids=""
    for p in $left; do [ -d "/proc/$p" ] && [ "$(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null)" != Z ] && pids="$pids $p"; done
    [ -n "$pids" ] || return 0
    sleep 0.1
  done
}
GUESTS=$CACHE/guests.$$  # one file per running guest: the pid of its timeout
trap 'stop_children; rm -rf "$GUESTS"' EXIT
trap 'log "interrupted (SIGTERM)"; exit 143' TERM
trap 'log "interrupted (SIGINT)"; exit 130' INT
trap 'log "interrupted (SIGHUP)"; exit 129' HUP
mkdir -p "$CACHE" "$RESULTS" "$GUESTS"

# ---------------------------------------------------------------------------- tools
ensure_tools() {
  local b missing=()
  [ -z "${KMATRIX_VNG:-}" ] || return 0
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  # vng reads the kernel version with file/strings, regenerates modules.dep with depmod and
  # builds its initramfs with busybox (Debian kernels have 9p and virtio as modules)
  for b in file:file strings:binutils depmod:kmod busybox:busybox-static; do
    command -v "${b%%:*}" >/dev/null || missing+=("${b##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >&2
  fi
  if [ ! -x "$VENV/bin/vng" ]; then
    log "installing virtme-ng $VNG_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "virtme-ng==$VNG_VERSION" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    [ -x "$VENV/bin/vng" ] || { log "virtme-ng did not install"; exit 1; }
  fi
}

# ---------------------------------------------------------------------------- fetch
apt_private() {
  local tool=$1 suite=$2; shift 2
  local d=$CACHE/$suite/apt
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

# first package name matching $2 in the Depends of package $1
dep_of() {
  local suite=$1 pkg=$2 pattern=$3
  apt_private apt-cache "$suite" show "$pkg" 2>/dev/null | sed -n 's/^Depends: //p' | head -1 \
    | tr ',' '\n' | sed 's/^ *//; s/ .*//' | grep -E "^$pattern\$" | head -1
}

# Writes $CACHE/<suite>/debs.list (the .deb files of image, headers, headers-common).
fetch_suite() {
  local suite=$1
  local d=$CACHE/$suite/apt debs=$CACHE/$suite/debs
  mkdir -p "$d/state/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d" "$debs"
  : > "$d/state/status"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $suite main" \
    > "$d/sources.list"
  local image='' abi='' hdr='' common=''
  if apt_private apt-get "$suite" -qq update >&2 2>/dev/null; then
    image=$(dep_of "$suite" linux-image-amd64 'linux-image-[0-9].*-amd64')
  fi
  if [ -z "$image" ]; then
    if [ -s "$CACHE/$suite/debs.list" ]; then
      log "$suite: archive unreachable; using the cached packages"
      return 0
    fi
    log "$suite: cannot resolve linux-image-amd64 and nothing is cached"
    return 1
  fi
  abi=${image#linux-image-}
  hdr=linux-headers-$abi
  common=$(dep_of "$suite" "$hdr" 'linux-headers-.*-common')
  local pkgs=("$image" "$hdr" "$common") p ver f list=()
  for p in "${pkgs[@]}"; do
    ver=$(apt_private apt-cache "$suite" show "$p" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
    f=$(ls "$debs/${p}_"*.deb 2>/dev/null | head -1 || true)
    if [ -z "$f" ] || [ "$(dpkg-deb -f "$f" Version)" != "$ver" ]; then
      rm -f "$debs/${p}_"*.deb
      log "$suite: downloading $p $ver"
      (cd "$debs" && apt_private apt-get "$suite" -qq download "$p" >&2 2>/dev/null)
      f=$(ls "$debs/${p}_"*.deb | head -1)
    fi
    list+=("$f")
  done
  printf '%s\n' "${list[@]}" > "$CACHE/$suite/debs.list"
}

# Unpacks the .debs into $CACHE/<suite>/root and re-points absolute symlinks (build, source)
# into that tree, so the guest's BCC compiles against this kernel's own headers.
unpack_suite() {
  local suite=$1
  local root=$CACHE/$suite/root stamp=$CACHE/$suite/root.stamp
  if [ -f "$stamp" ] && cmp -s "$stamp" "$CACHE/$suite/debs.list"; then
    return 0
  fi
  rm -rf "$root"; mkdir -p "$root"
  local f
  while read -r f; do
    log "$suite: dpkg -x $(basename "$f")"
    dpkg -x "$f" "$root"
  done < "$CACHE/$suite/debs.list"
  local link target
  while IFS= read -r -d '' link; do
    target=$(readlink "$link")
    if [ -e "$root$target" ] || [ -L "$root$target" ]; then
      ln -sfn "$root$target" "$link"
    fi
  done < <(find "$root" -type l -lname '/*' -print0)
  cp "$CACHE/$suite/debs.list" "$stamp"
}

# ---------------------------------------------------------------------------- run
collect() {
  local name=$1 out=$2 seconds=$3
  "$REPO/.venv/bin/python" "$HERE/matrix.py" collect --name "$name" --out "$out" \
    --seconds "$seconds" --results "$RESULTS"
}

boot_suite() {
  local suite=$1
  local root=$CACHE/$suite/root out=$CACHE/$suite/out
  local kimg moddir rel
  kimg=$(ls "$root"/boot/vmlinuz-* | head -1)
  rel=${kimg##*/vmlinuz-}
  moddir=$(ls -d "$root"/lib/modules/"$rel" "$root"/usr/lib/modules/"$rel" 2>/dev/null | head -1 || true)
  rm -rf "$out"; mkdir -p "$out"
  # only the --rwdir is shared writable with the guest: the guest script runs from there
  cp "$HERE/guest-run.sh" "$out/"
  # the guest does not inherit this environment: a KMATRIX_PYTEST selection goes in a file
  [ -z "${KMATRIX_PYTEST:-}" ] || printf '%s\n' "$KMATRIX_PYTEST" > "$out/pytest-selection"
  log "$suite: booting $rel (TCG, 2 CPUs, 1 GiB)"
  local t0=$SECONDS
  # vng runs virtme-run through the shell (venv bin on PATH); its exit status means nothing
  # (255 whatever the guest did): the guest writes its results and a DONE marker into $out.
  # timeout puts itself and the guest in a process group of their own; its pid is recorded, so
  # stop_children reaches the guest even when this boot's subshell was signalled too (a signal
  # to the whole job) and died before the main script looked for its descendants
  PATH="$VENV/bin:$REPO/.venv/bin:$PATH" timeout "$GUEST_TIMEOUT" "$VNG" --run "$kimg" \
      --disable-kvm --force-9p --memory 1G --cpus 2 -v --rwdir "$out" \
      --exec "sh $out/guest-run.sh $out $REPO $moddir" \
      > "$CACHE/$suite/boot.log" 2>&1 < /dev/null &
  local guest=$!
  echo "$guest" > "$GUESTS/$suite"
  wait "$guest" || true
  rm -f "$GUESTS/$suite"
  local took=$((SECONDS - t0))
  log "$suite: guest finished after ${took}s (console: $CACHE/$suite/boot.log)"
  if [ ! -f "$out/DONE" ]; then
    log "$suite: guest wrote no DONE marker"
    tail -n 30 "$CACHE/$suite/boot.log" >&2
    return 1
  fi
  collect "$suite" "$out" "$took"
}

run_host() {
  local out=$CACHE/host/out
  rm -rf "$out"; mkdir -p "$out"
  log "host: $(uname -r)"
  local t0=$SECONDS
  PATH="$REPO/.venv/bin:$PATH" sh "$HERE/guest-run.sh" "$out" "$REPO" "" || true
  [ -f "$out/DONE" ] || { log "host: no DONE marker"; return 1; }
  collect host "$out" $((SECONDS - t0))
}

run_one() {
  case $1 in
    host) run_host ;;
    *) boot_suite "$1" ;;
  esac
}

main() {
  local t0=$SECONDS rc=0 s ready=()
  case " ${SUITES[*]} " in *" bullseye "*|*" bookworm "*|*" trixie "*) ensure_tools ;; esac
  # downloads and unpacking first, one suite at a time (network, disk)
  for s in "${SUITES[@]}"; do
    case $s in
      host) ready+=("$s") ;;
      bullseye|bookworm|trixie)
        if fetch_suite "$s" && unpack_suite "$s"; then ready+=("$s"); else rc=1; fi ;;
      *) log "unknown suite $s"; rc=1 ;;
    esac
  done
  # then the boots, JOBS at a time
  local running=0
  for s in "${ready[@]}"; do
    if [ "$running" -ge "$JOBS" ]; then
      wait -n || rc=1
      running=$((running - 1))
    fi
    (run_one "$s" || exit 1) &
    running=$((running + 1))
  done
  while [ "$running" -gt 0 ]; do
    wait -n || rc=1
    running=$((running - 1))
  done
  "$REPO/.venv/bin/python" "$HERE/matrix.py" render --results "$RESULTS" --doc "$REPO/docs/platforms.md" \
    --summary "$REPO/README.md"
  "$REPO/.venv/bin/python" "$HERE/matrix.py" verdict --results "$RESULTS" "${SUITES[@]}" || rc=1
  log "done in $((SECONDS - t0))s (exit $rc)"
  return $rc
}

main
