#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md. Benchmarks print figures;
# nothing here passes or fails on a speed.
#
#   scripts/bench.sh single    relay vs chatserver (SQLite), 10 and 100 pairs, 3 rounds
#   scripts/bench.sh cluster   2 nodes + MariaDB + Redis (+ nginx), 100 pairs across nodes
#   scripts/bench.sh ha        the same on a Galera cluster of 3 and a Redis Cluster of 3+3
#   scripts/bench.sh ha-spread the same, each node writing through a Galera node of its own
#   scripts/bench.sh failover  the pause when a Redis primary or the Galera node in use dies
#   scripts/bench.sh memory    RSS after 1,000 logins held at once
#   scripts/bench.sh storm     chat latency during 500 concurrent password logins
#   scripts/bench.sh staging   staging (the default) and per-batch commits side by side,
#                              both at once on the server core, 5 rounds (PAIRS=100)
#   scripts/bench.sh fanout    a group message to 1,000 online members (MEMBERS=10000 ...)
#   scripts/bench.sh classic   readers that read as the original client, under bursts,
#                              at frame spacings of 0 to 10 ms (PAUSE_US per read)
#   scripts/bench.sh all       all of the above
#
# Server-side processes run on core 0 (SERVER_CPU), the load generator on
# core 1 (CLIENT_CPU). Needs the release binaries (built here) and, for
# `cluster`, MariaDB, Redis and nginx (scripts/provision.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
server_cpu=${SERVER_CPU:-0}
client_cpu=${CLIENT_CPU:-1}
bin="$root/target/release"
cargo build --release --locked --bin chatserver --bin chatbench --bin chathash >&2
work=$(mktemp -d -t chat-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -e "$work/cluster/nodes" ] && CHAT_CLUSTER_DIR="$work/cluster" scripts/cluster.sh down >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

# Starts a single SQLite node pinned to the server core; sets $node_pid.
start_node() {
    local port=$1
    shift
    taskset -c "$server_cpu" "$bin/chatserver" --listen "127.0.0.1:$port" \
        --db "sqlite://$work/node-$port.db" --request-rate 0 "$@" >"$work/node-$port.log" 2>&1 &
    node_pid=$!
    pids+=("$node_pid")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "node on $port did not start" >&2
    cat "$work/node-$port.log" >&2
    exit 1
}

bench() { taskset -c "$client_cpu" "$bin/chatbench" "$@"; }

single() {
    echo "== single node: relay vs chatserver (SQLite, synchronous=FULL)"
    bench compare --pairs 10,100 --repeat "${REPEAT:-3}" --duration "${DURATION:-5}" \
        --server-cpu "$server_cpu" --client-cpu "$client_cpu"
    echo "== the same with --sync normal (survives a process crash, not a power cut)"
    bench compare --pairs 10,100 --repeat "${REPEAT:-3}" --duration "${DURATION:-5}" \
        --server-cpu "$server_cpu" --client-cpu "$client_cpu" --server-arg=--sync --server-arg=normal
}

# cluster_rounds HA: 2 nodes behind nginx on the standalone backends (HA=0)
# or on a Redis Cluster and a Galera cluster (HA=1); every server-side
# process on the server core; CPU per message reported per tier.
cluster_rounds() {
    local ha=$1
    export CHAT_CLUSTER_DIR="$work/cluster" CHAT_BIN_DIR="$bin" CHAT_BALANCE=round-robin CHAT_HA=$ha
    export CHAT_NODE_ARGS="--request-rate 0"
    export CHAT_LISTEN_PORT=18000 CHAT_NODE_PORT=16000 CHAT_MYSQL_PORT=16306 CHAT_REDIS_PORT=16379
    export CHAT_METRICS_PORT=16200 CHAT_WEB_PORT=18080 CHAT_WEB_NODE_PORT=16100
    scripts/cluster.sh up 2 >&2
    local d=$CHAT_CLUSTER_DIR
    # pids of a tier, comma-separated, each pinned to the server core (with
    # its children: nginx's workers do nginx's work)
    pin() {
        local out=() p c
        for p in "$@"; do
            for c in $(cat "$p") $(pgrep -P "$(cat "$p")" || true); do
                taskset -a -p -c "$server_cpu" "$c" >/dev/null
                out+=("$c")
            done
        done
        (IFS=,; echo "${out[*]}")
    }
    local nodes redis db nginx
    nodes=$(pin "$d/node1/pid" "$d/node2/pid")
    if [ "$ha" = 1 ]; then
        redis=$(pin "$d"/rediscluster/r*/pid)
        db=$(pin "$d"/galera/g*/pid)
    else
        redis=$(pin "$d/redis/pid")
        db=$(pin "$d/mariadb/pid")
    fi
    nginx=$(pin "$d/nginx/pid")
    for r in $(seq "${REPEAT:-3}"); do
        echo "-- round $r: senders on node1, receivers on node2 (CPU: nodes + database + Redis)"
        bench pairs --addr 127.0.0.1:16000 --recv-addr 127.0.0.1:16001 --pairs 100 \
            --duration "${DURATION:-5}" --warmup 2 --server-pid "$nodes,$db,$redis" \
            --tier "node=$nodes" --tier "db=$db" --tier "redis=$redis" | grep -v '^{'
        echo "-- round $r: everyone through nginx, round robin (CPU: the above + nginx)"
        bench pairs --addr 127.0.0.1:18000 --pairs 100 \
            --duration "${DURATION:-5}" --warmup 2 --server-pid "$nodes,$db,$redis,$nginx" \
            --tier "node=$nodes" --tier "db=$db" --tier "redis=$redis" --tier "nginx=$nginx" | grep -v '^{'
    done
    scripts/cluster.sh down >&2
}

cluster() {
    echo "== cluster: 2 nodes, MariaDB, Redis, nginx; all server-side processes on core $server_cpu"
    cluster_rounds 0
}

ha() {
    echo "== HA cluster: 2 nodes, Galera (3), Redis Cluster (3+3), nginx; all server-side processes on core $server_cpu"
    cluster_rounds 1
}

ha_spread() {
    echo "== HA cluster, each node writing through its own Galera node (CHAT_DB_SPREAD=1)"
    CHAT_DB_SPREAD=1 cluster_rounds 1
}

# failover_round KIND: the HA cluster, an open-loop load across nodes (1,000
# msg/s, 20 pairs, latency counted from when each message was due), and 8 s
# in the Redis primary serving the deployment's slot (KIND=redis) or the
# Galera node in use (KIND=db) is killed: the worst latency is the pause.
failover_round() {
    local kind=$1
    export CHAT_CLUSTER_DIR="$work/cluster" CHAT_BIN_DIR="$bin" CHAT_BALANCE=round-robin CHAT_HA=1
    export CHAT_NODE_ARGS="--request-rate 0"
    export CHAT_LISTEN_PORT=18000 CHAT_NODE_PORT=16000 CHAT_MYSQL_PORT=16306 CHAT_REDIS_PORT=16379
    export CHAT_METRICS_PORT=16200 CHAT_WEB_PORT=18080 CHAT_WEB_NODE_PORT=16100
    scripts/cluster.sh up 2 >&2
    local d=$CHAT_CLUSTER_DIR
    (
        sleep 8
        if [ "$kind" = redis ]; then
            local slot n port id
            slot=$(redis-cli -p "$CHAT_REDIS_PORT" cluster keyslot '{chat}')
            for n in 1 2 3 4 5 6; do
                port=$(cat "$d/rediscluster/r$n/port")
                [ "$(redis-cli -p "$port" role | head -1)" = master ] || continue
                id=$(redis-cli -p "$port" cluster myid)
                if redis_serves_slot "$port" "$id" "$slot"; then
                    echo "killing the Redis primary on $port"
                    kill -9 "$(cat "$d/rediscluster/r$n/pid")"
                    break
                fi
            done
        else
            echo "killing Galera node g1 (in use)"
            kill -9 "$(cat "$d/galera/g1/pid")"
        fi
    ) &
    bench pairs --addr 127.0.0.1:16000 --recv-addr 127.0.0.1:16001 --pairs 20 --rate 1000 \
        --duration 20 --warmup 2
    wait
    scripts/cluster.sh down >&2
}

failover() {
    echo "== pauses: a Redis primary, then the Galera node in use, killed under 1,000 msg/s across nodes"
    . scripts/lib/services.sh
    failover_round redis
    failover_round db
}

memory() {
    echo "== memory: 1,000 users logged in at once"
    start_node 17001
    bench logins --addr 127.0.0.1:17001 --users "${USERS:-1000}" --server-pid "$node_pid"
}

storm() {
    echo "== login storm: 10 chatting pairs, then 500 concurrent password logins"
    start_node 17002
    bench storm --addr 127.0.0.1:17002 --pairs 10 --logins 500 --server-pid "$node_pid"
}

fanout() {
    echo "== group fan-out: ${MEMBERS:-1000} members online"
    start_node 17003
    bench fanout --addr 127.0.0.1:17003 --members "${MEMBERS:-1000}" --messages 20 \
        --server-pid "$node_pid"
}

staging() {
    echo "== SQLite staging (--stage-ms 100) and per-batch commits (--stage-ms 0), at once"
    local port=17200 round
    for round in $(seq "${REPEAT:-5}"); do
        start_node "$port"
        local staged=$node_pid
        start_node $((port + 1)) --stage-ms 0
        local per_batch=$node_pid
        bench pairs --addr "127.0.0.1:$port" --pairs "${PAIRS:-100}" --server-pid "$staged" \
            --duration "${DURATION:-8}" 2>/dev/null | grep '^{' | sed "s/^/round $round staged    /" &
        local one=$!
        bench pairs --addr "127.0.0.1:$((port + 1))" --pairs "${PAIRS:-100}" --server-pid "$per_batch" \
            --duration "${DURATION:-8}" 2>/dev/null | grep '^{' | sed "s/^/round $round per-batch /" &
        wait "$one" $!
        kill "$staged" "$per_batch"
        wait "$staged" "$per_batch" 2>/dev/null || true
        port=$((port + 2))
    done
}

classic() {
    echo "== the original client's reads: 20 readers, 3 senders each, 20 messages each at once"
    local port=17004
    for spacing in 0 0.5 1 2 5 10; do
        for _ in 1 2 3; do
            start_node "$port" --classic-spacing-ms "$spacing"
            echo -n "spacing $spacing ms: "
            bench classic --addr "127.0.0.1:$port" --readers 20 --senders 3 --messages 20 \
                --pause-us "${PAUSE_US:-1000}" | head -1
            kill "$node_pid"
            wait "$node_pid" 2>/dev/null || true
            port=$((port + 1))
        done
    done
}

case "${1:-}" in
    single | cluster | ha | failover | memory | storm | staging | fanout | classic) "$1" ;;
    ha-spread) ha_spread ;;
    all) single; cluster; ha; memory; storm; fanout; classic ;;
 *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
