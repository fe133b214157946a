#!/usr/bin/env bash
# Install (when absent) and start the PostgreSQL and Redis servers the test suite runs against.
# Idempotent: a server already answering on its port is left alone. Data lives under /var/tmp so the
# postgres system user can reach it whatever directory the checkout is in.
set -euo pipefail

PG_PORT="${PORTAL_TEST_PG_PORT:-55432}"
REDIS_PORT="${PORTAL_TEST_REDIS_PORT:-56379}"
STATE_DIR="${PORTAL_SERVICES_DIR:-/var/tmp/gpu-portal-services}"

log() { printf '[services] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    log "ERROR: $* is missing and installing it needs root (apt-get install $*)."
    exit 2
  fi
  if [[ $apt_updated -eq 0 ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
  echo "$dir"
}

start_postgres() {
  [[ -n "$(pg_bin)" ]] || apt_install postgresql
  local bin data="$STATE_DIR/pg" sock="$STATE_DIR/pg-socket"
  bin="$(pg_bin)"
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
    return
  fi
  mkdir -p "$STATE_DIR" "$sock"
  chmod 755 "$STATE_DIR"
  local runas=()
  if [[ $(id -u) -eq 0 ]]; then
    # initdb and postgres refuse to run as root.
    chown postgres:postgres "$sock"
    [[ -d "$data" ]] && chown -R postgres:postgres "$data"
    runas=(runuser -u postgres --)
  fi
  if [[ ! -f "$data/PG_VERSION" ]]; then
    log "initdb $data"
    mkdir -p "$data"; [[ $(id -u) -eq 0 ]] && chown postgres:postgres "$data"
    "${runas[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  log "starting PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"
  # Test-only tuning: durability is not needed for a throwaway database, speed is.
  "${runas[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start -o \
    "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $sock -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
}

start_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    log "Redis already running on 127.0.0.1:$REDIS_PORT"
    return
  fi
  mkdir -p "$STATE_DIR/redis"
  log "starting Redis $(redis-server --version | awk '{print $3}' | sed 's/^v=//') on 127.0.0.1:$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --dir "$STATE_DIR/redis" \
    --logfile "$STATE_DIR/redis/redis.log" --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return; sleep 0.1; done
  log "ERROR: Redis did not start; see $STATE_DIR/redis/redis.log"; exit 1
}

ensure_chromium() {
  # Browser tests drive Debian's Chromium through Playwright; Playwright never downloads a browser here.
  command -v chromium >/dev/null || apt_install chromium
}

ensure_prometheus() {
  # The Prometheus data-source tests run Debian's server against a fixture exporter.
  [[ -x /usr/bin/prometheus ]] || apt_install prometheus
}

stop_all() {
  local bin; bin="$(pg_bin)"
  if [[ -n "$bin" && -f "$STATE_DIR/pg/postmaster.pid" ]]; then
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$bin/pg_ctl" -D "$STATE_DIR/pg" -m fast stop >/dev/null || true
    else "$bin/pg_ctl" -D "$STATE_DIR/pg" -m fast stop >/dev/null || true; fi
  fi
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}

case "${1:-up}" in
  up) start_postgres; start_redis; ensure_chromium; ensure_prometheus
      echo "DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/portal"
      echo "CELERY_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0" ;;
  redis) start_redis ;;
  redis-install) command -v redis-server >/dev/null || apt_install redis-server ;;
  chromium) ensure_chromium ;;
  prometheus) ensure_prometheus ;;
  down) stop_all ;;
  *) echo "usage: $0 [up|down|redis|chromium|prometheus]" >&2; exit 2 ;;
esac
