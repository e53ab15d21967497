#!/usr/bin/env bash
# A whole local cluster in one go, everything on loopback:
#   MariaDB, Redis, N chat nodes, and nginx in front of them.
#
#   scripts/cluster.sh up [NODES]    start (default 3 nodes); prints where to connect
#   scripts/cluster.sh status        what is running
#   scripts/cluster.sh down          stop everything and delete its data
#
# Settings (environment):
#   CHAT_CLUSTER_DIR  state directory           (default: /tmp/chat-cluster)
#   CHAT_BALANCE      hash | round-robin        (default: hash)
#   CHAT_LISTEN_PORT  nginx port for clients    (default: 8000)
#   CHAT_NODE_PORT    first node port           (default: 6000; nodes use the next ones)
#   CHAT_WEB_PORT     nginx port for browsers   (default: 8080; web client and WebSocket)
#   CHAT_WEB_NODE_PORT first node web port      (default: 6100; nodes use the next ones)
#   CHAT_MYSQL_PORT   MariaDB port              (default: 13306)
#   CHAT_REDIS_PORT   Redis port                (default: 16379)
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
    for p in "$listen_port" "$web_port" "$mysql_port" "$redis_port" \
        $(seq "$node_port" $((node_port + nodes - 1))) $(seq "$web_node_port" $((web_node_port + nodes - 1))); do
        port_free "$p" || { echo "port $p is in use; set the CHAT_*_PORT variables" >&2; exit 1; }
    done
    local bin
    bin=$(bins)
    mkdir -p "$dir"
    echo "starting MariaDB on 127.0.0.1:$mysql_port" >&2
    start_mariadb "$dir/mariadb" "$mysql_port"
    mariadb --protocol=tcp -h127.0.0.1 -P"$mysql_port" -uroot -e 'CREATE DATABASE IF NOT EXISTS chat' 2>/dev/null ||
        "$bin/chatserver" --help >/dev/null # (mariadb client missing: the node creates tables, not the database)
    echo "starting Redis on 127.0.0.1:$redis_port" >&2
    start_redis "$dir/redis" "$redis_port"
    local node_args=() web_args=()
    : >"$dir/nodes"
    for i in $(seq 1 "$nodes"); do
        local port=$((node_port + i - 1)) wport=$((web_node_port + i - 1))
        mkdir -p "$dir/node$i"
        "$bin/chatserver" --listen "127.0.0.1:$port" --ws-listen "127.0.0.1:$wport" --node-id "node$i" \
            --db "mysql://root@127.0.0.1:$mysql_port/chat" \
            --redis "redis://127.0.0.1:$redis_port" --proxy-protocol ${CHAT_NODE_ARGS:-} >"$dir/node$i/log" 2>&1 &
        echo $! >"$dir/node$i/pid"
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
    wait_port "$listen_port" || { cat "$dir/nginx/logs/stdout.log" >&2; exit 1; }
    wait_port "$web_port" || { cat "$dir/nginx/logs/stdout.log" >&2; exit 1; }
    echo "cluster up: $nodes nodes behind nginx ($balance) at 127.0.0.1:$listen_port" >&2
    echo "  chatclient 127.0.0.1 $listen_port" >&2
    echo "  web client: http://127.0.0.1:$web_port/" >&2
    echo "  logs: $dir/node*/log; stop with: scripts/cluster.sh down" >&2
}

status() {
    [ -e "$dir/nodes" ] || { echo "no cluster in $dir"; return 0; }
    local name addr
    while read -r name addr; do
        if kill -0 "$(cat "$dir/$name/pid" 2>/dev/null)" 2>/dev/null; then
            echo "$name $addr running"
        else
            echo "$name $addr stopped"
        fi
    done <"$dir/nodes"
    for s in nginx redis mariadb; do
        if [ -f "$dir/$s/pid" ] && kill -0 "$(cat "$dir/$s/pid")" 2>/dev/null; then
            echo "$s running"
        else
            echo "$s stopped"
        fi
    done
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
    rm -rf "$dir"
    echo "cluster down" >&2
}

case "${1:-}" in
    up) shift; up "$@" ;;
    status) status ;;
    down) down ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
