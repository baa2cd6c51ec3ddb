#!/usr/bin/env bash
# Runs every benchmark in docs/BENCHMARKS.md in one session and prints one line per figure.
# Needs redis-server and redis-benchmark (make deps). Loopback only; stops by itself.
#   scripts/bench.sh [idle-connections]
#   BENCH_ONLY=cluster scripts/bench.sh   # only "Redis Cluster vs one Redis", both engines
#   BENCH_ONLY=groups scripts/bench.sh    # only "Large groups": counts-only and full dashboards
#   BENCH_ONLY=resume scripts/bench.sh    # only "Dashboards resuming after a router restart"
#   BENCH_ONLY=flood scripts/bench.sh     # only the floods on the per-address budget, in rounds
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-18000}
# Sockets for 100k mobiles: as many open files as allowed (raising the hard limit needs
# CAP_SYS_RESOURCE; without it, the hard limit is what the routers and the load tool get).
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export JWT_SECRET=bench-secret
cargo build --release --bins -q
BIN=target/release
DIR=$(mktemp -d)
PIDS=()
declare -A PID_OF
CLUSTER_PORTS=(6410 6411 6412 6413 6414 6415) # 3 masters, 3 replicas; cluster bus on port + 10000
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  for port in 6400 6401 "${CLUSTER_PORTS[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$DIR"
}
trap cleanup EXIT
# KEEP_LOGS=<dir>: the routers' stderr (r<port>.err) is copied there at the end.
[ -n "${KEEP_LOGS:-}" ] && trap 'mkdir -p "$KEEP_LOGS"; cp "$DIR"/r*.err "$KEEP_LOGS"/ 2>/dev/null; cleanup' EXIT

router() { # port, extra flags… → starts a router (ROUTER_BIN, default this build's), waits for its listen line and /readyz
  local port=$1; shift
  "${ROUTER_BIN:-$BIN/presence-router}" --host 127.0.0.1 --port "$port" "$@" >"$DIR/r$port.out" 2>"$DIR/r$port.err" &
  PIDS+=($!)
  PID_OF[$port]=$!
  for _ in $(seq 100); do grep -q listening "$DIR/r$port.out" 2>/dev/null && break; sleep 0.05; done
  # Ready: its engine connected and subscribed (a cluster router to every shard).
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.05; done
  echo "router $port did not start or turn ready" >&2; cat "$DIR/r$port.err" >&2; exit 1
}
redis_pid() { redis-cli -p "$1" info server | awk -F: '/^process_id/{print $2}' | tr -d '\r'; }

# The dashboard page in headless Chromium (tests/browser.rs, on a redis-server and a router
# of its own): 100k users seeded in 500 groups, then 1,000 changes/s for 30 s from
# `presence-load churn`; the page's own long tasks and frame times, watching, then scrolling.
# DASHBOARD_USERS, DASHBOARD_RATE and DASHBOARD_SECONDS change the scale.
dashboard_page() {
  cargo test --release -q --test browser -- --ignored --nocapture the_dashboard_page_under_load 2>/dev/null \
    | grep '^dashboard page'
}

# The floods with the per-address budget on for loopback clients (by default loopback is a
# trusted proxy, not budgeted), flooders from one address, then each from its own: every
# kind in FLOOD_ROUNDS (default 10) rounds of a 2 s quiet window and a 3 s flood, 10 s
# apart (the flooders' addresses serve out their penalty), the probes' round trips pooled
# per kind of window.
floods_per_address() {
  router 4106 --trusted-proxies none
  for sources in same distinct; do
    for kind in ping fragments text heartbeats; do
      $BIN/presence-load flood --router 127.0.0.1:4106 --router-pid "${PID_OF[4106]}" --kind "$kind" --flooders 10 --probes 100 --seconds 3 --flooder-sources "$sources" --rounds "${FLOOD_ROUNDS:-10}"
      sleep 10 # the penalty served out before the next kind
    done
  done
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r)"
if [ "${BENCH_ONLY:-}" = dashboard ]; then dashboard_page; exit 0; fi
if [ "${BENCH_ONLY:-}" = flood ]; then floods_per_address; exit 0; fi
redis-server redis.conf --port 6400 --dir "$DIR" --daemonize yes --logfile "$DIR/redis.log"
until redis-cli -p 6400 ping >/dev/null 2>&1; do sleep 0.05; done
REDIS=(--redis-host 127.0.0.1 --redis-port 6400)

# One 10k-member group (seeded into a flushed :6400) churning at 1,000 changes/s for 10 s
# (`presence-load churn`, inside `presence-load groups`) on a fresh router, as four
# dashboards see it: by counts, in full coalesced, in full every change, and without
# SUBSCRIBE. Twice: every member changing, interval and window 100 ms; then 1,000 hot
# members changing, 1 s. GROUPS_USERS, GROUPS_RATE, GROUPS_SECONDS change the scale.
large_groups() {
  local users=${GROUPS_USERS:-10000} run
  for run in "$users 100" "1000 1000"; do
    set -- $run
    redis-cli -p 6400 flushall >/dev/null
    $BIN/presence-load seed --redis-port 6400 --users "$users" --groups 1 >/dev/null
    router 4150 "${REDIS[@]}"
    $BIN/presence-load groups --router 127.0.0.1:4150 --redis-port 6400 --users "$users" --churn-users "$1" \
      --rate "${GROUPS_RATE:-1000}" --seconds "${GROUPS_SECONDS:-10}" --interval-ms "$2"
    kill "${PID_OF[4150]}"
    wait "${PID_OF[4150]}" 2>/dev/null || true
  done
  redis-cli -p 6400 flushall >/dev/null
}
if [ "${BENCH_ONLY:-}" = groups ]; then large_groups; exit 0; fi
# Dashboards resuming after their router stops: RESUME_USERS users seeded online (default
# 20k), RESUME_DASHBOARDS dashboards (100) read their snapshot from router A, A stops
# (SIGTERM), RESUME_CHANGES users (1,000) go offline meanwhile; then every dashboard
# reconnects to router B at once with its position, and again without (a full snapshot
# each): bytes, router B's CPU and time to a consistent view, side by side.
resume_bench() {
  local users=${RESUME_USERS:-20000} dashboards=${RESUME_DASHBOARDS:-100} changes=${RESUME_CHANGES:-1000}
  redis-cli -p 6400 flushall >/dev/null
  $BIN/presence-load seed --redis-port 6400 --users "$users" --ttl 3600
  router 4140 "${REDIS[@]}"
  router 4141 "${REDIS[@]}"
  $BIN/presence-load resume --first 127.0.0.1:4140 --first-pid "${PID_OF[4140]}" --second 127.0.0.1:4141 \
    --second-pid "${PID_OF[4141]}" --redis-port 6400 --users "$users" --dashboards "$dashboards" --changes "$changes"
  redis-cli -p 6400 flushall >/dev/null
}
if [ "${BENCH_ONLY:-}" = resume ]; then resume_bench; exit 0; fi

# Redis work per heartbeat at a realistic scale: N mobiles heartbeating every 30 s, their
# phases spread evenly, on routers sharing the one redis-server (flushed before each run,
# fresh routers each run), and on the memory engine; measured over STEADY_WINDOW_SECS once
# every session is connected and one interval has passed. Runs first, while no other router
# uses :6400.
# A router holds what its open-file limit leaves after its reserve (--max-handshakes 1024,
# --fd-reserve 128, --event-streams 64), so N past two routers' worth takes more routers (the line says how many).
# BEFORE_ROUTER=<a presence-router binary>: every Redis run alternates with that build's.
STEADY_SESSIONS=${STEADY_SESSIONS:-10000 100000}
# Seven intervals: a router holding its lease writes a session's deadline three TTLs (180 s)
# ahead, i.e. once every seven heartbeats, so any window of seven intervals holds exactly
# one write per session (a window of one or two would miss most of them).
STEADY_WINDOW_SECS=${STEADY_WINDOW_SECS:-210}
# The fleet comes online at this many sessions a second: what is measured is the steady
# state, not a reconnect storm (on two shared cores a 100k storm can starve the routers).
STEADY_CONNECT_RATE=${STEADY_CONNECT_RATE:-2000}
steady() { # label, engine (redis|memory), sessions, router binary
  local label=$1 engine=$2 n=$3 bin=$4 per_router count i port addrs=() pids=() ports=() flags=()
  per_router=$(($(ulimit -n) - 1024 - 128 - 64 - 100))
  count=$(((n + per_router - 1) / per_router))
  if [ "$engine" = redis ]; then
    ((count >= 2)) || count=2
    flags=("${REDIS[@]}") ports=(--redis-ports 6400)
    # An older build turns keyspace events on (63f4077 does) and they stay on; this one uses none.
    redis-cli -p 6400 flushall >/dev/null
    redis-cli -p 6400 config set notify-keyspace-events "" >/dev/null
  fi
  for i in $(seq "$count"); do
    port=$((4130 + i))
    ROUTER_BIN=$bin router "$port" "${flags[@]}"
    addrs+=("127.0.0.1:$port") pids+=("${PID_OF[$port]}")
  done
  $BIN/presence-load steady --routers "$(IFS=,; echo "${addrs[*]}")" --router-pids "$(IFS=,; echo "${pids[*]}")" \
    "${ports[@]}" --sessions "$n" --interval-secs 30 --window-secs "$STEADY_WINDOW_SECS" --connect-rate "$STEADY_CONNECT_RATE" \
    | sed -u "s/^/$label: /"
  kill "${pids[@]}"
  wait "${pids[@]}" 2>/dev/null || true
  for i in $(seq "$count"); do mv "$DIR/r$((4130 + i)).err" "$DIR/r$((4130 + i))-$label-$n-$round.err"; done
}
if [ -z "${BENCH_ONLY:-}" ] || [ "$BENCH_ONLY" = steady ]; then
  for round in $(seq "${STEADY_ROUNDS:-1}"); do
    # This machine's Redis speed in the same session, for reference.
    echo "redis-benchmark: $(redis-benchmark -p 6400 -t set -P 16 -q -n 2000000 | tr '\r' '\n' | grep '^SET' | tail -1)"
    for n in $STEADY_SESSIONS; do
      builds=(after)
      [ -n "${BEFORE_ROUTER:-}" ] && builds=($( ((round % 2)) && echo before after || echo after before))
      for build in "${builds[@]}"; do
        bin=$BIN/presence-router
        [ "$build" = before ] && bin=$BEFORE_ROUTER
        steady "$build" redis "$n" "$bin"
      done
      steady memory memory "$n" "$BIN/presence-router"
    done
  done
  [ "${BENCH_ONLY:-}" = steady ] && exit 0
fi

# A Redis Cluster of 3 masters and 3 replicas beside it, each node with the same redis.conf.
for port in "${CLUSTER_PORTS[@]}"; do
  mkdir "$DIR/node$port"
  redis-server redis.conf --port "$port" --dir "$DIR/node$port" --daemonize yes --logfile "$DIR/node$port/redis.log" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port $((port + 10000)) \
    --cluster-node-timeout 1000 --cluster-require-full-coverage no --repl-diskless-sync-delay 0 --appendonly no
done
for port in "${CLUSTER_PORTS[@]}"; do until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done; done
redis-cli --cluster create "${CLUSTER_PORTS[@]/#/127.0.0.1:}" --cluster-replicas 1 --cluster-yes >"$DIR/cluster-create.log"
cluster_settled() { # every node: state ok, all slots assigned, all 6 nodes known; every replica linked
  local port info
  for port in "${CLUSTER_PORTS[@]}"; do
    info=$(redis-cli -p "$port" cluster info; redis-cli -p "$port" info replication)
    grep -q cluster_state:ok <<<"$info" && grep -q cluster_slots_assigned:16384 <<<"$info" \
      && grep -q cluster_known_nodes:6 <<<"$info" || return 1
    if grep -q role:slave <<<"$info"; then grep -q master_link_status:up <<<"$info" || return 1; fi
  done
}
for _ in $(seq 200); do cluster_settled && break; sleep 0.1; done
cluster_settled || { echo "the Redis Cluster did not settle" >&2; cat "$DIR/cluster-create.log" >&2; exit 1; }

CLUSTER=(--redis-cluster-nodes "$(IFS=,; echo "${CLUSTER_PORTS[*]/#/127.0.0.1:}")")
FAST=(--heartbeat-min-interval-ms 0 --frame-rate 1000000 --frame-burst 1000000 --api-ids-per-second 0)

router 4100                              # embedded
router 4101 "${REDIS[@]}" "${FAST[@]}"   # Redis A
router 4102 "${REDIS[@]}" --dashboard-queue 200000  # Redis B: its dashboard watches 100k users
router 4111 "${CLUSTER[@]}" "${FAST[@]}" # cluster A, as Redis A
router 4112 "${CLUSTER[@]}" --dashboard-queue 200000  # cluster B, as Redis B
router 4121 "${REDIS[@]}"                # Redis C and D, cluster C and D: the relay fan-in's 4 routers
router 4122 "${REDIS[@]}"
router 4113 "${CLUSTER[@]}"
router 4114 "${CLUSTER[@]}"
declare -A A_OF=([redis]=4101 [cluster]=4111) B_OF=([redis]=4102 [cluster]=4112) FANIN_OF REDIS_PIDS_OF
FANIN_OF[redis]=127.0.0.1:4101,127.0.0.1:4102,127.0.0.1:4121,127.0.0.1:4122
FANIN_OF[cluster]=127.0.0.1:4111,127.0.0.1:4112,127.0.0.1:4113,127.0.0.1:4114
REDIS_PIDS_OF[redis]=$(redis_pid 6400)
REDIS_PIDS_OF[cluster]=$(for port in "${CLUSTER_PORTS[@]}"; do redis_pid "$port"; done | paste -sd,)

# Redis Cluster vs one Redis: the same scenarios on routers A and B of each engine, three
# rounds, the engines' order swapped every round; every line is prefixed with its engine.
# Redis CPU is the redis-server's, or the sum of all six cluster nodes' (replicas included).
compare_engines() {
  local round engine a b
  for round in 1 2 3; do
    for engine in $( ((round % 2)) && echo redis cluster || echo cluster redis); do
      a=${A_OF[$engine]} b=${B_OF[$engine]}
      {
        $BIN/presence-load heartbeats --router 127.0.0.1:$a --router-pid "${PID_OF[$a]}" --connections 500 --seconds 10 \
          --redis-pids "${REDIS_PIDS_OF[$engine]}"
        $BIN/presence-load latency --mobiles 127.0.0.1:$a --dashboard 127.0.0.1:$b --users 200 --rate 1000 --seconds 10
        $BIN/presence-load ptt --talker 127.0.0.1:$a --listeners-router 127.0.0.1:$b --listeners 100 --rate 50 --seconds 10
      } | sed -u "s/^/$engine: /"
    done
  done
  # Redis → router relay messages per AUDIO frame, 100 groups over each engine's 4 routers.
  for engine in redis cluster; do
    $BIN/presence-load relay-fanin --routers "${FANIN_OF[$engine]}" --groups 100 --rate 50 --seconds 3 | sed -u "s/^/$engine: /"
  done
}
if [ "${BENCH_ONLY:-}" = cluster ]; then compare_engines; exit 0; fi

# Idle RSS, then again after every connection sent one 60 KiB frame (kernel TCP memory beside).
$BIN/presence-load idle --router 127.0.0.1:4100 --router-pid "${PID_OF[4100]}" --connections "$IDLE" --frame-bytes 61440
# Hostile clients, on a fresh embedded router with the default frame budget: 10 flooders of
# each kind for 3 s (reconnecting when closed) while 100 probes heartbeat every 20 ms.
router 4104
for kind in ping fragments text heartbeats; do
  $BIN/presence-load flood --router 127.0.0.1:4104 --router-pid "${PID_OF[4104]}" --kind "$kind" --flooders 10 --probes 100 --seconds 3
done
floods_per_address
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
compare_engines
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
HANG_PID=$(redis_pid 6401)
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

resume_bench
dashboard_page

large_groups
