#!/usr/bin/env bash
# Instructions per confirmed membership call of `hubmesh bench churn`, counted with valgrind's callgrind on all
# three nodes of a cluster (benches/README.md, "Issue 17: churn, the owner's path").
#
# Usage: benches/callgrind_churn.sh BIN OUTDIR [BASEPORT]
#   BIN      a release build of hubmesh (build with CARGO_PROFILE_RELEASE_DEBUG=line-tables-only to read the profile)
#   OUTDIR   where the callgrind files, node logs and the bench's JSON line go (emptied first)
#
# Three `hubmesh node` processes run under callgrind (about 50 times slower), so the load is small: 300 connections
# moving between 60 groups at 600 joins/s (and as many leaves) for 16 s. Once the connections are up, the counters of
# every node are zeroed, 8 s later dumped; the confirmed calls of that window are the growth of
# `hubmesh_invocations_total` (joins and leaves: the load tool calls nothing else meanwhile). Everything listens
# on 127.0.0.1 only; every wait is bounded.
set -u
BIN=$1; OUT=$2; BP=${3:-19000}
rm -rf "$OUT"; mkdir -p "$OUT"
SECRET=callgrind-churn-$$-0123456789abcdef0123456789
for i in 1 2 3; do
  HUBMESH_CLUSTER__SECRET=$SECRET HUBMESH_LIMITS__NEGOTIATES_PER_SECOND=0 \
    valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.%p" "$BIN" node --name node-$i \
    --http 127.0.0.1:$((BP+i)) --cluster-id callgrind --gossip 127.0.0.1:$((BP+2000+i)) --link 127.0.0.1:$((BP+2100+i)) \
    --seed 127.0.0.1:$((BP+2001)) --seed 127.0.0.1:$((BP+2002)) --seed 127.0.0.1:$((BP+2003)) > "$OUT/node-$i.log" 2>&1 &
  echo $! > "$OUT/node-$i.pid"
done
trap 'for i in 1 2 3; do kill $(cat "$OUT/node-$i.pid") 2>/dev/null; done' EXIT
for _ in $(seq 1 180); do [ "$(cat "$OUT"/node-*.log | grep -c 'Now listening')" -ge 3 ] && break; sleep 1; done
sleep 8
URLS="--url http://127.0.0.1:$((BP+1)) --url http://127.0.0.1:$((BP+2)) --url http://127.0.0.1:$((BP+3))"
# shellcheck disable=SC2086
timeout 300 "$BIN" bench churn --clients 300 --groups 60 --rate 600 --seconds 16 --timeout 60 $URLS \
  > "$OUT/bench.json" 2> "$OUT/bench.err" &
BENCH=$!
for _ in $(seq 1 600); do
  n=$(ss -Htn state established "( sport >= :$((BP+1)) and sport <= :$((BP+3)) )" | wc -l)
  [ "$n" -ge 300 ] && break; sleep 0.2
done
sleep 3
calls() {
  for i in 1 2 3; do
    curl -s --max-time 10 http://127.0.0.1:$((BP+i))/metrics | awk '/^hubmesh_invocations_total/ {s+=$2} END {print s+0}'
  done | awk '{s+=$1} END {print s}'
}
before=$(calls)
for i in 1 2 3; do callgrind_control -z "$(cat "$OUT/node-$i.pid")" >/dev/null; done
sleep 8
for i in 1 2 3; do callgrind_control -d "$(cat "$OUT/node-$i.pid")" >/dev/null; done
after=$(calls)
wait $BENCH
total=0
for f in "$OUT"/cg.*.*; do
  ir=$(callgrind_annotate "$f" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
  total=$((total + ir))
done
echo "confirmed calls $((after - before)), instructions $total, per call $((total / (after - before)))"
tail -4 "$OUT/bench.err"
