#!/bin/sh
# Runs inside a kernel-matrix guest (and, with MODDIR empty, on the host):
#   guest-run.sh OUT REPO MODDIR
# OUT: the shared --rwdir (results, exit codes, DONE marker); REPO: the checkout (read-only in
# the guest); MODDIR: the unpacked lib/modules/<release> of the booted kernel.
# Writes OUT/{env.txt,check-kernel.json,check-kernel.rc,smoke-test.json,smoke-test.rc,
# pytest.xml,pytest.log,pytest.rc,DONE} and, where the live pod-cgroup test ran, cgroup-live.json.
out=$1 repo=$2 moddir=$3
rel=$(uname -r)
export PYTHONDONTWRITEBYTECODE=1 PATH="$repo/.venv/bin:$PATH"
env_txt=$out/env.txt
: > "$env_txt"
note() { echo "$*" >> "$env_txt"; }
t0=$(date +%s)
lap() { note "t_$1=$(( $(date +%s) - t0 ))"; }
note "release=$rel"

# tracefs / debugfs (BCC finds tracepoints there)
[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>>"$env_txt"
grep -q ' /sys/kernel/debug debugfs ' /proc/self/mounts || mount -t debugfs nodev /sys/kernel/debug 2>>"$env_txt"

if [ -n "$moddir" ]; then
    # BCC compiles against /lib/modules/$(uname -r)/build. virtme-ng already mounts a tmpfs on the
    # guest's /lib/modules holding a link to the unpacked tree (the host's /lib/modules is not
    # touched); make sure of it, so BCC can never fall back to headers of another kernel.
    want=$(readlink -f "$moddir/build")
    if [ "$(readlink -f "/lib/modules/$rel/build")" != "$want" ]; then
        note "linking /lib/modules/$rel -> $moddir on a guest-only tmpfs"
        mount -n -t tmpfs none /lib/modules && ln -s "$moddir" "/lib/modules/$rel"
    fi
    got=$(readlink -f "/lib/modules/$rel/build")
    note "build=$got"
    if [ "$got" != "$want" ] || [ ! -f "$got/include/generated/utsrelease.h" ]; then
        note "ERROR: no matching header tree for $rel"
    fi
    # A pure cgroup2 for tests/e2e/test_pod_cgroup_live.py: virtme-ng's init mounts it at
    # /sys/fs/cgroup (mounted here if it did not). The cpu and memory controllers are enabled at
    # its root by that test alone, for its own run, because KMATRIX_ROOT_CONTROLLERS says this
    # hierarchy is a throwaway guest's (the other tests run as before, without them).
    cg=/sys/fs/cgroup
    grep -q " $cg cgroup2 " /proc/self/mounts || mount -n -t cgroup2 none "$cg" 2>>"$env_txt"
    note "cgroup2_controllers=$(cat "$cg/cgroup.controllers" 2>/dev/null)"
    export KMATRIX_ROOT_CONTROLLERS=1
    # what the network lab needs; on-demand loading would find most of them too, this records it
    for m in veth sch_tbf nf_tables nft_compat xt_statistic xt_comment ip_tables \
             iptable_filter ip6_tables; do
        modprobe "$m" 2>>"$env_txt" && note "modprobe $m: ok" || note "modprobe $m: failed"
    done
fi
note "build_utsrelease=$(sed -n 's/.*UTS_RELEASE "\(.*\)"/\1/p' "/lib/modules/$rel/build/include/generated/utsrelease.h" 2>/dev/null)"
note "memlock=$(ulimit -l)"

lap setup
cd "$repo" || exit 1
ebpf-edge-agent check-kernel --json > "$out/check-kernel.json" 2> "$out/check-kernel.err"
echo $? > "$out/check-kernel.rc"
lap check_kernel
ebpf-edge-agent smoke-test --json > "$out/smoke-test.json" 2> "$out/smoke-test.err"
echo $? > "$out/smoke-test.rc"
lap smoke_test

# The real-kernel suite minus what exclude.txt leaves out here (KMATRIX_PYTEST overrides all).
here=$(dirname "$0")
[ -f "$here/exclude.txt" ] || here=$repo/scripts/kernel-matrix
if [ -n "$moddir" ]; then scope=guest; else scope=host; fi
desel=$(awk -v s="$scope" '($1 == "all" || $1 == s) && $2 ~ /^tests\// {printf "--deselect %s ", $2}' \
        "$here/exclude.txt")
# (in a guest, run.sh passes KMATRIX_PYTEST in OUT/pytest-selection: vng passes no environment)
if [ -z "${KMATRIX_PYTEST:-}" ] && [ -f "$out/pytest-selection" ]; then
    KMATRIX_PYTEST=$(cat "$out/pytest-selection")
fi
sel=${KMATRIX_PYTEST:-"tests/bpf tests/e2e/test_pod_cgroup_live.py $desel"}
note "pytest_selection=$sel"
# shellcheck disable=SC2086
KMATRIX_OUT=$out python -m pytest -q -ra -p no:cacheprovider -p no:hypothesispytest --durations=0 --timeout 240 --junitxml="$out/pytest.xml" $sel \
    > "$out/pytest.log" 2>&1
echo $? > "$out/pytest.rc"
lap pytest
echo done > "$out/DONE"
sync
