#!/bin/sh
# Idempotent provisioning of a Debian/Ubuntu machine for ebpf-edge-agent (run as root).
#
#   1. distribution packages: BCC (python3-bpfcc), venv, kernel headers, lab tools
#   2. tracefs and debugfs mounted (BCC finds tracepoints there)
#   3. a kernel header tree visible to BCC at /lib/modules/$(uname -r)/build
#   4. .venv/ with the project installed and the distribution's bcc importable
#
# A second run changes nothing and takes about a second.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv"
SYS_PYTHON=${SYS_PYTHON:-/usr/bin/python3}
KREL=$(uname -r)
say() { printf 'dev-setup: %s\n' "$*"; }
die() { printf 'dev-setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (BPF, tracefs mounts and apt need it); try: sudo make dev-setup"
command -v apt-get >/dev/null 2>&1 || die "apt-get not found: only Debian and Ubuntu are provisioned automatically (see docs/platforms.md)"

# --- 1. packages -----------------------------------------------------------
ARCH=$(dpkg --print-architecture)
# python3-bpfcc: BCC from the distribution. The PyPI package called "bcc" is unrelated: never use it.
# iproute2 (ip, ss, tc, nstat) and iptables are the test lab's tools and witnesses;
# prometheus (server + promtool) is the real scraper the end-to-end tests use; stress-ng is the
# load the robustness check runs beside the suite (tests must hold on a busy, shared machine);
# iputils-ping is the experiment relay's witness (ping RTT across the relay, tests/experiment);
# tmux is the pseudo-terminal the `top` test drives (send-keys, capture-pane).
PKGS="python3-bpfcc python3-venv iproute2 iptables ca-certificates prometheus stress-ng iputils-ping tmux"
# make bench only (DEV_SETUP_BENCH=1): iperf3 (workload), bpftrace (the per-event tracer it
# is compared with, and a peer), bcc's and libbpf-tools' runqlat (peers, bench.peers); kept out
# of the test provisioning, bpftrace pulls in libclang.
[ "${DEV_SETUP_BENCH:-0}" = 1 ] && PKGS="$PKGS iperf3 bpftrace bpfcc-tools libbpf-tools"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done

# Headers: the running kernel's own package if the distribution has it, else (see step 3) the
# distribution's generic headers.
HDR_PKG=""
if [ ! -e "/lib/modules/$KREL/build/include" ]; then
    if dpkg-query -W -f='${Status}' "linux-headers-$KREL" 2>/dev/null | grep -q "install ok installed"; then
        :
    elif ls -d /usr/src/linux-headers-*-"$ARCH" >/dev/null 2>&1; then
        :
    else
        HDR_PKG=auto
    fi
fi

if [ -n "$missing" ] || [ -n "$HDR_PKG" ]; then
    say "installing:$missing ${HDR_PKG:+(kernel headers)}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    if [ -n "$missing" ]; then
        # shellcheck disable=SC2086
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
        # the tests start their own Prometheus on loopback; don't leave the packaged one running
        case " $missing " in *" prometheus "*)
            if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi ;;
        esac
    fi
    if [ -n "$HDR_PKG" ]; then
        if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
            apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "linux-headers-$KREL" >/dev/null
        else
            say "no linux-headers-$KREL in the archive; installing the generic linux-headers-$ARCH"
            apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "linux-headers-$ARCH" >/dev/null
        fi
    fi
fi

# --- 2. tracefs / debugfs ----------------------------------------------------
mounted() { grep -q " $1 $2 " /proc/self/mounts; }
if ! mounted /sys/kernel/tracing tracefs && [ ! -d /sys/kernel/tracing/events ]; then
    mount -t tracefs nodev /sys/kernel/tracing && say "mounted tracefs at /sys/kernel/tracing"
fi
if ! mounted /sys/kernel/debug debugfs; then
    mount -t debugfs nodev /sys/kernel/debug 2>/dev/null && say "mounted debugfs at /sys/kernel/debug" || true
fi

# --- 3. header tree for BCC ----------------------------------------------------
# BCC compiles every program with clang against /lib/modules/$(uname -r)/build (and /source).
# When the running kernel has no header package (custom or cloud kernels), we point those links at
# the distribution's generic headers. This is safe ONLY because no probe in bpf/ dereferences a
# kernel struct: every field is read from tracepoint arguments, whose layout BCC takes from the
# running kernel's tracefs "format" files, not from these headers. Do not add struct reads.
MODDIR="/lib/modules/$KREL"
if [ ! -e "$MODDIR/build/include" ]; then
    BUILD=$(ls -d /usr/src/linux-headers-*-"$ARCH" 2>/dev/null | sort -V | tail -n 1)
    [ -n "$BUILD" ] || die "no kernel headers found under /usr/src and none installable"
    COMMON=$(printf '%s' "$BUILD" | sed "s/-$ARCH\$/-common/")
    mkdir -p "$MODDIR"
    ln -sfn "$BUILD" "$MODDIR/build"
    [ -d "$COMMON" ] && ln -sfn "$COMMON" "$MODDIR/source"
    say "kernel $KREL has no headers of its own: BCC will use $(basename "$BUILD") (tracepoint-only probes)"
fi

# --- 4. virtualenv -----------------------------------------------------------------
BCC_DIR=$("$SYS_PYTHON" -c 'import bcc, os; print(os.path.dirname(bcc.__file__))' 2>/dev/null) \
    || die "$SYS_PYTHON cannot import bcc: is python3-bpfcc installed?"
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$SYS_PYTHON" -m venv "$VENV"
fi
# Make only the distribution's bcc importable (no --system-site-packages: that would leak ~27
# Debian packages into the venv and shadow the pinned versions).
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/bcc-shim"
ln -sfn "$BCC_DIR" "$VENV/bcc-shim/bcc"
echo "$VENV/bcc-shim" > "$SITE/distro-bcc.pth"

STAMP="$VENV/.installed"
WANT=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    say "installing the project into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
    echo "$WANT" > "$STAMP"
fi
# make experiment only (DEV_SETUP_EXPERIMENT=1): the optional extra "experiment" (matplotlib)
if [ "${DEV_SETUP_EXPERIMENT:-0}" = 1 ] && [ "$(cat "$VENV/.installed-experiment" 2>/dev/null)" != "$WANT" ]; then
    say "installing the extra 'experiment' into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test,experiment]"
    echo "$WANT" > "$VENV/.installed-experiment"
fi
"$VENV/bin/python" -c 'import bcc, agent' || die "the venv cannot import bcc and agent"
say "ready ($VENV)"
