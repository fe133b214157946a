#!/usr/bin/env bash
# Build the testbed's control-plane binaries from the Go module proxy into a cache keyed by version.
# Re-running is cheap: each component is skipped when its cache entry already holds a finished build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${GPU_PORTAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-portal}"
k8s_dir="$cache_root/k8s-$KUBE_VERSION"
etcd_dir="$cache_root/etcd-$ETCD_VERSION"
kwok_dir="$cache_root/kwok-$KWOK_VERSION"
karpenter_dir="$cache_root/karpenter-$KARPENTER_VERSION"
kueue_dir="$cache_root/kueue-$KUEUE_VERSION"

log() { printf '[testbed-build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Checked per component, so that `paths` and fully cached runs work without Go.
need_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "ERROR: Go is not installed (needed to build kube-apiserver, etcd, kwok, Karpenter and Kueue from source)."
    log "Install Go 1.26 or newer and put it on PATH, or point KUBECONFIG at an existing cluster instead."
    exit 2
  fi
  export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
}

build_kubernetes() {
  local out="$k8s_dir/bin"
  if [[ -f "$k8s_dir/.complete" ]]; then log "kubernetes $KUBE_VERSION: cached in $out"; return; fi
  need_go
  log "kubernetes $KUBE_VERSION: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (first time only; 5-15 min on 2 cores)"
  local work="$k8s_dir/src"
  rm -rf "$work" && mkdir -p "$work" "$out"
  cd "$work"
  go mod init gpu-portal.local/k8s-wrapper >/dev/null 2>&1
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  # k8s.io/kubernetes points its staging modules at ./staging; replace each with the published v0.Y.Z.
  local staging_version="v0.${KUBE_VERSION#v1.}"
  local -a edits=("-require=k8s.io/kubernetes@$KUBE_VERSION")
  while read -r mod; do
    edits+=("-replace=$mod=$mod@$staging_version")
  done < <(grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk '{print $1}')
  log "kubernetes $KUBE_VERSION: ${#edits[@]} go.mod edits derived from its go.mod ($gomod)"
  go mod edit "${edits[@]}"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  log "kubernetes $KUBE_VERSION: resolving dependencies"
  go mod tidy -e >/dev/null 2>"$work/tidy.log" || { cat "$work/tidy.log" >&2; exit 1; }
  local major minor
  major="$(cut -d. -f1 <<<"${KUBE_VERSION#v}")"; minor="$(cut -d. -f2 <<<"$KUBE_VERSION")"
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=$major -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    log "kubernetes $KUBE_VERSION: go build $cmd"
    go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  touch "$k8s_dir/.complete"
  log "kubernetes $KUBE_VERSION: done"
}

build_etcd() {
  local out="$etcd_dir/bin"
  if [[ -f "$etcd_dir/.complete" ]]; then log "etcd $ETCD_VERSION: cached in $out"; return; fi
  need_go
  log "etcd $ETCD_VERSION: building"
  local work="$etcd_dir/src"
  rm -rf "$work" && mkdir -p "$work" "$out"
  cd "$work"
  go mod init gpu-portal.local/etcd-wrapper >/dev/null 2>&1
  go mod edit "-require=go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go mod tidy -e >/dev/null 2>"$work/tidy.log" || { cat "$work/tidy.log" >&2; exit 1; }
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  touch "$etcd_dir/.complete"
  log "etcd $ETCD_VERSION: done"
}

build_kwok() {
  local out="$kwok_dir/bin"
  if [[ -f "$kwok_dir/.complete" ]]; then log "kwok $KWOK_VERSION: cached in $out"; return; fi
  need_go
  log "kwok $KWOK_VERSION: building kwok and kwokctl"
  mkdir -p "$out"
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  touch "$kwok_dir/.complete"
  log "kwok $KWOK_VERSION: done"
}

# The module's source directory in the Go module cache (downloaded when missing).
module_dir() {
  go mod download -json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error", "no Dir")))'
}

# Copy the manifests a cluster start needs out of the module cache, so `up` never needs Go.
copy_manifests() {
  local dest="$1"; shift
  mkdir -p "$dest"
  local file
  for file in "$@"; do
    [[ -f "$file" ]] || { log "ERROR: $file is missing from the module"; exit 1; }
    install -m 0644 "$file" "$dest/"
  done
}

build_karpenter() {
  local out="$karpenter_dir/bin"
  if [[ -f "$karpenter_dir/.complete" ]]; then log "karpenter $KARPENTER_VERSION: cached in $out"; return; fi
  need_go
  rm -rf "$karpenter_dir" && mkdir -p "$out"
  log "karpenter $KARPENTER_VERSION: fetching the module (sigs.k8s.io/karpenter)"
  local src
  src="$(module_dir "sigs.k8s.io/karpenter@$KARPENTER_VERSION")"
  copy_manifests "$karpenter_dir/crds" "$src"/kwok/charts/crds/*.yaml "$src"/kwok/apis/crds/*.yaml
  log "karpenter $KARPENTER_VERSION: $(ls "$karpenter_dir/crds" | wc -l) CRDs copied; building its kwok provider (first time only; 1-4 min on 2 cores)"
  # The provider's command is named kwok like kwok's own controller, hence a bin directory of its own.
  GOBIN="$out" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/karpenter/pkg/operator.Version=$KARPENTER_VERSION" \
    "sigs.k8s.io/karpenter/kwok@$KARPENTER_VERSION"
  touch "$karpenter_dir/.complete"
  log "karpenter $KARPENTER_VERSION: done"
}

build_kueue() {
  local out="$kueue_dir/bin"
  if [[ -f "$kueue_dir/.complete" ]]; then log "kueue $KUEUE_VERSION: cached in $out"; return; fi
  need_go
  rm -rf "$kueue_dir" && mkdir -p "$out"
  log "kueue $KUEUE_VERSION: fetching the module (sigs.k8s.io/kueue)"
  local src
  src="$(module_dir "sigs.k8s.io/kueue@$KUEUE_VERSION")"
  copy_manifests "$kueue_dir/crds" "$src"/config/components/crd/bases/*.yaml
  copy_manifests "$kueue_dir/webhook" "$src/config/components/webhook/manifests.yaml"
  log "kueue $KUEUE_VERSION: $(ls "$kueue_dir/crds" | wc -l) CRDs and the webhook manifests copied; building (first time only; 2-5 min on 2 cores)"
  GOBIN="$out" go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  touch "$kueue_dir/.complete"
  log "kueue $KUEUE_VERSION: done"
}

# Helm, for the chart's lint, template and dry-run checks (charts/gpu-capacity-portal), and the
# ServiceMonitor CRD those checks need on the testbed apiserver. Both are version-keyed cache entries.
helm_dir="$cache_root/helm-$HELM_VERSION"
prom_crds_dir="$cache_root/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"

build_helm() {
  local out="$helm_dir/bin"
  if [[ -f "$helm_dir/.complete" ]]; then log "helm $HELM_VERSION: cached in $out"; return; fi
  need_go
  log "helm $HELM_VERSION: building (first time only; 5-11 min on 2 cores with cold Go caches)"
  mkdir -p "$out"
  local gomod
  gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  # As Helm's Makefile does: the default Kubernetes version (.Capabilities.KubeVersion, lint's
  # deprecation checks) is the release of the client-go Helm is built with (v0.37 -> 1.37); without
  # these it is v1.20.
  local client_go major minor
  client_go="$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")"
  [[ "$client_go" =~ ^v0\.([0-9]+)\.([0-9]+) ]] || { log "ERROR: no k8s.io/client-go version in $gomod"; exit 1; }
  major=1; minor="${BASH_REMATCH[1]}"
  local v=helm.sh/helm/v3
  local ldflags="-s -w -X $v/internal/version.version=$HELM_VERSION -X $v/internal/version.metadata="
  ldflags+=" -X $v/internal/version.gitTreeState=clean"
  ldflags+=" -X $v/pkg/chartutil.k8sVersionMajor=$major -X $v/pkg/chartutil.k8sVersionMinor=$minor"
  ldflags+=" -X $v/pkg/lint/rules.k8sVersionMajor=$major -X $v/pkg/lint/rules.k8sVersionMinor=$minor"
  log "helm $HELM_VERSION: go install (client-go $client_go, default Kubernetes v$major.$minor)"
  GOBIN="$out" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  "$out/helm" version --short >/dev/null
  log "helm $HELM_VERSION: built ($("$out/helm" version --short))"
  # The CRD comes from the prometheus-operator module, which the module proxy serves like any other.
  if [[ ! -f "$prom_crds_dir/.complete" ]]; then
    log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION: fetching the ServiceMonitor CRD"
    local dir
    dir="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    mkdir -p "$prom_crds_dir"
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$prom_crds_dir/"
    touch "$prom_crds_dir/.complete"
  fi
  touch "$helm_dir/.complete"
  log "helm $HELM_VERSION: done"
}

case "${1:-all}" in
  all) build_etcd; build_kwok; build_kubernetes; build_karpenter; build_kueue; build_helm ;;
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  kwok) build_kwok ;;
  karpenter) build_karpenter ;;
  kueue) build_kueue ;;
  helm) build_helm ;;
  paths)
    echo "KUBE_BIN=$k8s_dir/bin"; echo "ETCD_BIN=$etcd_dir/bin"; echo "KWOK_BIN=$kwok_dir/bin"
    echo "KARPENTER_DIR=$karpenter_dir"; echo "KUEUE_DIR=$kueue_dir"
    echo "KARPENTER_VERSION=$KARPENTER_VERSION"; echo "KUEUE_VERSION=$KUEUE_VERSION"
    echo "HELM_BIN=$helm_dir/bin"; echo "PROMETHEUS_CRDS=$prom_crds_dir" ;;
  *) echo "usage: $0 [all|kubernetes|etcd|kwok|karpenter|kueue|helm|paths]" >&2; exit 2 ;;
esac
