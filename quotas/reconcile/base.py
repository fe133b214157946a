"""What every reconcile shares: the desired state computed from the database, comparing and
applying manifests, status conditions and audit notes."""

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.utils import timezone

from pools import manifests as cluster_manifests
from pools.kube import ops
from pools.kube.errors import KubeError
from pools.kube.objects import CONTRACT_ACTIVE, GPU_TAINT_KEY, POOL_LABEL, same_quantity
from pools.manifests import Manifest
from pools.models import Cluster
from pools.services import cluster_policy_objects
from portal.services import audit_event_record
from quotas import manifests, rules
from quotas.models import Grant, ServingDeployment
from quotas.reconcile.queue_contract import queue_contract
from quotas.states import HOLDING_STATES

# Polling interval while something converges on its own (a quota not yet observed, replicas loading).
POLL_SECONDS = 5.0


def provisioning_settings() -> dict[str, Any]:
    return settings.PORTAL_PROVISIONING


# --- desired state ------------------------------------------------------------------------------


def _cpu_quantity(cores: Decimal) -> str:
    return str(int(cores)) if cores == cores.to_integral_value() else f"{int(cores * 1000)}m"


def grant_priority_class_name(grant: Grant) -> str:
    """The pool's class for work of the pool's own class; work borrowing a pool (batch on an
    interactive pool) keeps its own, lower class so the pool's owners can preempt it."""
    if grant.request.pool_class == grant.pool.pool_class:
        return grant.pool.priority_class_name
    return cluster_manifests.default_priority_class_name(grant.request.pool_class)


def grant_contract(grant: Grant) -> manifests.GrantContract:
    cfg = provisioning_settings()
    req, pool = grant.request, grant.pool
    accelerator = pool.accelerator
    holding = req.state in HOLDING_STATES
    selector = {str(k): str(v) for k, v in pool.node_selector.items()}
    pool_label_key = POOL_LABEL if POOL_LABEL in selector or not selector else sorted(selector)[0]
    priority = cluster_manifests.priority_of(req.pool_class)
    return manifests.GrantContract(
        grant_id=grant.pk,
        namespace=grant.namespace,
        team=grant.team.slug,
        group=grant.team.group_name,
        pool_class=req.pool_class,
        pool=pool.name,
        pool_label_key=pool_label_key,
        node_selector=selector,
        accelerator=accelerator.slug,
        accelerator_type=accelerator.type_label,
        product=accelerator.product,
        resource=accelerator.resource_name,
        taint_key=pool.taint_key,
        taint_value=pool.taint_value,
        taint_effect=pool.taint_effect,
        gpu_taint_key=GPU_TAINT_KEY,
        priority_class_name=grant_priority_class_name(grant),
        zones=tuple(pool.zones),
        gpus=grant.gpus if holding else 0,
        max_gpus_per_pod=grant.gpus if holding else 0,
        pods=cfg["QUOTA_PODS_BASE"] + grant.gpus,
        cpu=_cpu_quantity(req.cpu) if req.cpu else str(cfg["QUOTA_CPU_PER_GPU"] * grant.gpus),
        memory=f"{req.memory_gib or cfg['QUOTA_MEMORY_GIB_PER_GPU'] * grant.gpus}Gi",
        default_request=dict(cfg["DEFAULT_REQUEST"]),
        default_limit=dict(cfg["DEFAULT_LIMIT"]),
        team_cluster_role=cfg["TEAM_CLUSTER_ROLE"],
        state=CONTRACT_ACTIVE if holding else req.state,
        pod_security=manifests.PodSecurity(**cfg["POD_SECURITY"]),
        priority=priority.value,
        preemption_policy=priority.preemption_policy,
        queue=queue_contract(grant, holding=holding, node_selector=selector) if grant.queued else None,
    )


def grant_shared_objects(cluster: Cluster, contract: manifests.GrantContract) -> list[Manifest]:
    """The cluster-wide objects a grant needs: its PriorityClass, the contract policy and its binding."""
    return shared_objects_of(contract, cluster_policy_objects(cluster))


def shared_objects_of(contract: manifests.GrantContract, cluster_objects: list[Manifest]) -> list[Manifest]:
    """Those of `cluster_objects` (pools.services.cluster_policy_objects) the grant needs; a pass over
    many grants builds them once, since building them reads the cluster's pools."""
    return [
        m
        for m in cluster_objects
        if m["kind"] != "PriorityClass" or m["metadata"]["name"] == contract.priority_class_name
    ]


def simulated_load(deployment: ServingDeployment) -> int | None:
    """The testbed's simulated model load for the deployment, from its request's parameters and
    precision; None unless PORTAL_SIMULATED_MODEL_LOAD asks for it."""
    cfg = provisioning_settings()
    if not cfg["SIMULATED_MODEL_LOAD"]:
        return None
    request = deployment.grant.request
    return rules.simulated_load_seconds(
        request.model_parameters_billion,
        request.model_precision,
        gib_per_second=cfg["SIMULATED_LOAD_GIB_PER_SECOND"],
        base_seconds=cfg["SIMULATED_LOAD_BASE_SECONDS"],
    )


def serving_spec(deployment: ServingDeployment) -> manifests.ServingSpec:
    cfg = provisioning_settings()
    return manifests.ServingSpec(
        deployment_id=deployment.pk,
        name=deployment.name,
        model_name=deployment.model_name,
        image=deployment.image,
        replicas=deployment.replicas,
        gpus_per_replica=deployment.gpus_per_replica,
        args=tuple(str(a) for a in deployment.args),
        env=tuple(sorted((str(k), str(v)) for k, v in deployment.env.items())),
        cpu_millis_per_gpu=cfg["SERVING_CPU_MILLIS_PER_GPU"],
        memory_gib_per_gpu=cfg["SERVING_MEMORY_GIB_PER_GPU"],
        load_budget_seconds=cfg["MODEL_LOAD_BUDGET_SECONDS"],
        port=cfg["SERVING_PORT"],
        health_path=cfg["SERVING_HEALTH_PATH"],
        simulated_load_seconds=simulated_load(deployment),
    )


EXAMPLE_NAME = "model-server"
EXAMPLE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def example_serving_spec(grant: Grant) -> manifests.ServingSpec:
    """The serving spec of the example manifest on the grant page: one replica of as many GPUs as a
    replica of the request's model needs (within the grant), from the first allowed registry."""
    cfg = provisioning_settings()
    registries = cfg["IMAGE_REGISTRY_ALLOWLIST"] or ["registry.example.com/llm/"]
    registry = registries[0] if registries[0].endswith("/") else f"{registries[0]}/"
    return manifests.ServingSpec(
        deployment_id=0,
        name=EXAMPLE_NAME,
        model_name=EXAMPLE_MODEL,
        image=f"{registry}vllm:stable",
        replicas=1,
        gpus_per_replica=max(1, min(grant.request.gpus_per_replica, grant.gpus)),
        cpu_millis_per_gpu=cfg["SERVING_CPU_MILLIS_PER_GPU"],
        memory_gib_per_gpu=cfg["SERVING_MEMORY_GIB_PER_GPU"],
        load_budget_seconds=cfg["MODEL_LOAD_BUDGET_SECONDS"],
        port=cfg["SERVING_PORT"],
        health_path=cfg["SERVING_HEALTH_PATH"],
    )


# --- comparing desired and live objects ---------------------------------------------------------

_QUANTITY = re.compile(r"^[+-]?[0-9.]+[a-zA-Z]{0,2}$")


def same(desired: Any, live: Any) -> bool:
    if desired == live:
        return True
    if live is None and desired in (False, "", [], {}):
        return True  # the apiserver drops empty and false fields
    if isinstance(desired, str) and isinstance(live, str | int) and _QUANTITY.match(desired):
        return same_quantity(desired, live)
    return False


def _short(value: Any) -> str:
    text = "missing" if value is None else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def diff(desired: Any, live: Any, path: str = "") -> list[str]:
    """Fields of `desired` that `live` lacks or holds with another value, as "path: live -> desired".

    Only what the portal sets is compared: fields the apiserver or other controllers add are ignored.
    """
    if isinstance(desired, dict):
        live_map = live if isinstance(live, dict) else {}
        changes: list[str] = []
        for key, value in desired.items():
            changes += diff(value, live_map.get(key), f"{path}.{key}" if path else str(key))
        return changes
    if isinstance(desired, list) and isinstance(live, list) and len(desired) == len(live):
        changes = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            changes += diff(want, have, f"{path}[{index}]")
        return changes
    return [] if same(desired, live) else [f"{path}: {_short(live)} -> {_short(desired)}"]


def _comparable(manifest: Manifest) -> dict[str, Any]:
    body = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "metadata")}
    meta = manifest["metadata"]
    body["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    return body


def title(manifest: Manifest) -> str:
    meta = manifest["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{manifest['kind']} {where}{meta['name']}"


@dataclass
class Applied:
    manifest: Manifest
    before: dict[str, Any] | None
    live: dict[str, Any]
    changes: list[str]

    @property
    def drift(self) -> str:
        if self.before is None:
            return f"{title(self.manifest)} was missing; recreated"
        return f"{title(self.manifest)}: " + "; ".join(self.changes)


def converge(cluster: Cluster, desired: list[Manifest], *, compare: bool) -> list[Applied]:
    """Server-side apply each manifest in order; with `compare`, read it first and name what differed.

    Reading costs a GET per object, so callers compare only when the answer is used: drift of a
    generation applied before, or what an ended grant still held. A first apply has nothing to compare.
    """
    results = []
    for manifest in desired:
        meta = manifest["metadata"]
        before, changes = None, []
        if compare:
            before = ops.get(
                cluster, manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace")
            )
            changes = ["missing"] if before is None else diff(_comparable(manifest), before)
        # Applied even when nothing differs: dropping a field from the manifest only removes it from
        # the live object through an apply.
        live = ops.apply(cluster, manifest)
        results.append(Applied(manifest, before, live, changes))
    return results


# The cluster-wide objects a grant needs (its PriorityClass, the contract policy and its binding) are
# shared by every grant of the cluster: a worker applies each at most once per this many seconds (per
# cluster and content) rather than once per grant. Their drift is still healed: a compare pass always
# applies them, and so does every inventory sync (pools.services.cluster_policies_apply).
CLUSTER_WIDE_REAPPLY_SECONDS = 60.0
_cluster_wide_applied: dict[tuple[int, str, str], tuple[float, Applied]] = {}


def forget_cluster_wide(cluster: Cluster) -> None:
    """Apply the shared objects again next time: after a cluster error, or when a grant found its
    contract not enforced (someone may have deleted one of them)."""
    for key in [k for k in _cluster_wide_applied if k[0] == cluster.pk]:
        del _cluster_wide_applied[key]


def converge_cluster_wide(cluster: Cluster, desired: list[Manifest], *, compare: bool) -> list[Applied]:
    results = []
    now = time.monotonic()
    for manifest in desired:
        key = (cluster.pk, cluster.api_url, json.dumps(manifest, sort_keys=True))
        seen = _cluster_wide_applied.get(key)
        if compare or seen is None or now - seen[0] > CLUSTER_WIDE_REAPPLY_SECONDS:
            (applied,) = converge(cluster, [manifest], compare=compare)
            _cluster_wide_applied[key] = (now, dataclasses.replace(applied, before=None, changes=[]))
            results.append(applied)
        else:
            results.append(seen[1])
    return results


# --- conditions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


def merge_conditions(
    current: list[dict[str, Any]], updates: list[Condition], *, now: datetime, generation: int
) -> list[dict[str, Any]]:
    """Kubernetes condition semantics: lastTransitionTime only moves when the status changes."""
    by_type = {c["type"]: c for c in current}
    for update in updates:
        previous = by_type.get(update.type)
        changed = previous is None or previous.get("status") != update.status
        by_type[update.type] = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message[:1000],
            "lastTransitionTime": now.isoformat() if changed else previous["lastTransitionTime"],
            "observedGeneration": generation,
        }
    order = ["Applied", "QuotaEnforced", "PolicyBound", "ContractInjected", "Queued", "Ready"]
    return sorted(
        by_type.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else 99, c["type"])
    )


def error_conditions(exc: KubeError) -> list[Condition]:
    reason = exc.reason if exc.reason and exc.reason != "Unknown" else type(exc).__name__
    conditions = [Condition("Ready", "False", reason, exc.message)]
    if not exc.temporary:
        conditions.insert(0, Condition("Applied", "False", reason, exc.message))
    return conditions


@dataclass
class AuditNote:
    action: str
    message: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


def observe(
    obj: Grant | ServingDeployment, conditions: list[Condition], *, generation: int | None
) -> list[str]:
    """Merge a reconcile's conditions into `obj` (locked by the caller), stamp the time and advance the
    observed generation; returns the fields to save. `generation` None: an error, nothing observed."""
    now = timezone.now()
    obj.conditions = merge_conditions(
        obj.conditions, conditions, now=now, generation=generation or obj.observed_generation
    )
    obj.reconciled_at = now
    if generation is not None and generation > obj.observed_generation:
        obj.observed_generation = generation
    return ["conditions", "reconciled_at", "observed_generation"]


def write_audits(obj: Grant | ServingDeployment, audits: list[AuditNote]) -> None:
    """The reconciler's audit rows: no actor, in the caller's transaction with the state they explain."""
    for note in audits:
        audit_event_record(
            actor=None,
            action=note.action,
            obj=obj,
            team=obj.team,
            before=note.before,
            after=note.after,
            message=note.message,
        )


@dataclass
class Outcome:
    conditions: list[Condition]
    audits: list[AuditNote] = field(default_factory=list)
    requeue_after: float | None = None
