#!/usr/bin/env bash
# Keycloak for the single sign-on tests and the SSO demo: the pinned distribution, fetched from Maven Central
# with Maven into a cache keyed by its version, unpacked and built for dev mode once.
#
#   scripts/keycloak.sh [install]   fetch, unpack and build (first time only); prints the home directory last
#   scripts/keycloak.sh path        prints the home directory
#   scripts/keycloak.sh start --port PORT --state-dir DIR [--realm FILE]
#       runs one instance in the foreground: dev mode, in-memory database, 127.0.0.1 only, the realm imported
#       from FILE (default testbed/gpu-portal-realm.json; Keycloak wants it named <realm>-realm.json). Its admin
#       is KC_BOOTSTRAP_ADMIN_USERNAME / KC_BOOTSTRAP_ADMIN_PASSWORD (default admin / admin).
set -euo pipefail

# 26.7.x runs on Java 17, which is what Debian bookworm has (it has no Java 21 package).
KEYCLOAK_VERSION="${KEYCLOAK_VERSION:-26.7.3}"
JAVA_MIN=17

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${GPU_PORTAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-portal}"
kc_dir="$cache_root/keycloak-$KEYCLOAK_VERSION"
kc_home="$kc_dir/keycloak-$KEYCLOAK_VERSION"
# lib/quarkus as dev mode re-builds it for BUILD_OPTS: copied into each instance so that none pays the
# one to two minutes of that build again. Changing BUILD_OPTS needs a new cache entry (delete $kc_dir).
dev_build="$kc_dir/dev-lib-quarkus"
BUILD_OPTS=(--db dev-mem --health-enabled false --metrics-enabled false)

log() { printf '[keycloak %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { log "ERROR: $*"; exit 2; }

apt_install() {
  [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

java_major() {
  # 'openjdk version "17.0.15" 2025-04-15' (or "1.8.0_412" for Java 8), on stderr.
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

need_java() {
  if ! command -v java >/dev/null 2>&1; then
    log "Java is missing: apt-get install openjdk-17-jre-headless"
    apt_install openjdk-17-jre-headless ||
      fail "Java is not installed; Keycloak $KEYCLOAK_VERSION needs Java $JAVA_MIN or newer on PATH (Debian: openjdk-17-jre-headless)."
  fi
  local major
  major="$(java_major)"
  [[ "$major" =~ ^[0-9]+$ ]] || fail "could not read the Java version from 'java -version'."
  ((major >= JAVA_MIN)) || fail "Java $major found; Keycloak $KEYCLOAK_VERSION needs Java $JAVA_MIN or newer on PATH."
}

need_maven() {
  command -v mvn >/dev/null 2>&1 && return
  log "Maven is missing: apt-get install maven"
  apt_install maven || fail "Maven (mvn) is not installed; it fetches org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip."
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# An instance's home: dev mode writes lib/quarkus and data/ under its home, so instances never share those.
# The 170 MB of jars and the themes are linked from the cache, not copied.
make_home() {
  local home="$1" quarkus="$2"
  rm -rf "$home" && mkdir -p "$home/lib" "$home/data/import" "$home/providers"
  cp -a "$kc_home/bin" "$kc_home/conf" "$home/"
  cp -a "$kc_home/lib/app" "$kc_home/lib/quarkus-run.jar" "$home/lib/"
  cp -a "$quarkus" "$home/lib/quarkus"
  ln -s "$kc_home/lib/lib" "$home/lib/lib"
  ln -s "$kc_home/themes" "$home/themes"
}

kc_env() {
  export KC_BOOTSTRAP_ADMIN_USERNAME="${KC_BOOTSTRAP_ADMIN_USERNAME:-admin}"
  export KC_BOOTSTRAP_ADMIN_PASSWORD="${KC_BOOTSTRAP_ADMIN_PASSWORD:-admin}"
  # Keycloak's own default heap is 512 MB: enough for a realm of a few users, on a machine shared with the
  # testbed. C1-only JIT starts it about three times faster, which is all a test or a demo needs.
  export JAVA_OPTS_KC_HEAP="${JAVA_OPTS_KC_HEAP:--Xms64m -Xmx512m}"
  export JAVA_OPTS_APPEND="${JAVA_OPTS_APPEND:--XX:TieredStopAtLevel=1}"
}

# Dev mode re-builds the server for its options at the first start. Do it once here: start a throw-away
# instance, wait until the build is written (dev mode announces itself right after), stop it, keep lib/quarkus.
build_dev() {
  local home="$kc_dir/dev-build" started=$SECONDS
  make_home "$home" "$kc_home/lib/quarkus"
  log "keycloak $KEYCLOAK_VERSION: one-time dev-mode build (1-3 min on 2 cores)"
  kc_env
  : >"$kc_dir/dev-build.log"
  "$home/bin/kc.sh" start-dev "${BUILD_OPTS[@]}" --http-host 127.0.0.1 --http-port "$(free_port)" \
    >"$kc_dir/dev-build.log" 2>&1 &
  local pid=$! built=0
  for _ in $(seq 900); do
    if grep -q "Running the server in development mode" "$kc_dir/dev-build.log"; then built=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if ((built == 0)); then
    tail -n 30 "$kc_dir/dev-build.log" >&2
    fail "the dev-mode build of Keycloak failed (log: $kc_dir/dev-build.log)."
  fi
  rm -rf "$dev_build" && cp -a "$home/lib/quarkus" "$dev_build"
  rm -rf "$home"
  log "keycloak $KEYCLOAK_VERSION: dev-mode build done in $((SECONDS - started)) s"
}

install_locked() {
  if [[ -f "$kc_dir/.complete" && -x "$kc_home/bin/kc.sh" && -d "$dev_build" ]]; then
    log "keycloak $KEYCLOAK_VERSION: cached in $kc_home"
    return
  fi
  need_maven
  command -v unzip >/dev/null 2>&1 || apt_install unzip || fail "unzip is missing and could not be installed."
  local started=$SECONDS
  rm -rf "$kc_home" "$dev_build" "$kc_dir/.complete"
  mkdir -p "$kc_dir"
  log "keycloak $KEYCLOAK_VERSION: fetching org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip with Maven (170 MB, first time only)"
  # Maven keeps a copy in ~/.m2 as well, so wiping this cache does not download it again.
  if ! mvn -B -q -ntp dependency:copy \
    "-Dartifact=org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
    "-DoutputDirectory=$kc_dir" -Dmdep.overWriteReleases=true >"$kc_dir/mvn.log" 2>&1; then
    tail -n 20 "$kc_dir/mvn.log" >&2
    fail "Maven could not fetch org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip (log: $kc_dir/mvn.log)."
  fi
  local zip="$kc_dir/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip"
  [[ -f "$zip" ]] || fail "Maven finished but $zip is missing (log: $kc_dir/mvn.log)."
  log "keycloak $KEYCLOAK_VERSION: fetched $(du -h "$zip" | cut -f1) in $((SECONDS - started)) s; unpacking"
  unzip -q -o "$zip" -d "$kc_dir"
  [[ -x "$kc_home/bin/kc.sh" ]] || fail "the archive did not hold keycloak-$KEYCLOAK_VERSION/bin/kc.sh."
  rm -f "$zip"
  build_dev
  touch "$kc_dir/.complete"
  log "keycloak $KEYCLOAK_VERSION: ready in $kc_home ($((SECONDS - started)) s in all)"
}

install() {
  need_java
  mkdir -p "$cache_root"
  # Several checkouts share the cache: one fetches and builds, the others wait for it.
  exec 9>"$cache_root/keycloak-$KEYCLOAK_VERSION.lock"
  flock 9
  install_locked
  flock -u 9
  exec 9>&-
}

start() {
  local port="" state="" realm="$repo/testbed/gpu-portal-realm.json"
  while (($#)); do
    case "$1" in
      --port) port="$2"; shift 2 ;;
      --state-dir) state="$2"; shift 2 ;;
      --realm) realm="$2"; shift 2 ;;
      *) fail "unknown option $1" ;;
    esac
  done
  [[ -n "$port" && -n "$state" ]] || fail "start needs --port PORT --state-dir DIR"
  [[ -f "$realm" ]] || fail "realm file $realm not found"
  [[ "$(basename "$realm")" == *-realm.json ]] || fail "Keycloak imports only files named <realm>-realm.json, not $(basename "$realm")"
  install
  make_home "$state/home" "$dev_build"
  cp "$realm" "$state/home/data/import/"
  kc_env
  log "keycloak $KEYCLOAK_VERSION: starting on http://127.0.0.1:$port (home $state/home)"
  exec "$state/home/bin/kc.sh" start-dev "${BUILD_OPTS[@]}" --http-host 127.0.0.1 --http-port "$port" \
    --import-realm --log-level WARN,org.keycloak.services:INFO,io.quarkus:INFO
}

case "${1:-install}" in
  install) install; echo "$kc_home" ;;
  path) echo "$kc_home" ;;
  start) shift; start "$@" ;;
  *) echo "usage: $0 [install|path|start --port PORT --state-dir DIR [--realm FILE]]" >&2; exit 2 ;;
esac
