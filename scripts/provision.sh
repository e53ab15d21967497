#!/usr/bin/env bash
# Installs what the cluster and its tests need, when missing: MariaDB (and
# Galera), Redis, nginx with the stream module, Chromium and its WebDriver.
# Debian/Ubuntu (apt-get); run as root.
# The tests start their own private instances of these programs on loopback,
# so nothing here needs to be running, only installed.
set -euo pipefail

need=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb-install-db >/dev/null 2>&1 || need+=(mariadb-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
# Galera clusters of MariaDB (start_galera): the replication library, and
# rsync, ss (or lsof) for the state transfers to joining nodes.
[ -e /usr/lib/galera/libgalera_smm.so ] || need+=(galera-4)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v ss >/dev/null 2>&1 || command -v lsof >/dev/null 2>&1 || need+=(iproute2)
# The web client's tests drive a real headless Chromium through WebDriver.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# CJK and emoji in the web client's screenshots.
[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || need+=(fonts-noto-color-emoji)

if [ ${#need[@]} -gt 0 ]; then
    echo "provision: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Debian starts the packaged nginx on port 80; we run our own.
    if [[ " ${need[*]} " == *" nginx "* ]]; then
        (nginx -s stop || service nginx stop || true) >/dev/null 2>&1
    fi
fi
