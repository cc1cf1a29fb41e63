#!/usr/bin/env bash
# Installs Debian's Chromium for the dashboard's browser test when it is missing and we can
# (root + apt-get). Not fatal: without a browser that one test is skipped and says why.
set -uo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[services] installing chromium with apt-get (browser test of the dashboard)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null 2>&1; }
fi
command -v chromium >/dev/null 2>&1 || echo "[services] chromium not available: the browser test will be skipped" >&2
exit 0
