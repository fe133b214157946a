#!/usr/bin/env bash
# Re-create static/vendor/ from npm packages, pinned by version and checked by SHA-256.
# The files are committed, so the portal never needs npm or the network at run time; run this only
# to verify them or to move to a new pinned version (then update the version, hash and templates).
#
# htmx is pinned to the 2.0 line on purpose: htmx 4 dropped "HTTP 286 stops polling", which the
# live status partials rely on to stop themselves once a request has settled.
set -euo pipefail

HTMX_VERSION="2.0.11"
HTMX_SHA256="d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "npm is needed to fetch htmx.org@$HTMX_VERSION" >&2; exit 2; }

(cd "$work" && npm pack --silent "htmx.org@$HTMX_VERSION" >/dev/null)
tar -xzf "$work/htmx.org-$HTMX_VERSION.tgz" -C "$work"
echo "$HTMX_SHA256  $work/package/dist/htmx.min.js" | sha256sum --check --quiet

mkdir -p "$dest"
install -m 0644 "$work/package/dist/htmx.min.js" "$dest/htmx-$HTMX_VERSION.min.js"
install -m 0644 "$work/package/LICENSE" "$dest/htmx-$HTMX_VERSION.LICENSE"
echo "static/vendor/htmx-$HTMX_VERSION.min.js from npm package htmx.org@$HTMX_VERSION (sha256 $HTMX_SHA256)"
