#!/usr/bin/env bash
# A whole local cluster in one go, everything on loopback:
#   MariaDB, Redis, N chat nodes, and nginx in front of them; with CHAT_HA=1
#   a Redis Cluster (3 primaries, 3 replicas) and a Galera cluster of 3
#   MariaDB nodes instead, so that no one process carries the cluster.
#
#   scripts/cluster.sh up [NODES]       start (default 3 nodes); prints where to connect
#   scripts/cluster.sh status           one line per process: KIND NAME PID ADDR ROLE
#   scripts/cluster.sh restart-node I   drain node I (its clients resume elsewhere), start it again
#   scripts/cluster.sh down             stop everything and delete its data
#
# Settings (environment):
#   CHAT_HA           1: Redis Cluster and Galera   (default: one Redis, one MariaDB)
#   CHAT_CLUSTER_DIR  state directory           (default: /tmp/chat-cluster)
#   CHAT_BALANCE      hash | round-robin        (default: hash)
#   CHAT_LISTEN_PORT  nginx port for clients    (default: 8000)
#   CHAT_NODE_PORT    first node port           (default: 6000; nodes use the next ones)
#   CHAT_WEB_PORT     nginx port for browsers   (default: 8080; web client and WebSocket)
#   CHAT_WEB_NODE_PORT first node web port      (default: 6100; nodes use the next ones)
#   CHAT_METRICS_PORT first node metrics port   (default: 6200; /metrics, /healthz, /readyz)
#   CHAT_MYSQL_PORT   MariaDB port              (default: 13306; HA: the first of 12)
#   CHAT_REDIS_PORT   Redis port                (default: 16379; HA: the first of 12, the
#                                                Redis Cluster bus ports included)
#   CHAT_DB_SPREAD    1 (with CHAT_HA=1): node I writes through Galera node I first, to
#                     measure several writers against the default of one
#   CHAT_BIN_DIR      where chatserver/chathash are (default: build them, release)
#   CHAT_NODE_ARGS    more chatserver flags for every node, split on spaces
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/services.sh"

dir=${CHAT_CLUSTER_DIR:-/tmp/chat-cluster}
balance=${CHAT_BALANCE:-hash}
listen_port=${CHAT_LISTEN_PORT:-8000}
node_port=${CHAT_NODE_PORT:-6000}
web_port=${CHAT_WEB_PORT:-8080}
web_node_port=${CHAT_WEB_NODE_PORT:-6100}
mysql_port=${CHAT_MYSQL_PORT:-13306}
redis_port=${CHAT_REDIS_PORT:-16379}
metrics_port=${CHAT_METRICS_PORT:-6200}
ha=${CHAT_HA:-0}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bins() {
    if [ -n "${CHAT_BIN_DIR:-}" ]; then
        echo "$CHAT_BIN_DIR"
    else
        (cd "$root" && cargo build --release --locked --bin chatserver --bin chathash >&2)
        echo "$root/target/release"
    fi
}

up() {
    local nodes=${1:-3}
    if [ -e "$dir/nodes" ]; then
        echo "a cluster is already up in $dir (scripts/cluster.sh down first)" >&2
        exit 1
    fi
    local backend_ports=("$mysql_port" "$redis_port")
    if [ "$ha" = 1 ]; then
        backend_ports=($(seq "$mysql_port" $((mysql_port + 11))) $(seq "$redis_port" $((redis_port + 11))))
        [ $((redis_port + 11)) -le 65535 ] && [ $((mysql_port + 11)) -le 65535 ] ||
            { echo "CHAT_REDIS_PORT and CHAT_MYSQL_PORT need 12 ports each below 65536" >&2; exit 1; }
    fi
    for p in "$listen_port" "$web_port" "${backend_ports[@]}" \
        $(seq "$node_port" $((node_port + nodes - 1))) $(seq "$web_node_port" $((web_node_port + nodes - 1))) \
        $(seq "$metrics_port" $((metrics_port + nodes - 1))); do
        port_free "$p" || { echo "port $p is in use; set the CHAT_*_PORT variables" >&2; exit 1; }
    done
    local bin db_url redis_url
    bin=$(bins)
    mkdir -p "$dir"
    echo "$ha" >"$dir/ha"
    if [ "$ha" = 1 ]; then
        echo "starting a Galera cluster of 3 on 127.0.0.1:$mysql_port-$((mysql_port + 2))" >&2
        start_galera "$dir/galera" "$mysql_port" 3
        mariadb --protocol=tcp -h127.0.0.1 -P"$mysql_port" -uroot -e 'CREATE DATABASE IF NOT EXISTS chat'
        db_url="mysql://root@127.0.0.1:$mysql_port,127.0.0.1:$((mysql_port + 1)),127.0.0.1:$((mysql_port + 2))/chat"
        echo "starting a Redis Cluster of 3 primaries and 3 replicas on 127.0.0.1:$redis_port-$((redis_port + 5))" >&2
        start_redis_cluster "$dir/rediscluster" "$redis_port"
        redis_url="redis+cluster://127.0.0.1:$redis_port,127.0.0.1:$((redis_port + 1)),127.0.0.1:$((redis_port + 2))"
    else
        echo "starting MariaDB on 127.0.0.1:$mysql_port" >&2
        start_mariadb "$dir/mariadb" "$mysql_port"
        mariadb --protocol=tcp -h127.0.0.1 -P"$mysql_port" -uroot -e 'CREATE DATABASE IF NOT EXISTS chat' 2>/dev/null ||
            "$bin/chatserver" --help >/dev/null # (mariadb client missing: the node creates tables, not the database)
        db_url="mysql://root@127.0.0.1:$mysql_port/chat"
        echo "starting Redis on 127.0.0.1:$redis_port" >&2
        start_redis "$dir/redis" "$redis_port"
        redis_url="redis://127.0.0.1:$redis_port"
    fi
    local node_args=() web_args=()
    : >"$dir/nodes"
    for i in $(seq 1 "$nodes"); do
        local port=$((node_port + i - 1)) wport=$((web_node_port + i - 1)) mport=$((metrics_port + i - 1))
        mkdir -p "$dir/node$i"
        # The command line is kept for restart-node.
        local node_db=$db_url
        if [ "$ha" = 1 ] && [ "${CHAT_DB_SPREAD:-0}" = 1 ]; then
            # Measuring the alternative to one writer: node I starts its
            # list at Galera node I, so nodes write through different ones.
            local g=() k
            for k in 0 1 2; do g+=("127.0.0.1:$((mysql_port + (i - 1 + k) % 3))"); done
            node_db="mysql://root@$(IFS=,; echo "${g[*]}")/chat"
        fi
        local cmd=("$bin/chatserver" --listen "127.0.0.1:$port" --ws-listen "127.0.0.1:$wport"
            --metrics-listen "127.0.0.1:$mport" --node-id "node$i"
            --db "$node_db" --redis "$redis_url" --proxy-protocol ${CHAT_NODE_ARGS:-})
        printf '%q ' "${cmd[@]}" >"$dir/node$i/cmd"
        echo "$port" >"$dir/node$i/port"
        echo "$mport" >"$dir/node$i/metrics"
        start_node "$dir/node$i"
        echo "node$i 127.0.0.1:$port" >>"$dir/nodes"
        node_args+=(--node "127.0.0.1:$port")
        web_args+=(--web-node "127.0.0.1:$wport")
    done
    for i in $(seq 1 "$nodes"); do
        wait_port $((node_port + i - 1)) || { cat "$dir/node$i/log" >&2; exit 1; }
    done
    mkdir -p "$dir/nginx"
    "$bin/chathash" nginx-conf --listen "127.0.0.1:$listen_port" --balance "$balance" \
        --prefix "$dir/nginx" --proxy-protocol "${node_args[@]}" \
        --web-listen "127.0.0.1:$web_port" "${web_args[@]}" >"$dir/nginx/nginx.conf"
    start_nginx "$dir/nginx"
    echo "127.0.0.1:$listen_port" >"$dir/nginx/addr"
    wait_port "$listen_port" || { cat "$dir/nginx/logs/stdout.log" >&2; exit 1; }
    wait_port "$web_port" || { cat "$dir/nginx/logs/stdout.log" >&2; exit 1; }
    echo "cluster up: $nodes nodes behind nginx ($balance) at 127.0.0.1:$listen_port" >&2
    echo "  chatclient 127.0.0.1 $listen_port" >&2
    echo "  web client: http://127.0.0.1:$web_port/" >&2
    echo "  logs: $dir/node*/log; stop with: scripts/cluster.sh down" >&2
}

# start_node NODEDIR: runs the node's saved command line, its log appended.
start_node() {
    local d=$1
    (eval "exec $(cat "$d/cmd")") >>"$d/log" 2>&1 &
    echo $! >"$d/pid"
}

# readiness PORT: what the node's /readyz says (ready, not-ready or down).
readiness() {
    local answer
    answer=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf 'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n' >&3 && timeout 3 cat <&3) 2>/dev/null || true)
    case $answer in
        "HTTP/1.1 200"*) echo ready ;;
        "HTTP/1.1 503"*) echo not-ready ;;
        *) echo down ;;
    esac
}

running() { [ -f "$1/pid" ] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }

status() {
    [ -e "$dir/nodes" ] || { echo "no cluster in $dir"; return 0; }
    local name addr d pid
    while read -r name addr; do
        d="$dir/$name"
        pid=$(cat "$d/pid" 2>/dev/null || echo -)
        if running "$d"; then
            echo "node $name $pid $addr $(readiness "$(cat "$d/metrics")")"
        else
            echo "node $name $pid $addr stopped"
        fi
    done <"$dir/nodes"
    if [ -d "$dir/rediscluster" ]; then
        redis_cluster_roles "$dir/rediscluster" | sed 's/^/redis /'
    else
        pid=$(cat "$dir/redis/pid" 2>/dev/null || echo -)
        running "$dir/redis" && echo "redis redis $pid 127.0.0.1:$redis_port primary" ||
            echo "redis redis $pid 127.0.0.1:$redis_port down"
    fi
    if [ -d "$dir/galera" ]; then
        galera_roles "$dir/galera" | sed 's/^/db /'
    else
        pid=$(cat "$dir/mariadb/pid" 2>/dev/null || echo -)
        running "$dir/mariadb" && echo "db mariadb $pid 127.0.0.1:$mysql_port standalone" ||
            echo "db mariadb $pid 127.0.0.1:$mysql_port down"
    fi
    pid=$(cat "$dir/nginx/pid" 2>/dev/null || echo -)
    running "$dir/nginx" && echo "nginx nginx $pid $(cat "$dir/nginx/addr") running" ||
        echo "nginx nginx $pid $(cat "$dir/nginx/addr" 2>/dev/null) stopped"
}

# restart-node I: SIGTERM drains the node (its clients are told, errno 53,
# and resume through nginx on the other nodes; its /readyz says 503 until it
# exits), then it starts again with the same command line.
restart_node() {
    local i=${1:?which node? restart-node I}
    local d="$dir/node$i"
    [ -f "$d/cmd" ] || { echo "no node$i in $dir" >&2; exit 1; }
    if running "$d"; then
        local pid
        pid=$(cat "$d/pid")
        kill -TERM "$pid"
        for _ in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "node$i did not stop within 30 s; killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    start_node "$d"
    wait_port "$(cat "$d/port")" || { tail -n 30 "$d/log" >&2; exit 1; }
    echo "node$i restarted" >&2
}

down() {
    [ -d "$dir" ] || return 0
    stop_service "$dir/nginx"
    if [ -e "$dir/nodes" ]; then
        local name addr
        while read -r name addr; do
            stop_service "$dir/$name"
        done <"$dir/nodes"
    fi
    stop_service "$dir/redis"
    stop_service "$dir/mariadb"
    [ -d "$dir/rediscluster" ] && stop_redis_cluster "$dir/rediscluster"
    [ -d "$dir/galera" ] && stop_galera "$dir/galera"
    rm -rf "$dir"
    echo "cluster down" >&2
}

case "${1:-}" in
    up) shift; up "$@" ;;
    status) status ;;
    restart-node) shift; restart_node "$@" ;;
    down) down ;;
    *) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
