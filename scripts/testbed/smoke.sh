#!/usr/bin/env bash
# End-to-end checks of a running testbed (`make testbed-up` first): the real scheduler places GPU
# pods by pool, taints and capacity; ResourceQuota and ValidatingAdmissionPolicy are enforced;
# Deployments become Ready; the apiserver can be stopped and started on its own.
# Usage: scripts/testbed/smoke.sh [cluster-name]   (PYTHON: interpreter for testbed.py;
#        SMOKE_RESTART_APISERVER=0 skips the apiserver stop/start check)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
name="${1:-gpu-portal}"
python="${PYTHON:-python3}"
if [[ "$name" == gpu-portal ]]; then kubeconfig="$root/var/testbed/kubeconfig"; else kubeconfig="$root/var/testbed/$name/kubeconfig"; fi
[[ -f "$kubeconfig" ]] || { echo "no kubeconfig at $kubeconfig; run make testbed-up" >&2; exit 2; }
eval "$(bash "$here/build.sh" paths)"
k() { "$KUBE_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }

prefix=accelerator.platform.example.com
ns="testbed-smoke-$$"
quota_ns="$ns-quota"
deny_ns="$ns-deny"
failures=0
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
cleanup() {
  k delete namespace "$ns" "$quota_ns" "$deny_ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  k delete validatingadmissionpolicybinding,validatingadmissionpolicy "$ns" --ignore-not-found >/dev/null 2>&1 || true
}
trap cleanup EXIT

# A pod that sleeps forever; $1 name, $2 extra spec YAML (indented 2 spaces), $3 GPU limit line.
pod() {
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
$2
  containers:
  - name: main
    image: registry.invalid/sleep:1
    resources:
      limits: {cpu: 100m, memory: 128Mi$3}
EOF
}
interactive_tolerations="  tolerations:
  - {key: $prefix/gpu, operator: Equal, value: 'true', effect: NoSchedule}
  - {key: $prefix/pool, operator: Equal, value: interactive-a100, effect: NoSchedule}"
interactive_selector="  nodeSelector: {$prefix/pool: interactive-a100}"
node_pool() { k get node "$1" -o jsonpath="{.metadata.labels.accelerator\.platform\.example\.com/pool}"; }
wait_sa() { for _ in $(seq 60); do k -n "$1" get serviceaccount default >/dev/null 2>&1 && return; sleep 0.5; done; }

version="$(k version -o json | "$python" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"
[[ "$version" == v1.36.1 ]] && pass "server version $version" || fail "server version $version"

gpu="$(k get node interactive-a100-zone-a-0 -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')"
mig="$(k get node experimentation-mig-zone-a-0 -o jsonpath='{.status.allocatable.nvidia\.com/mig-1g\.10gb}')"
[[ "$gpu" == 8 && "$mig" == 32 ]] && pass "allocatable nvidia.com/gpu=$gpu, nvidia.com/mig-1g.10gb=$mig" \
  || fail "allocatable nvidia.com/gpu=$gpu, nvidia.com/mig-1g.10gb=$mig"

k create namespace "$ns" >/dev/null
wait_sa "$ns"

pod gpu-pod "$interactive_tolerations
$interactive_selector" ", nvidia.com/gpu: 1" | k -n "$ns" apply -f - >/dev/null
if k -n "$ns" wait pod/gpu-pod --for=condition=Ready --timeout=60s >/dev/null; then
  node="$(k -n "$ns" get pod gpu-pod -o jsonpath='{.spec.nodeName}')"
  [[ "$(node_pool "$node")" == interactive-a100 ]] && pass "1-GPU pod Running on $node" || fail "1-GPU pod landed on $node"
else
  fail "1-GPU pod did not become Ready"
fi

pod plain-pod "" "" | k -n "$ns" apply -f - >/dev/null
pod untolerated-gpu-pod "$interactive_selector" ", nvidia.com/gpu: 1" | k -n "$ns" apply -f - >/dev/null
pod nine-gpu-pod "$interactive_tolerations" ", nvidia.com/gpu: 9" | k -n "$ns" apply -f - >/dev/null
k -n "$ns" wait pod/plain-pod --for=condition=Ready --timeout=60s >/dev/null || true
node="$(k -n "$ns" get pod plain-pod -o jsonpath='{.spec.nodeName}')"
[[ "$(node_pool "$node")" == general-cpu ]] && pass "pod without tolerations Running on CPU node $node" \
  || fail "pod without tolerations on '$node'"
for p in untolerated-gpu-pod nine-gpu-pod; do
  if k -n "$ns" wait "pod/$p" --timeout=30s \
      --for=jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}'=Unschedulable >/dev/null; then
    pass "$p Pending/Unschedulable: $(k -n "$ns" get pod "$p" -o jsonpath='{.status.conditions[0].message}')"
  else
    fail "$p was not reported Unschedulable"
  fi
done

k -n "$ns" delete pod plain-pod --timeout=30s >/dev/null && ! k -n "$ns" get pod plain-pod >/dev/null 2>&1 \
  && pass "pod deletion completes" || fail "pod deletion"

k create namespace "$quota_ns" >/dev/null
wait_sa "$quota_ns"
k -n "$quota_ns" create quota gpu --hard=requests.nvidia.com/gpu=1 >/dev/null
# Admission refuses everything in the namespace until the controller-manager has computed status.
k -n "$quota_ns" wait resourcequota/gpu --for=jsonpath='{.status.hard.requests\.nvidia\.com/gpu}'=1 --timeout=30s >/dev/null
if out="$(pod two-gpu-pod "$interactive_tolerations" ", nvidia.com/gpu: 2" | k -n "$quota_ns" apply -f - 2>&1)"; then
  fail "2-GPU pod was admitted despite the quota"
elif [[ "$out" == *"exceeded quota"* ]]; then
  pass "quota: $out"
else
  fail "2-GPU pod refused for another reason: $out"
fi

k create namespace "$deny_ns" >/dev/null
k label namespace "$deny_ns" testbed-smoke/deny-pods=true >/dev/null
wait_sa "$deny_ns"
k apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: $ns}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  validations:
  - {expression: "false", message: "pods are not allowed in namespaces labelled testbed-smoke/deny-pods"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: $ns}
spec:
  policyName: $ns
  validationActions: [Deny]
  matchResources:
    namespaceSelector: {matchLabels: {testbed-smoke/deny-pods: "true"}}
EOF
# The policy becomes active once the apiserver's policy informer has synced it.
denied=""
for _ in $(seq 30); do
  if out="$(pod denied-pod "" "" | k -n "$deny_ns" apply -f - 2>&1)"; then
    k -n "$deny_ns" delete pod denied-pod --wait=false >/dev/null
    sleep 1
  else
    denied="$out"; break
  fi
done
[[ "$denied" == *"ValidatingAdmissionPolicy"* ]] && pass "policy: $denied" || fail "policy did not deny: ${denied:-admitted}"
pod allowed-pod "" "" | k -n "$ns" apply -f - >/dev/null 2>&1 && pass "policy leaves unlabelled namespaces alone" \
  || fail "policy denied a pod in an unlabelled namespace"

k -n "$ns" create deployment web --image=registry.invalid/web:1 --replicas=2 >/dev/null
if k -n "$ns" rollout status deployment/web --timeout=60s >/dev/null; then
  pass "deployment readyReplicas=$(k -n "$ns" get deployment web -o jsonpath='{.status.readyReplicas}')"
else
  fail "deployment did not become ready"
fi

if [[ "${SMOKE_RESTART_APISERVER:-1}" == 1 ]]; then
  tb() { (cd "$root/scripts/testbed" && "$python" -c "import testbed; testbed.$1('$name')"); }
  tb stop_apiserver
  if k get --raw /readyz --request-timeout=2s >/dev/null 2>&1; then fail "apiserver still answers after stop_apiserver"; else pass "apiserver down after stop_apiserver"; fi
  tb start_apiserver
  k get --raw /readyz >/dev/null && pass "apiserver back after start_apiserver" || fail "apiserver not back"
  k -n "$ns" scale deployment/web --replicas=3 >/dev/null
  k -n "$ns" rollout status deployment/web --timeout=60s >/dev/null \
    && pass "controllers and scheduler still work after the restart (readyReplicas=3)" || fail "scale-up after restart"
fi

echo "$failures failure(s)"
[[ "$failures" == 0 ]]
