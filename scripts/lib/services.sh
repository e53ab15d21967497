# Private MariaDB, Redis and nginx instances on loopback, for the local
# cluster script and the test script. Each lives in a directory of its own
# and is stopped by killing the pid recorded there. Sourced, not run.

# A TCP port on 127.0.0.1 that nothing listens on right now, below the
# kernel's ephemeral range (32768 and up), so that no outgoing connection
# takes it before the server binds it.
pick_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# Waits up to ~20 s until something accepts connections on 127.0.0.1:$1.
wait_port() {
    local i
    for i in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing is listening on 127.0.0.1:$1" >&2
    return 1
}

# start_mariadb DIR PORT: a fresh MariaDB with root (no password) on 127.0.0.1:PORT.
start_mariadb() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    mariadb-install-db --no-defaults --datadir="$dir/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1
    mariadbd --no-defaults --datadir="$dir/data" --port="$port" --socket="$dir/mariadb.sock" \
        --bind-address=127.0.0.1 --user="$(id -un)" --skip-log-bin \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
        --max-connections=500 --log-error="$dir/error.log" >/dev/null 2>&1 &
    echo $! >"$dir/pid"
    wait_port "$port"
}

# start_redis DIR PORT [PASSWORD]: a Redis that keeps nothing on disk.
start_redis() {
    local dir=$1 port=$2 pass=${3:-}
    mkdir -p "$dir"
    local auth=()
    [ -n "$pass" ] && auth=(--requirepass "$pass")
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$dir/redis.log" "${auth[@]}" >/dev/null 2>&1 &
    echo $! >"$dir/pid"
    wait_port "$port"
}

# start_nginx DIR: runs nginx with DIR/nginx.conf, prefix DIR.
start_nginx() {
    local dir=$1
    mkdir -p "$dir/logs"
    nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/logs/stdout.log" 2>&1 &
    echo $! >"$dir/pid"
}

# stop_service DIR: stops what start_* started in DIR.
stop_service() {
    local dir=$1
    [ -f "$dir/pid" ] || return 0
    local pid
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
}
