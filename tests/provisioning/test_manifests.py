"""The pure builders and comparison helpers: no database, no cluster."""

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from pools import manifests as pm
from pools.kube.objects import GPU_TAINT_KEY, POOL_LABEL, ContractAnnotation
from pools.models import PoolClass
from quotas import manifests as qm
from quotas.reconcile import Condition, diff, merge_conditions


def contract(**overrides: object) -> qm.GrantContract:
    values: dict[str, object] = {
        "grant_id": 7,
        "namespace": "vision-interactive-r12",
        "team": "vision",
        "group": "team:vision",
        "pool_class": PoolClass.INTERACTIVE.value,
        "pool": "interactive-a100",
        "pool_label_key": POOL_LABEL,
        "node_selector": {POOL_LABEL: "interactive-a100"},
        "accelerator": "a100-80gb",
        "accelerator_type": "nvidia-a100",
        "product": "NVIDIA-A100-SXM4-80GB",
        "resource": "nvidia.com/gpu",
        "taint_key": POOL_LABEL,
        "taint_value": "interactive-a100",
        "taint_effect": "NoSchedule",
        "gpu_taint_key": GPU_TAINT_KEY,
        "priority_class_name": "gpu-interactive-inference",
        "zones": ("zone-a", "zone-b"),
        "gpus": 4,
        "max_gpus_per_pod": 4,
        "pods": 24,
        "cpu": "32",
        "memory": "256Gi",
        "default_request": {"cpu": "500m", "memory": "1Gi"},
        "default_limit": {"memory": "4Gi"},
    }
    values.update(overrides)
    return qm.GrantContract(**values)  # type: ignore[arg-type]


def serving(**overrides: object) -> qm.ServingSpec:
    values: dict[str, object] = {
        "deployment_id": 3,
        "name": "chat",
        "model_name": "llama-3-8b",
        "image": "registry.example.com/llm/vllm:v0.6.3",
        "replicas": 2,
        "gpus_per_replica": 1,
        "args": ("--max-model-len", "8192"),
        "env": (("VLLM_LOGGING_LEVEL", "INFO"),),
        "load_budget_seconds": 600,
    }
    values.update(overrides)
    return qm.ServingSpec(**values)  # type: ignore[arg-type]


# --- per-grant objects ----------------------------------------------------------------------------


def test_namespace_carries_ownership_labels_pod_security_and_the_contract() -> None:
    ns = qm.namespace(contract())
    assert ns["metadata"]["name"] == "vision-interactive-r12"
    assert ns["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "gpu-capacity-portal",
        "capacity.platform.example.com/team": "vision",
        "capacity.platform.example.com/pool-class": "interactive-inference",
        "capacity.platform.example.com/accelerator": "a100-80gb",
        "capacity.platform.example.com/pool": "interactive-a100",
        "capacity.platform.example.com/grant": "7",
        "pod-security.kubernetes.io/enforce": "baseline",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
    }
    a = ContractAnnotation
    annotations = ns["metadata"]["annotations"]
    assert annotations[a.GRANT] == "vision-interactive-r12 (grant 7)"
    assert annotations[a.STATE] == "active"
    assert annotations[a.MAX_PER_POD] == "4"
    assert annotations[a.POOL] == "interactive-a100"
    assert annotations[a.TAINT_VALUE] == "interactive-a100"
    assert annotations[a.PRIORITY_CLASS] == "gpu-interactive-inference"


def _annotations_read(policy: dict) -> set[str]:
    return set(re.findall(r"variables\.contract\[\??'([^']+)'\]", json.dumps(policy)))


def test_every_contract_annotation_the_policies_read_is_set_on_the_namespace() -> None:
    validating, injecting = (
        _annotations_read(pm.grant_contract_policy()),
        _annotations_read(pm.grant_injection_policy()),
    )
    declared = {v for k, v in vars(ContractAnnotation).items() if not k.startswith("_")}
    assert validating | injecting == declared
    assert declared <= qm.namespace(contract())["metadata"]["annotations"].keys()
    # The injection completes what the contract policy checks, so it reads all of it.
    assert validating - {ContractAnnotation.GRANT} <= injecting


def test_namespace_tells_the_injection_the_priority_zones_and_taint_effect() -> None:
    a = ContractAnnotation
    annotations = qm.namespace(contract(priority=50000, preemption_policy="Never"))["metadata"]["annotations"]
    assert annotations[a.PRIORITY] == "50000"
    assert annotations[a.PREEMPTION_POLICY] == "Never"
    assert annotations[a.ZONES] == "2"
    assert annotations[a.TAINT_EFFECT] == "NoSchedule"


def test_quota_holds_the_granted_gpus_and_the_defaults_unscoped() -> None:
    quota = qm.resource_quota(contract())
    assert quota["metadata"] == {
        "name": "gpu-grant",
        "namespace": "vision-interactive-r12",
        "labels": contract().labels,
    }
    assert quota["spec"] == {
        "hard": {
            "requests.nvidia.com/gpu": "4",
            "pods": "24",
            "requests.cpu": "32",
            "requests.memory": "256Gi",
            "limits.memory": "256Gi",
        }
    }


def test_mig_quota_limits_the_slice_and_closes_whole_gpus() -> None:
    hard = qm.resource_quota(contract(resource="nvidia.com/mig-1g.10gb", gpus=3))["spec"]["hard"]
    assert hard["requests.nvidia.com/mig-1g.10gb"] == "3"
    assert hard["requests.nvidia.com/gpu"] == "0"


def test_ended_contract_sets_gpu_quota_to_zero_and_says_why() -> None:
    ended = contract(gpus=0, max_gpus_per_pod=0, state="revoked")
    assert qm.resource_quota(ended)["spec"]["hard"]["requests.nvidia.com/gpu"] == "0"
    assert qm.namespace(ended)["metadata"]["annotations"][ContractAnnotation.STATE] == "revoked"


def test_limit_range_defaults_containers_without_requests() -> None:
    lr = qm.limit_range(contract())
    assert lr["metadata"]["name"] == "gpu-grant-defaults"
    assert lr["spec"]["limits"] == [
        {
            "type": "Container",
            "defaultRequest": {"cpu": "500m", "memory": "1Gi"},
            "default": {"memory": "4Gi"},
        }
    ]


def test_role_binding_gives_the_team_group_the_edit_role() -> None:
    rb = qm.role_binding(contract(group="oidc:vision-engineers"))
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"}
    assert rb["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "oidc:vision-engineers"}
    ]


def test_one_policy_binding_selects_every_grant_namespace_and_nothing_else() -> None:
    binding = pm.grant_contract_binding()
    assert binding["metadata"]["name"] == pm.POLICY_NAME
    assert binding["spec"] == {
        "policyName": pm.POLICY_NAME,
        "validationActions": ["Deny"],
        "matchResources": {
            "namespaceSelector": {
                "matchLabels": {"app.kubernetes.io/managed-by": "gpu-capacity-portal"},
                "matchExpressions": [{"key": "capacity.platform.example.com/grant", "operator": "Exists"}],
            }
        },
    }
    # The grant namespace carries both labels the binding selects on.
    labels = qm.namespace(contract())["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "gpu-capacity-portal"
    assert labels["capacity.platform.example.com/grant"] == "7"


def test_grant_objects_are_deterministic_and_namespace_first() -> None:
    first, second = qm.grant_objects(contract()), qm.grant_objects(contract())
    assert first == second
    assert [m["kind"] for m in first] == [
        "Namespace",
        "ResourceQuota",
        "LimitRange",
        "RoleBinding",
    ]
    for manifest in first:
        assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpu-capacity-portal"
        assert manifest["metadata"]["labels"]["capacity.platform.example.com/grant"] == "7"


# --- cluster-wide objects -------------------------------------------------------------------------


def test_priority_classes_put_interactive_first_and_never_let_batch_or_experiments_preempt() -> None:
    classes = {
        m["metadata"]["name"]: m
        for m in pm.priority_classes({pm.default_priority_class_name(c): c for c in PoolClass.values})
    }
    value = {name: m["value"] for name, m in classes.items()}
    assert (
        value["gpu-interactive-inference"]
        > value["gpu-embedding-reranking"]
        > value["gpu-batch-inference"]
        > value["gpu-experimentation"]
        > 0
    )
    assert all(v < 1_000_000_000 for v in value.values())  # user classes stay below the system ones
    assert classes["gpu-batch-inference"]["preemptionPolicy"] == "Never"
    assert classes["gpu-experimentation"]["preemptionPolicy"] == "Never"
    assert classes["gpu-interactive-inference"]["preemptionPolicy"] == "PreemptLowerPriority"
    assert not any(m["globalDefault"] for m in classes.values())


def test_policy_is_limited_to_portal_namespaces_and_fails_closed() -> None:
    spec = pm.grant_contract_policy()["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "gpu-capacity-portal"}
    }
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}
    ]


def test_every_policy_message_names_the_grant() -> None:
    for validation in pm.grant_contract_policy()["spec"]["validations"]:
        assert validation["messageExpression"].startswith(
            f"'grant ' + variables.contract['{ContractAnnotation.GRANT}']"
        )


def test_mutating_policies_touch_only_creates_in_portal_namespaces_and_fail_open() -> None:
    injection, selector = pm.grant_injection_policy()["spec"], pm.workload_selector_policy()["spec"]
    for spec in (injection, selector):
        # A policy that cannot run leaves the pod to the contract policy, which still refuses it.
        assert spec["failurePolicy"] == "Ignore"
        assert spec["matchConstraints"]["namespaceSelector"] == {
            "matchLabels": {"app.kubernetes.io/managed-by": "gpu-capacity-portal"}
        }
        assert {op for rule in spec["matchConstraints"]["resourceRules"] for op in rule["operations"]} == {
            "CREATE"
        }
        assert [m["patchType"] for m in spec["mutations"]] == ["JSONPatch"]
    assert injection["matchConstraints"]["resourceRules"][0]["resources"] == ["pods"]
    assert selector["matchConstraints"]["resourceRules"][0]["resources"] == [
        "deployments",
        "replicasets",
        "statefulsets",
    ]
    # Only pods the grant admits are completed: nothing is added to a pod the contract refuses.
    assert injection["mutations"][0]["jsonPatch"]["expression"].startswith("!variables.admitted ? [] :")


def test_each_mutating_policy_has_its_one_binding_on_grant_namespaces() -> None:
    for policy, binding in (
        (pm.grant_injection_policy(), pm.grant_injection_binding()),
        (pm.workload_selector_policy(), pm.workload_selector_binding()),
    ):
        assert binding["kind"] == "MutatingAdmissionPolicyBinding"
        assert binding["metadata"]["name"] == policy["metadata"]["name"]
        assert binding["spec"] == {
            "policyName": policy["metadata"]["name"],
            "matchResources": pm.grant_contract_binding()["spec"]["matchResources"],
        }


def test_probes_break_the_contract_where_injection_cannot_help_or_state_nothing_of_it() -> None:
    c = contract()
    policy_probe = qm.policy_probe_pod(c)["spec"]
    # A pool the pod names itself is never replaced, so the contract policy still refuses it.
    assert policy_probe["nodeSelector"] == {POOL_LABEL: qm.PROBE_POOL}
    assert c.pool != qm.PROBE_POOL
    plain = qm.injection_probe_pod(c)
    assert "nodeSelector" not in plain["spec"] and "tolerations" not in plain["spec"]
    assert "priorityClassName" not in plain["spec"]
    assert qm.injection_missing(c, plain) == [
        f"nodeSelector {POOL_LABEL}",
        f"toleration {GPU_TAINT_KEY}",
        f"toleration {POOL_LABEL}",
        "priorityClassName gpu-interactive-inference (priority 0)",
    ]
    completed = {
        "spec": {
            "nodeSelector": {POOL_LABEL: "interactive-a100"},
            "tolerations": [{"key": GPU_TAINT_KEY}, {"key": POOL_LABEL}],
            "priorityClassName": "gpu-interactive-inference",
            "priority": 0,
        }
    }
    assert qm.injection_missing(c, completed) == []


def test_example_deployment_is_the_serving_builder_with_the_teams_labels() -> None:
    c, s = contract(), serving(replicas=2)
    example, served = qm.example_deployment(c, s), qm.serving_deployment(c, s)
    template = example["spec"]["template"]
    assert example["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/name": "chat"}}
    for labels in (example["metadata"]["labels"], template["metadata"]["labels"]):
        assert labels == {"app.kubernetes.io/name": "chat", "app.kubernetes.io/component": "model-server"}
    assert "annotations" not in example["metadata"]
    spreads = template["spec"]["topologySpreadConstraints"]
    assert {json.dumps(t["labelSelector"]) for t in spreads} == {
        json.dumps({"matchLabels": {"app.kubernetes.io/name": "chat"}})
    }
    # Everything of the contract is the serving deployment's.
    for key in ("nodeSelector", "tolerations", "priorityClassName", "securityContext", "containers"):
        assert template["spec"][key] == served["spec"]["template"]["spec"][key]


def test_team_kubeconfig_holds_no_secret() -> None:
    config = qm.team_kubeconfig(
        cluster="prod",
        server="https://k8s.example.com",
        certificate_authority="Q0E=",
        namespace="ns",
        user="me",
    )
    assert config["users"] == [{"name": "me", "user": {}}]
    assert config["clusters"] == [
        {
            "name": "prod",
            "cluster": {"server": "https://k8s.example.com", "certificate-authority-data": "Q0E="},
        }
    ]
    assert config["contexts"][0]["context"] == {"cluster": "prod", "namespace": "ns", "user": "me"}
    assert config["current-context"] == "ns"
    bare = qm.team_kubeconfig(
        cluster="prod", server="https://x", certificate_authority="", namespace="ns", user="me"
    )
    assert "certificate-authority-data" not in bare["clusters"][0]["cluster"]


# --- serving deployments --------------------------------------------------------------------------


def test_serving_deployment_carries_the_scheduling_contract() -> None:
    deployment = qm.serving_deployment(contract(), serving())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {POOL_LABEL: "interactive-a100"}
    assert pod["tolerations"] == [
        {"key": GPU_TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": POOL_LABEL, "operator": "Equal", "value": "interactive-a100", "effect": "NoSchedule"},
    ]
    assert pod["priorityClassName"] == "gpu-interactive-inference"
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/llm/vllm:v0.6.3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["args"] == ["--max-model-len", "8192"]
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"} in container["env"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "capacity.platform.example.com/serving-deployment": "3"
    }
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_mig_serving_deployment_asks_for_the_slice() -> None:
    c = contract(resource="nvidia.com/mig-1g.10gb")
    container = qm.serving_deployment(c, serving(gpus_per_replica=2))["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "2"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_replicas_spread_across_the_pool_zones() -> None:
    pod = qm.serving_deployment(contract(), serving(replicas=3))["spec"]["template"]["spec"]
    zone, host = pod["topologySpreadConstraints"]
    assert zone["topologyKey"] == "topology.kubernetes.io/zone"
    assert zone["whenUnsatisfiable"] == "DoNotSchedule"
    assert zone["minDomains"] == 2
    assert zone["maxSkew"] == 1
    assert zone["labelSelector"] == {"matchLabels": {"capacity.platform.example.com/serving-deployment": "3"}}
    assert host["topologyKey"] == "kubernetes.io/hostname"


def test_one_replica_or_one_zone_does_not_demand_spreading() -> None:
    single = qm.serving_deployment(contract(), serving(replicas=1))["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in single
    one_zone = qm.serving_deployment(contract(zones=("zone-a",)), serving(replicas=2))["spec"]["template"][
        "spec"
    ]
    zone = one_zone["topologySpreadConstraints"][0]
    assert zone["whenUnsatisfiable"] == "ScheduleAnyway"
    assert "minDomains" not in zone


def test_probes_give_the_model_its_whole_load_budget() -> None:
    container = qm.serving_deployment(contract(), serving(load_budget_seconds=605))["spec"]["template"][
        "spec"
    ]["containers"][0]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 605
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_serving_pods_are_hardened() -> None:
    pod = qm.serving_deployment(contract(), serving())["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["privileged"] is False


def test_ended_grant_scales_serving_to_zero() -> None:
    ended = dataclasses.replace(contract(), state="revoked", gpus=0, max_gpus_per_pod=0)
    deployment = qm.serving_deployment(ended, serving(replicas=3))
    assert deployment["spec"]["replicas"] == 0
    assert "topologySpreadConstraints" not in deployment["spec"]["template"]["spec"]


# --- comparing and conditions ---------------------------------------------------------------------


def test_diff_names_changed_and_missing_fields_only() -> None:
    desired = {
        "spec": {"hard": {"requests.nvidia.com/gpu": "2", "requests.cpu": "16", "requests.memory": "128Gi"}}
    }
    live = {
        "spec": {
            "hard": {"requests.nvidia.com/gpu": "10", "requests.cpu": "16000m", "requests.memory": "128Gi"}
        },
        "status": {"used": {}},
    }
    assert diff(desired, live) == ["spec.hard.requests.nvidia.com/gpu: 10 -> 2"]
    assert diff({"a": {"b": "x"}}, {}) == ["a.b: missing -> x"]
    assert diff({"items": ["a", "b"]}, {"items": ["a"]}) == ["items: ['a'] -> ['a', 'b']"]
    # Empty or false fields the apiserver drops are not drift.
    assert diff({"args": [], "globalDefault": False, "emptyDir": {}}, {}) == []


@pytest.mark.parametrize(("status", "moves"), [("True", False), ("False", True)])
def test_conditions_keep_their_transition_time_while_the_status_holds(status: str, moves: bool) -> None:
    then = datetime(2026, 1, 1, tzinfo=UTC)
    first = merge_conditions([], [Condition("Ready", "True", "Provisioned", "ok")], now=then, generation=1)
    later = then + timedelta(minutes=5)
    second = merge_conditions(first, [Condition("Ready", status, "Why", "msg")], now=later, generation=2)
    (ready,) = second
    assert ready["lastTransitionTime"] == (later if moves else then).isoformat()
    assert ready["reason"] == "Why"
    assert ready["observedGeneration"] == 2
