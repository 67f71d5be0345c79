#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Copyright (C) 2026 The nbdcpy authors
# A/B of copier variants with the NBD servers either in the copier's own
# scheduling group (started from this script, like ../shared/bench/run.sh)
# or each in a group of its own (started with setsid: another session, as a
# service or a server started from another shell would be).  With
# autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled = 1) or a
# cgroup CPU controller the two rank copiers differently (BENCHMARKS.md).
#
#   bench/groups-ab.sh WORKLOAD GROUPS ROUNDS 'label=command [args]' ...
#   bench/groups-ab.sh W8 own 10 "def=build/nbdcpy" "c1=build/nbdcpy -C 1" "ref=nbdcopy"
#
# WORKLOAD: W2 (nbdkit pattern -> nbdkit null over unix sockets) or W8 (the
# same over TCP to 127.0.0.1); SIZE (default 4G).  GROUPS: same or own.
# Variants alternate run by run; the servers stay up for all runs.  Prints
# medians (and quartiles) of the copier's CPU seconds from rusage (user +
# sys; excludes time stolen by the hypervisor), of perf's task-clock when
# perf is installed (includes it), and of the wall time.
set -uo pipefail
[ $# -ge 4 ] || { sed -n 2,17p "$0"; exit 2; }
wl=$1 groups=$2 rounds=$3
shift 3
size=${SIZE:-4G}
dir=$(mktemp -d /tmp/nbdcpy-groups.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for f in "$dir"/*.pid; do [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null; done
}
trap cleanup EXIT
trap "exit 130" INT TERM

# start NAME PLUGIN: a server on a unix socket (W2) or TCP port (W8).
port=$((21000 + RANDOM % 2000))
start() {
    local name=$1 plugin=$2 where
    if [ "$wl" = W2 ]; then
        where=(-U "$dir/$name.sock")
        uri="nbd+unix:///?socket=$dir/$name.sock"
    else
        port=$((port + 1))
        where=(-i 127.0.0.1 -p "$port")
        uri="nbd://127.0.0.1:$port/"
    fi
    if [ "$groups" = own ]; then
        setsid nbdkit -P "$dir/$name.pid" "${where[@]}" "$plugin" "$size" </dev/null >/dev/null 2>&1
    else
        nbdkit -f --exit-with-parent "${where[@]}" "$plugin" "$size" </dev/null >/dev/null 2>&1 &
        pids+=($!)
    fi
}
case $wl in W2 | W8) ;; *) echo "WORKLOAD: W2 or W8" >&2; exit 2 ;; esac
case $groups in same | own) ;; *) echo "GROUPS: same or own" >&2; exit 2 ;; esac
start src pattern; src=$uri
start dst null; dst=$uri
for _ in 1 2 3 4 5 6 7 8 9 10; do
    nbdinfo --size "$src" >/dev/null 2>&1 && nbdinfo --size "$dst" >/dev/null 2>&1 && break
    sleep 0.3
done

perf=()
command -v perf >/dev/null && perf=(perf stat -e task-clock -o "$dir/perf.txt" --)
for ((r = 0; r < rounds; r++)); do
    for v in "$@"; do
        l=${v%%=*}
        read -ra cmd <<<"${v#*=}"
        start_t=$EPOCHREALTIME
        /usr/bin/time -o "$dir/time.txt" -f "%U %S" "${perf[@]}" "${cmd[@]}" "$src" "$dst" \
            >/dev/null 2>"$dir/err" || { echo "($l failed:)"; cat "$dir/err"; }
        end_t=$EPOCHREALTIME
        tc=0
        [ ${#perf[@]} -gt 0 ] && tc=$(awk '/task-clock/ { gsub(",", "", $1); print $1 / 1000 }' "$dir/perf.txt")
        echo "$(awk '{ print $1 + $2 }' "$dir/time.txt") $tc $(awk "BEGIN { print $end_t - $start_t }")" >>"$dir/$l"
    done
done
for v in "$@"; do
    python3 - "$dir/${v%%=*}" "${v%%=*}" <<'PY'
import statistics as st, sys
rows = [list(map(float, x.split())) for x in open(sys.argv[1])]
def f(i):
    v = sorted(r[i] for r in rows)
    q = st.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
    return f"{st.median(v):.2f} ({q[0]:.2f}-{q[2]:.2f})"
print(f"{sys.argv[2]:>8}: CPU s {f(0)}  task-clock s {f(1)}  wall s {f(2)}  runs {len(rows)}")
PY
done
