"""Warm headroom held on the cluster: the reconcile of one pool's placeholder pods.

For an interactive pool backed by node groups with `headroom_gpus` H, the cluster keeps placeholder
pods (pools.manifests.warm_placeholders) requesting exactly H units in the pool's node shape, with the
pool's selector and tolerations and a PriorityClass below every workload class. The autoscaler keeps
(or brings up) nodes for them; an interactive pod preempts a placeholder and runs at once, and the
ReplicaSet's replacement placeholder, pending, makes the autoscaler bring up the next warm node.

Level-based like every reconcile: the desired objects are computed from the pool row each time,
server-side applied with the one field manager, compared with what was live (drift is audited and
healed), placeholders a pool no longer needs are deleted, and what the cluster says is recorded as
conditions on the pool's WarmHeadroom row. `pools.tasks.warm_headroom_reconcile(pool_id)` runs it on
every change of the pool and on the periodic sweep.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pools import manifests
from pools.kube import ops
from pools.kube.errors import PermanentKubeError, TemporaryKubeError
from pools.kube.nodegroups import groups_for, groups_of
from pools.kube.objects import GPU_TAINT, Label, condition_of, pod_unschedulable_reason
from pools.manifests import Manifest, WarmSpec
from pools.models import ClusterInventory, NodePool, WarmHeadroom
from portal.services import audit_event_record

log = logging.getLogger(__name__)

# Polling while placeholders wait for their nodes.
POLL_SECONDS = 5.0


def warm_settings() -> dict[str, str]:
    return settings.PORTAL_WARM_HEADROOM


def image_allowed(image: str) -> bool:
    allowlist = settings.PORTAL_PROVISIONING["IMAGE_REGISTRY_ALLOWLIST"]
    prefixes = [entry if entry.endswith("/") else f"{entry}/" for entry in allowlist]
    return any(image.startswith(prefix) for prefix in prefixes)


def gpus_per_node(pool: NodePool) -> int:
    """Units one node of the pool's node groups has, from the collector's inventory (0: unknown)."""
    inventory = ClusterInventory.objects.filter(cluster_id=pool.cluster_id).first()
    if inventory is None:
        return 0
    groups = groups_for(groups_of(inventory.document), pool.node_selector)
    return max((g.units_per_node(pool.accelerator.resource_name) for g in groups), default=0)


def warm_spec(pool: NodePool) -> WarmSpec:
    cfg = warm_settings()
    return WarmSpec(
        pool=pool.name,
        namespace=cfg["NAMESPACE"],
        image=cfg["IMAGE"],
        priority_class=cfg["PRIORITY_CLASS"],
        node_selector={str(k): str(v) for k, v in pool.node_selector.items()},
        taint=pool.taint,
        gpu_taint=dict(GPU_TAINT),
        resource=pool.accelerator.resource_name,
        gpus=pool.headroom_gpus if pool.keeps_warm_headroom else 0,
        gpus_per_node=gpus_per_node(pool),
    )


# --- comparing --------------------------------------------------------------------------------


def _pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return (_pod_spec(deployment).get("containers") or [{}])[0]


def _tolerations(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted(
        (t.get("key", ""), t.get("value", "") or "", t.get("effect", ""))
        for t in spec.get("tolerations") or []
    )


def drift(desired: Manifest, live: dict[str, Any]) -> list[str]:
    """What of the fields that make a placeholder hold its GPUs differs on the live Deployment."""
    changes = []
    want_replicas, have_replicas = desired["spec"]["replicas"], (live.get("spec") or {}).get("replicas")
    if want_replicas != have_replicas:
        changes.append(f"replicas: {have_replicas} -> {want_replicas}")
    want, have = _pod_spec(desired), _pod_spec(live)
    for key in ("priorityClassName", "nodeSelector"):
        if want.get(key) != have.get(key):
            changes.append(f"{key}: {have.get(key)} -> {want.get(key)}")
    if _tolerations(want) != _tolerations(have):
        changes.append("tolerations changed")
    want_c, have_c = _container(desired), _container(live)
    if want_c.get("image") != have_c.get("image"):
        changes.append(f"image: {have_c.get('image')} -> {want_c.get('image')}")
    want_r = (want_c.get("resources") or {}).get("requests") or {}
    have_r = (have_c.get("resources") or {}).get("requests") or {}
    for resource, value in want_r.items():
        if str(have_r.get(resource)) != value:
            changes.append(f"requests.{resource}: {have_r.get(resource)} -> {value}")
    return changes


# --- conditions -------------------------------------------------------------------------------


def merge_conditions(
    current: list[dict[str, Any]], updates: list[tuple[str, str, str, str]]
) -> list[dict[str, Any]]:
    """Kubernetes condition semantics: lastTransitionTime only moves when the status changes."""
    now = timezone.now().isoformat()
    by_type = {c["type"]: c for c in current}
    for kind, status, reason, message in updates:
        previous = by_type.get(kind)
        changed = previous is None or previous.get("status") != status
        by_type[kind] = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message[:1000],
            "lastTransitionTime": now if changed else previous["lastTransitionTime"],
        }
    order = ["Applied", "Ready"]
    return sorted(
        by_type.values(), key=lambda c: (order.index(c["type"]) if c["type"] in order else 9, c["type"])
    )


@transaction.atomic
def _record(
    pool: NodePool,
    *,
    conditions: list[tuple[str, str, str, str]],
    status: dict[str, Any] | None = None,
    audits: list[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]] = (),
) -> WarmHeadroom:
    row, _ = WarmHeadroom.objects.select_for_update().get_or_create(pool=pool)
    row.conditions = merge_conditions(row.conditions, conditions)
    row.reconciled_at = timezone.now()
    fields = ["conditions", "reconciled_at"]
    if status is not None:
        for key, value in status.items():
            setattr(row, key, value)
        fields += list(status)
    row.save(update_fields=fields)
    for action, message, before, after in audits:
        audit_event_record(actor=None, action=action, obj=row, before=before, after=after, message=message)
    return row


# --- the reconcile ----------------------------------------------------------------------------


def _pods_status(pods: list[dict[str, Any]], resource: str) -> tuple[int, int, str]:
    """(units held by running placeholders, placeholders pending, the scheduler's word on one)."""
    held, pending, why = 0, 0, ""
    for pod in pods:
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        phase = (pod.get("status") or {}).get("phase")
        units = sum(
            int(((c.get("resources") or {}).get("requests") or {}).get(resource, 0) or 0)
            for c in (pod.get("spec") or {}).get("containers") or []
        )
        if phase == "Running" and (pod.get("spec") or {}).get("nodeName"):
            held += units
        elif phase == "Pending":
            pending += 1
            scheduled = condition_of(pod, "PodScheduled")
            if scheduled and scheduled.get("status") == "False" and not why:
                why = f"{pod_unschedulable_reason(pod)}: {scheduled.get('message') or ''}".strip(": ")
    return held, pending, why


def warm_headroom_reconcile(*, pool_id: int) -> float | None:
    """Make the pool's placeholders on its cluster match its headroom; returns seconds to poll again
    (placeholders still waiting for nodes) or None."""
    pool = NodePool.objects.select_related("cluster", "accelerator").filter(pk=pool_id).first()
    if pool is None:
        return None
    row = WarmHeadroom.objects.filter(pool=pool).first()
    spec = warm_spec(pool)
    if spec.gpus == 0 and (row is None or not row.placeholders):
        # Nothing held and nothing wanted: a static or batch pool costs no request.
        return None
    cluster = pool.cluster
    if spec.gpus and not image_allowed(spec.image):
        _record(
            pool,
            conditions=[
                (
                    "Applied",
                    "False",
                    "ImageNotAllowed",
                    f"The placeholder image {spec.image} is not on the image allowlist "
                    "(PORTAL_WARM_IMAGE, PORTAL_IMAGE_REGISTRY_ALLOWLIST).",
                )
            ],
        )
        return None
    desired = manifests.warm_placeholders(spec)
    selector = f"{Label.WARM_HEADROOM}={pool.name}"
    audits = []
    try:
        live = {
            d["metadata"]["name"]: d
            for d in ops.list_objects(
                cluster, "apps/v1", "Deployment", namespace=spec.namespace, label_selector=selector
            )
        }
        if desired:
            ops.apply(cluster, manifests.warm_namespace(spec.namespace))
            ops.apply(cluster, manifests.warm_priority_class(spec.priority_class))
        for manifest in desired:
            name = manifest["metadata"]["name"]
            before = live.get(name)
            changes = drift(manifest, before) if before is not None else []
            ops.apply(cluster, manifest)
            if changes and row is not None and row.gpus_wanted == spec.gpus:
                audits.append(
                    (
                        "warm_headroom.drift_corrected",
                        f"Restored placeholder Deployment {name}: " + "; ".join(changes),
                        {"drift": changes},
                        None,
                    )
                )
        wanted_names = {m["metadata"]["name"] for m in desired}
        for name in sorted(set(live) - wanted_names):
            ops.delete(cluster, "apps/v1", "Deployment", name, spec.namespace)
        pods = (
            ops.list_objects(cluster, "v1", "Pod", namespace=spec.namespace, label_selector=selector)
            if desired
            else []
        )
    except TemporaryKubeError as exc:
        _record(pool, conditions=[("Ready", "False", exc.reason or "Unreachable", exc.message)])
        raise
    except PermanentKubeError as exc:
        _record(
            pool,
            conditions=[
                ("Applied", "False", exc.reason, exc.message),
                ("Ready", "False", exc.reason, exc.message),
            ],
        )
        return None

    held, pending, why = _pods_status(pods, spec.resource)
    placeholders = [
        {
            "name": m["metadata"]["name"],
            "gpus": int(
                m["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"][spec.resource]
            ),
            "replicas": m["spec"]["replicas"],
        }
        for m in desired
    ]
    previous = row.gpus_wanted if row is not None else 0
    shapes = ", ".join(f"{p['replicas']} x {p['gpus']}" for p in placeholders)
    if previous != spec.gpus:
        audits.append(
            (
                "warm_headroom.resized",
                f"Warm headroom of {pool} set to {spec.gpus} {spec.resource}"
                + (f" in placeholders of {shapes}" if placeholders else ""),
                {"gpus": previous},
                {"gpus": spec.gpus},
            )
        )
    if not desired:
        conditions = [
            (
                "Applied",
                "True",
                "NoHeadroom",
                f"Pool {pool} keeps no warm headroom; its placeholders are removed.",
            ),
            ("Ready", "True", "NoHeadroom", "Nothing to hold."),
        ]
    else:
        shapes = ", ".join(f"{p['replicas']} x {p['gpus']}" for p in placeholders)
        conditions = [
            ("Applied", "True", "Applied", f"Placeholders for {spec.gpus} {spec.resource}: {shapes}.")
        ]
        if held >= spec.gpus:
            conditions.append(
                ("Ready", "True", "WarmHeld", f"{held} of {spec.gpus} warm {spec.resource} held.")
            )
        else:
            conditions.append(
                (
                    "Ready",
                    "False",
                    "Provisioning",
                    f"{held} of {spec.gpus} warm {spec.resource} held; {pending} placeholder(s) waiting "
                    "for a node" + (f" ({why})" if why else "") + ".",
                )
            )
    _record(
        pool,
        conditions=conditions,
        status={
            "gpus_wanted": spec.gpus,
            "gpus_held": held,
            "pods_pending": pending,
            "placeholders": placeholders,
        },
        audits=audits,
    )
    return POLL_SECONDS if desired and held < spec.gpus else None


def warm_headroom_due() -> list[int]:
    """Pools whose placeholders the sweep re-applies: every pool that keeps warm headroom, and any
    that still has placeholders recorded (to remove them)."""
    keeping = [
        p.pk
        for p in NodePool.objects.select_related("cluster").filter(enabled=True, headroom_gpus__gt=0)
        if p.keeps_warm_headroom
    ]
    holding = WarmHeadroom.objects.exclude(placeholders=[]).values_list("pool_id", flat=True)
    return sorted(set(keeping) | set(holding))
