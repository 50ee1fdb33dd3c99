#!/bin/bash
# User-space instructions per keep-alive request in the worker of one tree (callgrind: deterministic,
# where the shared box moves a CPU-second figure by +-10 % a round). A kept bench directory gives the
# config, certificates and backend (fastterm bench --scenario keepalive --peers none --keep):
#
#   bench/callgrind.sh TREE DIR OUT [SECONDS]     # TREE: a built checkout (its .venv), e.g. /work/base
#   callgrind_annotate OUT.cg.PID.1               # the worker's profile, per function
#
# wrk -c50 (1 KiB) runs on; instrumentation is on for SECONDS once the 50 handshakes are done, and
# the total is divided by the requests the admin counters saw meanwhile (OUT.sum).
set -u
TREE=$1 D=$2 OUT=$3 SECS=${4:-10}
ADMIN=$(grep '^admin' "$D/fastterm.toml" | cut -d'"' -f2)
PORT=$(grep 'listen = ' "$D/fastterm.toml" | sed -n 1p | sed 's/.*:\([0-9]*\)".*/\1/')
reqs() { curl -s "http://$ADMIN/metrics" | grep -E '^fastterm_requests_total\{protocol="http/1.1"' | awk '{print $2}'; }
hs() { curl -s "http://$ADMIN/metrics" | grep -E '^fastterm_handshakes_total' | awk '{s+=$2} END {print s}'; }
rm -f "$OUT".cg*
taskset -c 1 nginx -p "$D" -c "$D/backend.conf" -e "$D/backend.error.log" &
BACKEND=$!
cd "$TREE"
PYTHONPATH=$TREE taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --trace-children=yes --callgrind-out-file="$OUT.cg.%p" \
    "$TREE/.venv/bin/python" -m fastterm run -c "$D/fastterm.toml" > "$OUT.log" 2>&1 &
VG=$!
trap 'kill -QUIT $VG; kill $BACKEND 2>/dev/null; wait $VG $BACKEND 2>/dev/null' EXIT
for i in $(seq 180); do [ -n "$(reqs)" ] && break; sleep 1; done
sleep 2
W=$(pgrep -P $VG | head -1)
taskset -c 1 wrk -t1 -c50 --timeout 60s -d$((SECS + 12))s -H "Host: localhost" "https://127.0.0.1:$PORT/1k" > "$OUT.wrk" &
WRK=$!
sleep 6   # the 50 handshakes, and the first requests, before the measured window
callgrind_control -i on $W > /dev/null
B=$(reqs); HB=$(hs)
sleep "$SECS"
A=$(reqs); HA=$(hs)
callgrind_control -i off $W > /dev/null
callgrind_control -d $W > /dev/null
wait $WRK
sleep 1
N=$(python3 -c "print(int(float('$A')-float('$B')))")
F=$(ls -t "$OUT".cg.$W* | head -1)
TOT=$(callgrind_annotate "$F" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",","",$1); print $1}')
echo "handshakes $((HA - HB)) requests $N Ir $TOT per-request $((TOT / N)) file $F" | tee "$OUT.sum"
