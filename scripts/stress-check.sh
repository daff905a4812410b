#!/bin/bash
# The robustness check of issue 11: in a clean clone of this repository, `make test` N times in a
# row (default 5) while `stress-ng --cpu 1` keeps a CPU busy beside it, then each test that once
# assumed an idle machine COUNT times alone (default 20, pytest-repeat) under the same load.
# About 45 minutes. Prints one line per run; exit status 1 if any failed. Stops stress-ng (and
# its own runs) when interrupted.
#
#   scripts/stress-check.sh [RUNS] [COUNT]
set -u
RUNS=${1:-5}
COUNT=${2:-20}
SRC=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/eea-stress-XXXXXX)
command -v stress-ng >/dev/null || { echo "stress-ng missing: run make dev-setup" >&2; exit 1; }
git clone -q "$SRC" "$WORK/repo" && cd "$WORK/repo" || exit 1
echo "stress-check of $(git log --oneline -1) in $WORK/repo"
./scripts/dev-setup.sh > "$WORK/dev-setup.log" 2>&1 || { echo "dev-setup failed: $WORK/dev-setup.log" >&2; exit 1; }
stress-ng --cpu 1 --timeout 6h >/dev/null 2>&1 &
SPID=$!
trap 'kill $SPID 2>/dev/null' EXIT
trap 'exit 1' INT TERM
rc=0
for i in $(seq "$RUNS"); do
  t0=$SECONDS
  if CI=true make test > "$WORK/make-$i.log" 2>&1; then r=pass; else r=FAIL; rc=1; fi
  echo "make test run $i: $r in $((SECONDS - t0)) s; $(grep -E '^=+ .*(passed|failed)' "$WORK/make-$i.log" | tail -1)"
done
for t in tests/bpf/test_lab.py::test_runqlat_rises_under_cpu_hogs_and_matches_schedstat \
         tests/e2e/test_agent_pods.py::test_standalone_reports_per_cgroup_cpu_from_the_real_hierarchy \
         tests/e2e/test_agent_pods.py::test_fake_kubernetes_api_names_pods_and_tenants \
         tests/e2e/test_agent_run.py::test_prometheus_scrapes_and_extender_gets_the_same_numbers; do
  t0=$SECONDS
  log="$WORK/count-${t##*::}.log"
  .venv/bin/python -m pytest -q --count "$COUNT" "$t" > "$log" 2>&1 || rc=1
  echo "x$COUNT $t: $(tail -1 "$log") ($((SECONDS - t0)) s)"
done
echo "logs in $WORK"
exit $rc
