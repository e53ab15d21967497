#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it first installs what
# the tests need (MariaDB, Redis, nginx; see provision.sh), then starts a
# private MariaDB and Redis on free loopback ports for this run, runs every
# test (SQLite backend, cluster tests), runs the behaviour suite again on the
# MySQL backend, and removes the private servers at the end. Tests that stop
# a server on purpose start private instances of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/services.sh

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    scripts/provision.sh
fi

work=$(mktemp -d -t chat-test.XXXXXX)
cleanup() {
    # A shared server that died during the run (mariadbd once crashed with
    # SIGSEGV mid-suite, cause unknown) leaves its reason in its log.
    local svc
    for svc in mariadb redis; do
        if [ -f "$work/$svc/pid" ] && ! kill -0 "$(cat "$work/$svc/pid")" 2>/dev/null; then
            echo "test.sh: the suite's $svc had stopped; the end of its log:" >&2
            tail -n 40 "$work/$svc/error.log" "$work/$svc/redis.log" 2>/dev/null >&2 || true
        fi
    done
    stop_service "$work/redis"
    stop_service "$work/mariadb"
    rm -rf "$work"
}
trap cleanup EXIT

mysql_port=$(pick_port)
start_mariadb "$work/mariadb" "$mysql_port"
redis_port=$(pick_port)
start_redis "$work/redis" "$redis_port"
export CHAT_TEST_MYSQL_URL="mysql://root@127.0.0.1:$mysql_port"
export CHAT_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"

# The suites run other members' programs (cluster.sh runs `chathash`, the
# TLS suite runs `chatbench`); `cargo test` builds a member's binary only
# when that member has integration tests of its own, so build them all first.
echo "== every program of the workspace"
cargo build --locked --workspace --bins

echo "== all tests (SQLite backend for the single-node suite)"
cargo test --locked --all-targets "$@"

echo "== the single-node behaviour suite again, on the MySQL backend"
CHAT_TEST_BACKEND=mysql cargo test --locked \
    --test accounts --test messaging --test protocol --test cli --test acks --test consent "$@"
