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
    # The bootstrap has failed, rarely and silently, in CI (cause not
    # found yet): say what it said, and try once more from scratch.
    local try
    for try in 1 2; do
        if mariadb-install-db --no-defaults --datadir="$dir/data" \
            --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1; then
            break
        fi
        echo "mariadb-install-db failed (attempt $try); its last lines:" >&2
        tail -n 30 "$dir/install.log" >&2
        [ "$try" = 2 ] && return 1
        rm -rf "$dir/data"
        sleep 1
    done
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

# ports_free BASE COUNT: true when nothing listens on 127.0.0.1:BASE..BASE+COUNT-1.
ports_free() {
    local p
    for p in $(seq "$1" $(($1 + $2 - 1))); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            return 1
        fi
    done
}

# pick_ports COUNT: the first of COUNT consecutive free ports, below the
# ephemeral range like pick_port.
pick_ports() {
    local base
    while :; do
        base=$((20000 + RANDOM % (12768 - $1)))
        if ports_free "$base" "$1"; then
            echo "$base"
            return
        fi
    done
}

# --- Redis Cluster -----------------------------------------------------------
#
# start_redis_cluster DIR BASE_PORT: a Redis Cluster of 3 primaries with one
# replica each, 6 instances in DIR/r1..DIR/r6, keeping nothing on disk.
# Uses 12 consecutive ports: clients on BASE_PORT..BASE_PORT+5 (rN on
# BASE_PORT+N-1), cluster bus on BASE_PORT+6..BASE_PORT+11 (rN on BASE_PORT+N+5;
# set explicitly because Redis's default, port+10000, is past 65535 for high
# ports). Which instances end up primaries is redis-cli's choice; see
# redis_cluster_roles. A node is declared failed after CHAT_REDIS_NODE_TIMEOUT
# ms (default 2000), so a replica takes over within a few seconds.
# Returns once every node reports cluster_state:ok and every replica is linked
# to its primary (at most ~30 s).
start_redis_cluster() {
    local dir=$1 base=$2 timeout=${CHAT_REDIS_NODE_TIMEOUT:-2000}
    local n d port addrs=()
    for n in 1 2 3 4 5 6; do
        d="$dir/r$n"
        port=$((base + n - 1))
        mkdir -p "$d"
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$d" \
            --logfile "$d/redis.log" --cluster-enabled yes --cluster-config-file "$d/nodes.conf" \
            --cluster-port $((base + n + 5)) --cluster-node-timeout "$timeout" >/dev/null 2>&1 &
        echo $! >"$d/pid"
        echo "$port" >"$d/port"
        addrs+=("127.0.0.1:$port")
    done
    for n in 1 2 3 4 5 6; do
        wait_port $((base + n - 1)) || return 1
    done
    if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$dir/create.log" 2>&1; then
        echo "redis-cli --cluster create failed:" >&2
        tail -n 20 "$dir/create.log" >&2
        return 1
    fi
    local ok info role deadline=$((SECONDS + 30))
    while [ "$SECONDS" -lt "$deadline" ]; do
        ok=1
        for n in 1 2 3 4 5 6; do
            port=$((base + n - 1))
            info=$(redis-cli -p "$port" cluster info 2>/dev/null || true)
            role=$(redis-cli -p "$port" role 2>/dev/null || true)
            # Every node sees every slot served, and every replica is linked to
            # its primary (else it could not take over).
            case $info in *cluster_state:ok*) ;; *) ok=0 ;; esac
            case $role in slave*) [ "$(sed -n 4p <<<"$role")" = connected ] || ok=0 ;; esac
            [ "$ok" = 1 ] || break
        done
        [ "$ok" = 1 ] && return 0
        sleep 0.1
    done
    info=$(grep cluster_state <<<"$info" || echo 'no answer')
    role=$(tr '\n' ' ' <<<"$role")
    echo "Redis Cluster in $dir not ready after 30 s (127.0.0.1:$port: $info; role: $role)" >&2
    return 1
}

# stop_redis_cluster DIR: stops what start_redis_cluster started in DIR.
stop_redis_cluster() {
    local n
    for n in 1 2 3 4 5 6; do
        stop_service "$1/r$n"
    done
}

# redis_cluster_roles DIR: one line per instance, "rN PID 127.0.0.1:PORT ROLE",
# ROLE primary, replica or down (not answering).
redis_cluster_roles() {
    local dir=$1 n d pid port role
    for n in 1 2 3 4 5 6; do
        d="$dir/r$n"
        pid=$(cat "$d/pid" 2>/dev/null || echo -)
        port=$(cat "$d/port" 2>/dev/null || echo 0)
        role=$(redis-cli -p "$port" role 2>/dev/null || true)
        case $role in
            master*) role=primary ;;
            slave*) role=replica ;;
            *) role=down ;;
        esac
        echo "r$n $pid 127.0.0.1:$port $role"
    done
}

# redis_cluster_move_slot DIR KEY: moves the slot of KEY, with its keys, from
# the primary serving it to another primary of the cluster in DIR, the way
# a resharding does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE): clients see
# ASK and MOVED redirections meanwhile. Prints the new primary's port.
redis_cluster_move_slot() {
    local dir=$1 key=$2 n port slot src= dst= src_port= dst_port= id role
    slot=$(redis-cli -p "$(cat "$dir/r1/port")" cluster keyslot "$key")
    for n in 1 2 3 4 5 6; do
        port=$(cat "$dir/r$n/port")
        role=$(redis-cli -p "$port" role 2>/dev/null | head -1 || true)
        [ "$role" = master ] || continue
        id=$(redis-cli -p "$port" cluster myid)
        if [ -z "$src" ] && redis_serves_slot "$port" "$id" "$slot"; then
            src=$id src_port=$port
        elif [ -z "$dst" ]; then
            dst=$id dst_port=$port
        fi
    done
    [ -n "$src" ] && [ -n "$dst" ] || { echo "redis_cluster_move_slot: no source or target primary" >&2; return 1; }
    redis-cli -p "$dst_port" cluster setslot "$slot" importing "$src" >/dev/null
    redis-cli -p "$src_port" cluster setslot "$slot" migrating "$dst" >/dev/null
    local keys
    while :; do
        keys=$(redis-cli -p "$src_port" cluster getkeysinslot "$slot" 100)
        [ -z "$keys" ] && break
        # shellcheck disable=SC2086
        redis-cli -p "$src_port" migrate 127.0.0.1 "$dst_port" "" 0 5000 keys $keys >/dev/null
    done
    for n in 1 2 3 4 5 6; do
        redis-cli -p "$(cat "$dir/r$n/port")" cluster setslot "$slot" node "$dst" >/dev/null 2>&1 || true
    done
    echo "$dst_port"
}

# redis_serves_slot PORT ID SLOT: whether node ID (on PORT) owns SLOT.
redis_serves_slot() {
    local range a b
    for range in $(redis-cli -p "$1" cluster nodes | awk -v id="$2" '$1 == id { for (i = 9; i <= NF; i++) print $i }'); do
        case $range in \[*) continue ;; esac
        a=${range%-*} b=${range#*-}
        [ "$3" -ge "$a" ] && [ "$3" -le "$b" ] && return 0
    done
    return 1
}

# --- MariaDB Galera cluster --------------------------------------------------
#
# start_galera DIR BASE_PORT [N]: a Galera cluster of N (default 3) MariaDB
# nodes, root with no password, node gN in DIR/gN. Uses 4*N consecutive
# ports from BASE_PORT, for node I (1..N):
#   SQL        BASE_PORT + I-1
#   gcomm      BASE_PORT + N   + I-1   (group communication)
#   IST        BASE_PORT + 2*N + I-1   (incremental state transfer, receiver)
#   SST        BASE_PORT + 3*N + I-1   (full state transfer by rsync, receiver)
# g1 bootstraps the cluster, the others join one at a time; returns once all
# are Synced (at most ~60 s per node). A lost node is noticed within ~3-6 s
# (evs.suspect_timeout / evs.inactive_timeout). Each node's full mariadbd
# command line is kept in DIR/gN/cmd, for start_galera_node.
start_galera() {
    local dir=$1 base=$2 n=${3:-3}
    local i d gcomm= rsync sst
    for i in $(seq "$n"); do
        gcomm+="${gcomm:+,}127.0.0.1:$((base + n + i - 1))"
    done
    # State transfers are by rsync, with a twist: the joiner's SST script
    # starts an rsync daemon without uid/gid, and rsyncd started by root
    # serves as "nobody", who may not write the root-owned datadir
    # (MDEV-40688). So the nodes use SST method "chat_rsync", DIR/bin's
    # wsrep_sst_chat_rsync: the stock wsrep_sst_rsync with DIR/bin first in its
    # PATH, where an rsync keeps the daemon's user. (Putting DIR/bin first in
    # mariadbd's own PATH is not enough: it puts its own bin directory first.)
    rsync=$(command -v rsync) || { echo "start_galera: rsync is not installed" >&2; return 1; }
    sst=$(command -v wsrep_sst_rsync) || { echo "start_galera: wsrep_sst_rsync is not installed" >&2; return 1; }
    mkdir -p "$dir/bin"
    cat >"$dir/bin/rsync" <<RSYNC
#!/bin/sh
if [ "\$(id -u)" = 0 ]; then
    for a; do
        [ "\$a" = --daemon ] && exec $rsync "\$@" --dparam=uid=0 --dparam=gid=0
    done
fi
exec $rsync "\$@"
RSYNC
    printf '#!/bin/sh\nPATH=%q:"$PATH" exec %q "$@"\n' "$dir/bin" "$sst" >"$dir/bin/wsrep_sst_chat_rsync"
    chmod +x "$dir/bin/rsync" "$dir/bin/wsrep_sst_chat_rsync"
    for i in $(seq "$n"); do
        d="$dir/g$i"
        mkdir -p "$d"
        local cmd=(env PATH="$dir/bin:$PATH" mariadbd --no-defaults --datadir="$d/data" --socket="$d/mariadb.sock"
            --pid-file="$d/mariadbd.pid" --log-error="$d/error.log"
            --port=$((base + i - 1)) --bind-address=127.0.0.1 --user="$(id -un)"
            --binlog-format=ROW --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2
            --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --max-connections=500
            --innodb-flush-log-at-trx-commit=2
            --wsrep-on=ON --wsrep-provider=/usr/lib/galera/libgalera_smm.so
            --wsrep-cluster-name=chat-test --wsrep-node-name="g$i"
            --wsrep-node-address="127.0.0.1:$((base + n + i - 1))"
            --wsrep-cluster-address="gcomm://$gcomm"
            --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:$((base + n + i - 1));ist.recv_addr=127.0.0.1:$((base + 2 * n + i - 1));evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;gcache.size=64M"
            --wsrep-sst-method=chat_rsync --wsrep-sst-receive-address="127.0.0.1:$((base + 3 * n + i - 1))")
        printf '%q ' "${cmd[@]}" >"$d/cmd"
        echo >>"$d/cmd"
        echo $((base + i - 1)) >"$d/port"
    done
    # Only the bootstrap node needs system tables: a joiner's datadir is
    # replaced by the SST from its donor before it starts its engines.
    mariadb-install-db --no-defaults --datadir="$dir/g1/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/g1/install.log" 2>&1 || {
        echo "mariadb-install-db failed for $dir/g1:" >&2
        tail -n 20 "$dir/g1/install.log" >&2
        return 1
    }
    galera_run "$dir/g1" --wsrep-new-cluster || return 1
    for i in $(seq 2 "$n"); do
        mkdir -p "$dir/g$i/data"
        galera_run "$dir/g$i" || return 1
    done
}

# galera_run NODEDIR [EXTRA...]: starts the node from NODEDIR/cmd (plus EXTRA
# options) and waits until it is Synced. Used by start_galera and start_galera_node.
galera_run() {
    local d=$1
    shift
    local cmd
    cmd=$(cat "$d/cmd")
    (eval "exec $cmd \"\$@\"") >/dev/null 2>&1 &
    echo $! >"$d/pid"
    galera_wait_synced "$d"
}

# galera_wait_synced NODEDIR: waits up to ~60 s until the node is Synced.
galera_wait_synced() {
    local d=$1 pid port state deadline=$((SECONDS + 60))
    pid=$(cat "$d/pid")
    port=$(cat "$d/port")
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "Galera node $d (127.0.0.1:$port) exited; end of $d/error.log:" >&2
            tail -n 30 "$d/error.log" >&2
            return 1
        fi
        state=$(galera_state "$port")
        [ "$state" = Synced ] && return 0
        sleep 0.2
    done
    echo "Galera node $d (127.0.0.1:$port) not Synced after 60 s (${state:-no answer}); end of $d/error.log:" >&2
    tail -n 30 "$d/error.log" >&2
    return 1
}

# galera_state PORT: wsrep_local_state_comment of the node on PORT, or nothing.
galera_state() {
    mariadb --protocol=tcp -h127.0.0.1 -P"$1" -uroot --connect-timeout=2 -N \
        -e "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | cut -f2 || true
}

# start_galera_node DIR I: restarts stopped node gI of the cluster in DIR so
# that it rejoins the running cluster (never bootstraps); returns once Synced.
start_galera_node() {
    local d="$1/g$2"
    if [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
        echo "Galera node $d is running already" >&2
        return 1
    fi
    galera_run "$d"
}

# stop_galera DIR: stops every node of the cluster in DIR.
stop_galera() {
    local d
    for d in "$1"/g*; do
        [ -d "$d" ] && stop_service "$d"
    done
    return 0
}

# galera_roles DIR: one line per node, "gN PID 127.0.0.1:PORT STATE", STATE the
# node's wsrep_local_state_comment (Synced, Donor/Desynced, Joining, ...) or down.
galera_roles() {
    local d pid port state
    for d in $(ls -d "$1"/g* | sort -V); do
        pid=$(cat "$d/pid" 2>/dev/null || echo -)
        port=$(cat "$d/port")
        state=$(galera_state "$port")
        echo "$(basename "$d") $pid 127.0.0.1:$port ${state:-down}"
    done
}
