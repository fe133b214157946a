#!/usr/bin/env bash
# `make run`: the whole portal in the foreground on embedded defaults. Ctrl-C stops everything.
#
#   CELERY_BROKER_URL   use this broker instead of starting a local Redis on 127.0.0.1:6390
#   PORTAL_KUBECONFIG   register this cluster instead of starting the local testbed
#   PORTAL_NO_TESTBED=1 start without any cluster (requests can be made; provisioning waits for a cluster)
#   PORTAL_PORT         web port (default 8000)
#   PORTAL_DEMO_SSO=1   single sign-on: start Keycloak with the demo realm on 127.0.0.1:8180 (PORTAL_KEYCLOAK_PORT)
#                       and sign people in through it; only `admin` keeps a local (break-glass) password
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
PORT="${PORTAL_PORT:-8000}"
mkdir -p var/log
pids=()

log() { printf '\033[1m[run]\033[0m %s\n' "$*"; }

cleanup() {
  trap - INT TERM EXIT
  log "stopping…"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Keycloak runs Java as a child of kc.sh: stop its whole process group.
  [[ -n "${kc_pgid:-}" ]] && kill -- "-$kc_pgid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

if [[ -z "${CELERY_BROKER_URL:-}" ]]; then
  if ! command -v redis-server >/dev/null; then
    log "redis-server is missing: installing Debian's redis-server"
    bash scripts/services.sh redis-install
  fi
  export CELERY_BROKER_URL=redis://127.0.0.1:6390/0
  if ! redis-cli -p 6390 ping >/dev/null 2>&1; then
    log "starting Redis on 127.0.0.1:6390 (data in var/redis)"
    mkdir -p var/redis
    redis-server --port 6390 --bind 127.0.0.1 --dir var/redis --save 60 1 --logfile "$PWD/var/log/redis.log" &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
fi

kubeconfig="${PORTAL_KUBECONFIG:-}"
if [[ -z "$kubeconfig" && -z "${PORTAL_NO_TESTBED:-}" ]]; then
  log "starting the local Kubernetes testbed with Karpenter and Kueue (first run builds them from source: about 25 minutes, progress below)"
  make --no-print-directory testbed-up PYTHON="$PY"
  kubeconfig=var/testbed/kubeconfig
  # The testbed's kwok Stages simulate model loading from an annotation the portal then sets, and
  # Karpenter's health port tells the portal whether autoscaling is available.
  export PORTAL_SIMULATED_MODEL_LOAD="${PORTAL_SIMULATED_MODEL_LOAD:-true}"
  karpenter_health=$($PY -c 'import sys; sys.path.insert(0, "scripts/testbed"); import testbed; print(testbed.engine_ports("gpu-portal").get("karpenterHealth", ""))' 2>/dev/null || true)
fi

seed_args=()
if [[ -n "${PORTAL_DEMO_SSO:-}" ]]; then
  kc_port="${PORTAL_KEYCLOAK_PORT:-8180}"
  kc_url="http://127.0.0.1:$kc_port/realms/gpu-portal"
  log "starting Keycloak with the demo realm on http://127.0.0.1:$kc_port (admin console: admin / admin; log in var/log/keycloak.log)"
  setsid bash scripts/keycloak.sh start --port "$kc_port" --state-dir "$PWD/var/keycloak" >var/log/keycloak.log 2>&1 &
  kc_pgid=$!
  pids+=($!)
  for _ in $(seq 600); do
    curl -sf "$kc_url/.well-known/openid-configuration" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { log "Keycloak did not start; see var/log/keycloak.log"; exit 1; }
    sleep 1
  done
  curl -sf "$kc_url/.well-known/openid-configuration" >/dev/null || { log "Keycloak did not answer; see var/log/keycloak.log"; exit 1; }
  export PORTAL_OIDC_ENABLED=true PORTAL_OIDC_CLIENT_ID=gpu-portal PORTAL_OIDC_CLIENT_SECRET=gpu-portal-demo-secret
  export PORTAL_OIDC_AUTHORIZATION_ENDPOINT="$kc_url/protocol/openid-connect/auth"
  export PORTAL_OIDC_TOKEN_ENDPOINT="$kc_url/protocol/openid-connect/token"
  export PORTAL_OIDC_USER_ENDPOINT="$kc_url/protocol/openid-connect/userinfo"
  export PORTAL_OIDC_JWKS_ENDPOINT="$kc_url/protocol/openid-connect/certs"
  seed_args+=(--sso)
fi

log "migrating the database"
$PY manage.py migrate --no-input -v0
if [[ -n "$kubeconfig" ]]; then
  if [[ -n "${karpenter_health:-}" ]]; then
    seed_args+=(--autoscaler-health-url "http://127.0.0.1:$karpenter_health/readyz")
  fi
  $PY manage.py seed_demo --kubeconfig "$kubeconfig" "${seed_args[@]}"
else
  $PY manage.py seed_demo "${seed_args[@]}"
fi

log "starting worker and beat (logs in var/log/)"
.venv/bin/celery -A portal worker --loglevel INFO --concurrency 2 >var/log/worker.log 2>&1 &
pids+=($!)
.venv/bin/celery -A portal beat --loglevel INFO --schedule var/celerybeat-schedule >var/log/beat.log 2>&1 &
pids+=($!)
if [[ -n "$kubeconfig" ]]; then
  log "starting the utilisation collector (log in var/log/collector.log)"
  $PY manage.py collect_utilisation >var/log/collector.log 2>&1 &
  pids+=($!)
fi

log "portal: http://127.0.0.1:$PORT/  (admin: http://127.0.0.1:$PORT/admin/)  Ctrl-C stops everything"
$PY manage.py runserver "127.0.0.1:$PORT" &
pids+=($!)
wait -n "${pids[@]}"
