#!/usr/bin/env bash
# Makes sure the embedded Apache Kafka can run: a Java 17+ runtime and Maven (which fetches the
# Kafka jars from Maven Central once, into ~/.cache/streamrec). Installs Debian's
# default-jre-headless and maven with apt-get when they are missing and we are root; otherwise
# says what to install. Then fetches the jars, so that the first test or demo does not wait for
# Maven. Skipped when KAFKA_BOOTSTRAP_SERVERS points at an existing Kafka or the embedded broker
# is Tansu (STREAMREC_RUNTIME_BROKER=tansu, no Java needed).
set -euo pipefail
[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}${STREAMREC_KAFKA_BOOTSTRAP_SERVERS:-}" ] && exit 0
[ "${STREAMREC_RUNTIME_BROKER:-kafka}" = tansu ] && exit 0
VENV=${VENV:-.venv}

java_major() {
    # `openjdk version "17.0.15" ...` -> 17; `java version "1.8.0_392"` -> 8
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\)\.\{0,1\}\([0-9]*\).*/\1 \2/p' | head -1 \
        | awk '{ print ($1 == 1 ? $2 : $1) }'
}

have_tools() {
    command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 \
        && [ "$(java_major)" -ge 17 ] 2>/dev/null
}

if ! have_tools && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[services] installing a Java runtime and Maven with apt-get (the embedded Apache Kafka)"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(default-jre-headless maven)
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
fi
if ! have_tools; then
    cat >&2 <<'MSG'
The embedded Apache Kafka needs a Java 17+ runtime and Maven, which are missing (or Java is
older than 17) and could not be installed automatically.
Install them (Debian/Ubuntu: `sudo apt-get install default-jre-headless maven`; on releases whose
default Java is older than 17: `openjdk-17-jre-headless`; macOS: `brew install openjdk maven`),
or use the Java-free in-memory broker (STREAMREC_RUNTIME_BROKER=tansu, or
`--set runtime.broker=tansu`), or an existing Kafka (KAFKA_BOOTSTRAP_SERVERS=host:9092).
MSG
    exit 1
fi
if [ -x "$VENV/bin/python" ]; then
    # Instant once done (a stamp file); the first time Maven downloads ~60 MB (~20 s).
    "$VENV/bin/python" -c 'import logging, sys
logging.basicConfig(level=logging.INFO, format="[services] %(message)s")
from deploy.kafka_broker import ensure_kafka_jars
from streaming.errors import StreamrecError
try:
    ensure_kafka_jars()
except StreamrecError as exc:
    sys.exit(f"[services] {exc}")'
fi
