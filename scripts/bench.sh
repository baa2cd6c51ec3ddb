#!/usr/bin/env bash
# Runs every benchmark in docs/BENCHMARKS.md in one session and prints one line per figure.
# Needs redis-server and redis-benchmark (make deps). Loopback only; stops by itself.
#   scripts/bench.sh [idle-connections]
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-18000}
export JWT_SECRET=bench-secret
cargo build --release --bins -q
BIN=target/release
DIR=$(mktemp -d)
PIDS=()
declare -A PID_OF
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; for port in 6400 6401; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done; rm -rf "$DIR"; }
trap cleanup EXIT
[ -n "${KEEP_LOGS:-}" ] && trap 'cp "$DIR"/r*.err /tmp/ 2>/dev/null; cleanup' EXIT

router() { # port, extra flags… → starts a router, waits for its listen line
  local port=$1; shift
  "$BIN/presence-router" --host 127.0.0.1 --port "$port" "$@" >"$DIR/r$port.out" 2>"$DIR/r$port.err" &
  PIDS+=($!)
  PID_OF[$port]=$!
  for _ in $(seq 100); do grep -q listening "$DIR/r$port.out" 2>/dev/null && return; sleep 0.05; done
  echo "router $port did not start" >&2; cat "$DIR/r$port.err" >&2; exit 1
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r)"
redis-server redis.conf --port 6400 --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log"
until redis-cli -p 6400 ping >/dev/null 2>&1; do sleep 0.05; done
REDIS=(--redis-host 127.0.0.1 --redis-port 6400)
FAST=(--heartbeat-min-interval-ms 0 --frame-rate 1000000 --frame-burst 1000000 --api-ids-per-second 0)

router 4100                              # embedded
router 4101 "${REDIS[@]}" "${FAST[@]}"   # Redis A
router 4102 "${REDIS[@]}" --dashboard-queue 200000  # Redis B: its dashboard watches 100k users

# Idle RSS, then again after every connection sent one 60 KiB frame (kernel TCP memory beside).
$BIN/presence-load idle --router 127.0.0.1:4100 --router-pid "${PID_OF[4100]}" --connections "$IDLE" --frame-bytes 61440
# Hostile clients, on a fresh embedded router with the default frame budget: 10 flooders of
# each kind for 3 s (reconnecting when closed) while 100 probes heartbeat every 20 ms.
router 4104
for kind in ping fragments text heartbeats; do
  $BIN/presence-load flood --router 127.0.0.1:4104 --router-pid "${PID_OF[4104]}" --kind "$kind" --flooders 10 --probes 100 --seconds 3
done
# The same floods with the per-address budget on for loopback clients (by default loopback is
# a trusted proxy, not budgeted): flooders from one address, then each from its own.
router 4106 --trusted-proxies none
for sources in same distinct; do
  for kind in ping heartbeats; do
    $BIN/presence-load flood --router 127.0.0.1:4106 --router-pid "${PID_OF[4106]}" --kind "$kind" --flooders 10 --probes 100 --seconds 3 --flooder-sources "$sources"
    sleep 10 # the flooders' addresses serve out their 10 s penalty before the next kind
  done
done
# The noisy figures run three times in this session; BENCHMARKS.md quotes their median.
for run in 1 2 3; do
  $BIN/presence-load heartbeats --router 127.0.0.1:4101 --router-pid "${PID_OF[4101]}" --connections 500 --seconds 10 --redis-port 6400
  $BIN/presence-load latency --mobiles 127.0.0.1:4101 --dashboard 127.0.0.1:4102 --users 200 --rate 1000 --seconds 10
  $BIN/presence-load bulk --router 127.0.0.1:4101 --online 1000 --requests 5000
  $BIN/presence-load bulk --router 127.0.0.1:4101 --online 1000 --requests 4000 --scope-oracle
  # PTT audio, 20 ms frames to 100 listeners: on one embedded router, and Redis A → B.
  $BIN/presence-load ptt --talker 127.0.0.1:4100 --listeners-router 127.0.0.1:4100 --listeners 100 --rate 50 --seconds 10
  $BIN/presence-load ptt --talker 127.0.0.1:4101 --listeners-router 127.0.0.1:4102 --listeners 100 --rate 50 --seconds 10
done
# Redis → router relay messages per AUDIO frame, 100 groups spread over routers A and B.
$BIN/presence-load relay-fanin --routers 127.0.0.1:4101,127.0.0.1:4102 --groups 100 --rate 50 --seconds 3
# Real fleets heartbeat every 30 s: 20k heartbeats/s is 600k mobiles' worth.
$BIN/presence-load heartbeats --router 127.0.0.1:4101 --router-pid "${PID_OF[4101]}" --connections 2000 --seconds 10 --rate 20000
$BIN/presence-load silent --redis-port 6400 --other-keys 1000000 --dashboard 127.0.0.1:4102 --users 100000 --ttl 30

# Snapshot: 100k users leased into Redis, then a new router loads them at start.
$BIN/presence-load seed --redis-port 6400 --users 100000 --ttl 3600
router 4103 "${REDIS[@]}"
# …then 200 more dashboards read the snapshot and stay: RSS the router keeps per dashboard.
$BIN/presence-load snapshot --router 127.0.0.1:4103 --users 0 --expect 100000 --repeat 10 \
  --router-pid "${PID_OF[4103]}" --retain-dashboards 200

# Redis hung (SIGSTOP) for 6 s on its own redis-server: 1,200 users heartbeat 1,200/s through
# router 4105 while a talker sends 50 AUDIO frames/s to 20 listeners on the same router,
# which heartbeat every second too. The listeners' longest gap between two frames is what
# a hung store does to PTT.
redis-server redis.conf --port 6401 --dir "$DIR" --daemonize yes --logfile "$DIR/redis-hang.log"
until redis-cli -p 6401 ping >/dev/null 2>&1; do sleep 0.05; done
HANG_PID=$(redis-cli -p 6401 info server | awk -F: '/^process_id/{print $2}' | tr -d '\r')
router 4105 --redis-host 127.0.0.1 --redis-port 6401 "${FAST[@]}"
$BIN/presence-load heartbeats --router 127.0.0.1:4105 --router-pid "${PID_OF[4105]}" --connections 1200 --seconds 14 --rate 1200 &
HEARTBEATS=$!
sleep 2
$BIN/presence-load ptt --talker 127.0.0.1:4105 --listeners-router 127.0.0.1:4105 --listeners 20 --rate 50 --seconds 10 --heartbeat-every-ms 1000 &
TALK=$!
sleep 2
kill -STOP "$HANG_PID"; sleep 6; kill -CONT "$HANG_PID"
wait "$TALK" "$HEARTBEATS"
redis-cli -p 6401 shutdown nosave >/dev/null 2>&1 || true
