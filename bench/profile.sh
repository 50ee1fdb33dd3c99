#!/bin/bash
# The measurements of bench/PROFILE.md: fastterm's worker pinned to CPU 0 under a `fastterm
# bench`-like load (wrk -c50 keep-alive 1 KiB, wrk -c4 1 MiB downloads or 1 MiB uploads, or 8
# `openssl s_time -new` on the ECDSA port) from CPU 1, then `perf record -g` on the worker and `perf stat` of its syscalls, with the
# requests and handshakes the admin counters saw meanwhile.
#
#   fastterm bench --scenario keepalive --peers none --rounds 1 --duration 1 --keep   # prints DIR
#   [CONNS=50] [PEER=nginx] bench/profile.sh DIR keepalive|bulk|upload|handshake|resumed-id|resumed-ticket OUT [SECONDS]
#   perf report -i OUT.data --no-children --sort dso -g none
#
# CALLGRAPH="--call-graph dwarf,16384" unwinds libssl and libcrypto (no frame pointers) for --children.
# resumed-id / resumed-ticket: 8 of the bench's Python resume clients (TLS 1.2 session IDs, TLS 1.3
# tickets) on the ECDSA port. PEER=nginx profiles the kept nginx.conf's worker instead (its
# handshake counts from nginx-hs.log are not collected: compare task-clock per connection).
#
# DIR: the kept working directory (fastterm.toml, backend.conf, demo certificates);
# OUT.data, OUT.stat, OUT.load: the profile, the syscall counts, the load generator's output;
# bulk and upload also count the backend's (nginx's) syscalls, in OUT.backend.stat.
set -eu
D=$1 MODE=$2 OUT=$3 SECS=${4:-8} CONNS=${CONNS:-50}   # wrk -c
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
port() { grep 'listen = ' "$D/fastterm.toml" | sed -n "$1p" | sed 's/.*:\([0-9]*\)".*/\1/'; }
ADMIN=$(grep '^admin' "$D/fastterm.toml" | cut -d'"' -f2)
PEER=${PEER:-fastterm}
nport() { grep -o 'listen 127.0.0.1:[0-9]*' "$D/nginx.conf" | sed -n "$1p" | cut -d: -f2; }
counts() { [ "$PEER" = nginx ] && return; curl -s "http://$ADMIN/metrics" | grep -E '^fastterm_(requests_total\{protocol="http/1.1"|handshakes_total\{kind="full"|bytes_total)' | sed 's/^fastterm_//' | paste -sd' '; }

taskset -c 1 nginx -p "$D" -c "$D/backend.conf" -e "$D/backend.error.log" &
BACKEND=$!
if [ "$PEER" = nginx ]; then
    taskset -c 0 nginx -p "$D" -c "$D/nginx.conf" -e "$D/nginx.error.log" &
    port() { nport "$1"; }
else
    PYTHONPATH=$ROOT taskset -c 0 "$PY" -m fastterm run -c "$D/fastterm.toml" > "$D/profile-fastterm.log" 2>&1 &
fi
MASTER=$!
trap 'kill -QUIT $MASTER $BACKEND 2>/dev/null; wait $MASTER $BACKEND 2>/dev/null' EXIT
sleep 3
WORKER=$(pgrep -P $MASTER | head -1)
LOADS=()
if [ "$MODE" = keepalive ]; then
    taskset -c 1 wrk -t1 -c$CONNS -d$((2 * SECS + 6))s -H "Host: localhost" "https://127.0.0.1:$(port 1)/1k" > "$OUT.load" &
    LOADS+=($!)
elif [ "$MODE" = bulk ] || [ "$MODE" = upload ]; then
    SCRIPT=()
    if [ "$MODE" = upload ]; then
        printf 'wrk.method = "POST"\nwrk.body = string.rep("u", 1048576)\n' > "$OUT.lua"
        SCRIPT=(-s "$OUT.lua")
    fi
    taskset -c 1 wrk -t1 -c4 -d$((2 * SECS + 6))s "${SCRIPT[@]}" -H "Host: localhost" \
        "https://127.0.0.1:$(port 1)/$([ "$MODE" = bulk ] && echo 1m || echo upload)" > "$OUT.load" &
    LOADS+=($!)
elif [ "$MODE" = resumed-id ] || [ "$MODE" = resumed-ticket ]; then
    for _ in 1 2 3 4 5 6 7 8; do
        PYTHONPATH=$ROOT taskset -c 1 "$PY" -m fastterm.bench client resume 127.0.0.1 "$(port 2)" "${MODE#resumed-}" \
            $((2 * SECS + 6)) /1k >> "$OUT.load" 2>&1 &
        LOADS+=($!)
    done
else
    for _ in 1 2 3 4 5 6 7 8; do
        taskset -c 1 openssl s_time -connect "127.0.0.1:$(port 2)" -new -time $((2 * SECS + 6)) -www /1k >> "$OUT.load" 2>&1 &
        LOADS+=($!)
    done
fi
sleep 2
perf record -F 4999 ${CALLGRAPH:--g} -p "$WORKER" -o "$OUT.data" -- sleep "$SECS" 2> "$OUT.perf.log"
BEFORE=$(counts)
SYSCALLS=(-e raw_syscalls:sys_enter)   # a few named ones: 350 tracepoints take a second to attach
for s in read write epoll_wait epoll_pwait recvfrom getpid accept4 close shutdown setsockopt epoll_ctl; do
    SYSCALLS+=(-e "syscalls:sys_enter_$s")
done
if [ "$MODE" = bulk ] || [ "$MODE" = upload ]; then
    perf stat "${SYSCALLS[@]}" -e task-clock -p "$BACKEND" -o "$OUT.backend.stat" -- sleep "$SECS" &
    BSTAT=$!
fi
perf stat "${SYSCALLS[@]}" -e task-clock -p "$WORKER" -o "$OUT.stat" -- sleep "$SECS"
[ -z "${BSTAT:-}" ] || wait "$BSTAT"
AFTER=$(counts)
wait "${LOADS[@]}" || true
# requests and handshakes in the perf stat window (its own set-up adds a little before it)
echo "counters before: $BEFORE after: $AFTER" | tee -a "$OUT.stat"
