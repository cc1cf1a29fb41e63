#!/usr/bin/env bash
# Makes sure a redis-server binary exists for the embedded runtime.
# Skipped when REDIS_URL points at an external Redis.
set -euo pipefail
[ -n "${REDIS_URL:-}" ] && exit 0
command -v redis-server >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[services] installing redis-server with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq redis-server >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq redis-server >/dev/null; }
    # The Debian package may start a system service on :6379; the embedded runtime uses its own port.
    command -v redis-server >/dev/null 2>&1 && exit 0
fi
cat >&2 <<'MSG'
redis-server is not installed and could not be installed automatically.
Install it (Debian/Ubuntu: `sudo apt-get install redis-server`, macOS: `brew install redis`)
or point streamrec at an existing Redis with REDIS_URL=redis://host:6379/0.
MSG
exit 1
