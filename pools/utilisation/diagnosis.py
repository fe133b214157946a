"""Why isn't it running? The workloads of one portal namespace and, for each one that is not (fully)
running, the cluster's own reasons, grouped and counted. Pure: trimmed objects in, rows out.

The collector (pools.utilisation.workloads) keeps list+watch caches of pods, Deployments,
ReplicaSets, StatefulSets, Jobs and three kinds of events, trims every object with the functions
here, and turns a namespace's objects into rows with `diagnose`. The reasons and where each comes
from are listed in docs/utilisation.md ("Why isn't it running?").
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pools.kube.objects import (
    CRASH_LOOP_REASON,
    FAILED_CREATE_REASON,
    IMAGE_PULL_REASONS,
    NODE_BRING_UP_REASONS,
    condition_of,
    container_troubles,
    controller_of,
    parse_time,
    pod_gpu_requests,
    pod_ready,
)
from pools.manifests import POLICY_NAME

Json = dict[str, Any]

# A refusal event older than this no longer explains a missing pod on its own: controllers retry
# creates with a backoff of a few minutes at most, so a create still failing has a fresher event.
EVENT_WINDOW = timedelta(minutes=15)
# Rows kept per namespace, and pod names kept per reason: enough to act on, bounded in size.
MAX_WORKLOADS = 100
MAX_POD_NAMES = 3
MAX_MESSAGE = 1000


class Reason:
    CONTRACT_REFUSED = "ContractRefused"
    QUOTA_EXCEEDED = "QuotaExceeded"
    CREATE_REFUSED = "CreateRefused"
    WAITING_FOR_NODE = "WaitingForNode"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL = "ImagePull"
    CRASH_LOOP = "CrashLoop"
    CONTAINER_ERROR = "ContainerError"
    JOB_FAILED = "JobFailed"
    STALLED = "Stalled"


TITLES = {
    Reason.CONTRACT_REFUSED: "Refused by the grant's contract",
    Reason.QUOTA_EXCEEDED: "Refused by the grant's quota",
    Reason.CREATE_REFUSED: "Pod creation refused",
    Reason.WAITING_FOR_NODE: "Waiting for a node to be brought up",
    Reason.UNSCHEDULABLE: "Unschedulable",
    Reason.IMAGE_PULL: "Image cannot be pulled",
    Reason.CRASH_LOOP: "Crash loop",
    Reason.CONTAINER_ERROR: "Container cannot start",
    Reason.JOB_FAILED: "Job failed",
    Reason.STALLED: "Not progressing",
}


class State:
    RUNNING = "running"
    PARTLY_RUNNING = "partly_running"
    NOT_RUNNING = "not_running"
    STARTING = "starting"
    SCALED_TO_ZERO = "scaled_to_zero"
    COMPLETED = "completed"
    FAILED = "failed"
    SUSPENDED = "suspended"


STATE_LABELS = {
    State.RUNNING: "Running",
    State.PARTLY_RUNNING: "Partly running",
    State.NOT_RUNNING: "Not running",
    State.STARTING: "Starting",
    State.SCALED_TO_ZERO: "Scaled to zero",
    State.COMPLETED: "Completed",
    State.FAILED: "Failed",
    State.SUSPENDED: "Suspended",
}
# States that ask for attention ("not (fully) running").
TROUBLED_STATES = frozenset({State.PARTLY_RUNNING, State.NOT_RUNNING, State.FAILED})

# The controllers a row stands for; pods of any other controller are grouped under it as found.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "ReplicaSet")
_KIND_ORDER = {kind: i for i, kind in enumerate((*WORKLOAD_KINDS, "Pod"))}


# --- trimming: what the caches keep of each object ------------------------------------------------


def _meta(obj: Json) -> Json:
    meta = obj.get("metadata") or {}
    return {
        "name": meta.get("name", ""),
        "namespace": meta.get("namespace", ""),
        "uid": meta.get("uid", ""),
        "creationTimestamp": meta.get("creationTimestamp"),
    }


def _conditions(obj: Json, kinds: Iterable[str]) -> list[Json]:
    wanted = set(kinds)
    return [
        {k: c.get(k, "") for k in ("type", "status", "reason", "message")}
        for c in (obj.get("status") or {}).get("conditions") or []
        if c.get("type") in wanted
    ]


def trim_pod_status(pod: Json) -> Json:
    """What the diagnosis reads of a pod, kept next to what the utilisation figures keep."""
    meta = pod.get("metadata") or {}
    scheduled = condition_of(pod, "PodScheduled")
    return {
        "controller": controller_of(pod),
        "ready": pod_ready(pod),
        "deleting": bool(meta.get("deletionTimestamp")),
        "scheduled": {k: scheduled.get(k, "") for k in ("status", "reason", "message")}
        if scheduled
        else None,
        "troubles": container_troubles(pod),
    }


def trim_workload(obj: Json) -> Json:
    """A Deployment, ReplicaSet, StatefulSet or Job: its size, its pods' GPU requests and its state."""
    kind = obj.get("kind") or ""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    template = {"spec": (spec.get("template") or {}).get("spec") or {}}
    trimmed: Json = {
        "kind": kind,
        "metadata": _meta(obj),
        "controller": controller_of(obj),
        "gpus": pod_gpu_requests(template),
        "conditions": _conditions(obj, ("Progressing", "ReplicaFailure", "Complete", "Failed", "Suspended")),
    }
    if kind == "Job":
        trimmed |= {
            "parallelism": spec.get("parallelism", 1),
            "completions": spec.get("completions"),
            "suspend": bool(spec.get("suspend")),
            "active": status.get("active", 0),
            "succeeded": status.get("succeeded", 0),
            "failed": status.get("failed", 0),
        }
    else:
        replicas = spec.get("replicas")
        trimmed["replicas"] = 1 if replicas is None else replicas
    return trimmed


def _as_kind(kind: str) -> Callable[[Json], Json]:
    def trim(obj: Json) -> Json:
        # Lists name the kind once, for the whole list, not on each item.
        return trim_workload({**obj, "kind": kind})

    return trim


TRIMMERS = {
    "deployments": _as_kind("Deployment"),
    "replicasets": _as_kind("ReplicaSet"),
    "statefulsets": _as_kind("StatefulSet"),
    "jobs": _as_kind("Job"),
}


def trim_event(event: Json) -> Json:
    meta = event.get("metadata") or {}
    involved = event.get("involvedObject") or {}
    series = event.get("series") or {}
    return {
        "metadata": {"name": meta.get("name", ""), "namespace": meta.get("namespace", "")},
        "involved": {k: involved.get(k, "") for k in ("kind", "name", "uid")},
        "reason": event.get("reason", ""),
        "message": (event.get("message") or "")[:MAX_MESSAGE],
        "count": int(series.get("count") or event.get("count") or 1),
        "last": series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or meta.get("creationTimestamp"),
    }


# --- diagnosis -------------------------------------------------------------------------------------

_POD_NAME = re.compile(r'pods? "[^"]*"')
_COMBINED = "(combined from similar events): "
_CREATING = "Error creating: "


def refusal_text(message: str) -> str:
    """A refused create in the apiserver's words, without the one pod name each attempt generates
    (so repeated refusals group into one) or the event recorder's prefixes."""
    text = message.removeprefix(_COMBINED).removeprefix(_CREATING)
    return _POD_NAME.sub('pods "…"', text)[:MAX_MESSAGE]


def refusal_reason(message: str) -> str:
    if POLICY_NAME in message:
        return Reason.CONTRACT_REFUSED
    if "exceeded quota" in message:
        return Reason.QUOTA_EXCEEDED
    return Reason.CREATE_REFUSED


@dataclass
class _Problem:
    reason: str
    message: str
    count: int = 0
    pods: list[str] = field(default_factory=list)

    def row(self) -> Json:
        return {
            "reason": self.reason,
            "title": TITLES[self.reason],
            "message": self.message,
            "count": self.count,
            "pods": sorted(self.pods)[:MAX_POD_NAMES],
        }


@dataclass
class _Workload:
    kind: str
    name: str
    uids: set[str] = field(default_factory=set)  # its own and its ReplicaSets'
    created: str | None = None
    desired: int | None = None  # None: as many as it has pods
    gpus: dict[str, int] = field(default_factory=dict)
    pods: list[Json] = field(default_factory=list)
    conditions: list[Json] = field(default_factory=list)
    failures: list[Json] = field(default_factory=list)  # ReplicaFailure conditions of current ReplicaSets
    job: Json | None = None
    problems: dict[tuple[str, str], _Problem] = field(default_factory=dict)

    def problem(self, reason: str, message: str) -> _Problem:
        key = (reason, message)
        if key not in self.problems:
            self.problems[key] = _Problem(reason, message)
        return self.problems[key]


def _recent(event: Json, now: datetime) -> bool:
    last = parse_time(event.get("last"))
    return last is not None and now - last <= EVENT_WINDOW


def _job_state(w: _Workload) -> tuple[str, int]:
    job = w.job or {}
    for condition in w.conditions:
        if condition["status"] != "True":
            continue
        if condition["type"] == "Complete":
            return State.COMPLETED, 0
        if condition["type"] == "Failed":
            message = condition.get("message") or condition.get("reason") or "The Job failed."
            w.problem(Reason.JOB_FAILED, message).count += 1
            return State.FAILED, 0
    if job.get("suspend"):
        return State.SUSPENDED, 0
    parallelism = job.get("parallelism")
    parallelism = 1 if parallelism is None else int(parallelism)
    completions = job.get("completions")
    if completions is not None:
        parallelism = min(parallelism, max(0, int(completions) - int(job.get("succeeded") or 0)))
    return "", parallelism


def _state(w: _Workload, existing: int, ready: int, desired: int) -> str:
    if desired == 0:
        return State.SCALED_TO_ZERO
    if ready >= desired:
        return State.RUNNING
    if ready > 0:
        return State.PARTLY_RUNNING
    if w.problems:
        return State.NOT_RUNNING
    return State.STARTING if existing else State.NOT_RUNNING


def _pod_problems(w: _Workload, pod: Json, bring_up: dict[str, str]) -> None:
    status = pod.get("diagnosis") or {}
    name = pod["metadata"]["name"]
    if status.get("ready") or status.get("deleting"):
        return
    found: list[tuple[str, str]] = []
    scheduled = status.get("scheduled") or {}
    if not pod["spec"].get("nodeName") and scheduled.get("status") == "False":
        if name in bring_up:
            found.append((Reason.WAITING_FOR_NODE, bring_up[name]))
        else:
            found.append((Reason.UNSCHEDULABLE, scheduled.get("message") or scheduled.get("reason") or ""))
    elif not pod["spec"].get("nodeName") and name in bring_up:
        found.append((Reason.WAITING_FOR_NODE, bring_up[name]))
    for trouble in status.get("troubles") or []:
        if trouble["reason"] in IMAGE_PULL_REASONS:
            reason = Reason.IMAGE_PULL
        elif trouble["reason"] == CRASH_LOOP_REASON:
            reason = Reason.CRASH_LOOP
        else:
            reason = Reason.CONTAINER_ERROR
        text = f"container {trouble['container']}: {trouble['reason']}"
        if trouble.get("message"):
            text += f": {trouble['message']}"
        if reason == Reason.CRASH_LOOP and trouble.get("last"):
            text += f"; last ended {trouble['last']}"
        found.append((reason, text[:MAX_MESSAGE]))
    for reason, message in found:
        problem = w.problem(reason, message)
        problem.count += 1
        problem.pods.append(name)


def diagnose(
    *, pods: Iterable[Json], workloads: Iterable[Json], events: Iterable[Json], now: datetime
) -> list[Json]:
    """The rows of one namespace: one per Deployment, StatefulSet, Job, ReplicaSet without a
    Deployment, and bare pod (or pods of another controller, grouped under it). `pods` are trimmed
    by the collector (with `trim_pod_status` under "diagnosis"), the rest by this module."""
    rows: dict[tuple[str, str], _Workload] = {}
    owner_of: dict[str, tuple[str, str]] = {}  # uid of a ReplicaSet -> its row
    names_of: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, name) of an object -> its row
    workloads = list(workloads)

    def row(kind: str, name: str) -> _Workload:
        if (kind, name) not in rows:
            rows[(kind, name)] = _Workload(kind, name)
        return rows[(kind, name)]

    for obj in workloads:
        if obj["kind"] == "ReplicaSet":
            continue
        meta = obj["metadata"]
        w = row(obj["kind"], meta["name"])
        w.uids.add(meta["uid"])
        w.created, w.gpus, w.conditions = meta.get("creationTimestamp"), obj["gpus"], obj["conditions"]
        if obj["kind"] == "Job":
            w.job = obj
        else:
            w.desired = int(obj.get("replicas") or 0)
        names_of[(obj["kind"], meta["name"])] = (w.kind, w.name)
    for obj in workloads:
        if obj["kind"] != "ReplicaSet":
            continue
        meta, controller = obj["metadata"], obj.get("controller")
        if controller and controller["kind"] == "Deployment" and ("Deployment", controller["name"]) in rows:
            key = ("Deployment", controller["name"])
        else:
            key = ("ReplicaSet", meta["name"])
            w = row(*key)
            w.created, w.gpus, w.desired = (
                meta.get("creationTimestamp"),
                obj["gpus"],
                int(obj.get("replicas") or 0),
            )
        w = rows[key]
        w.uids.add(meta["uid"])
        owner_of[meta["uid"]] = key
        names_of[("ReplicaSet", meta["name"])] = key
        if int(obj.get("replicas") or 0) > 0:
            w.failures += [
                c for c in obj["conditions"] if c["type"] == "ReplicaFailure" and c["status"] == "True"
            ]

    for pod in pods:
        status = pod.get("diagnosis") or {}
        controller = status.get("controller")
        if controller is None:
            key = ("Pod", pod["metadata"]["name"])
            w = row(*key)
            w.desired, w.gpus = 1, pod_gpu_requests(pod)
            w.created = pod["metadata"].get("creationTimestamp")
        else:
            key = owner_of.get(controller["uid"]) or names_of.get((controller["kind"], controller["name"]))
            if key is None:
                # A controller the collector does not watch (a DaemonSet, a custom resource): its pods
                # are its row, as many as it made.
                key = (controller["kind"], controller["name"])
                w = row(*key)
                w.gpus = w.gpus or pod_gpu_requests(pod)
        rows[key].pods.append(pod)

    bring_up: dict[str, str] = {}
    refusals: list[tuple[tuple[str, str], Json]] = []
    for event in events:
        involved = event["involved"]
        if event["reason"] in NODE_BRING_UP_REASONS and involved["kind"] == "Pod":
            bring_up[involved["name"]] = event["message"]
        elif event["reason"] == FAILED_CREATE_REASON and _recent(event, now):
            key = owner_of.get(involved["uid"]) or names_of.get((involved["kind"], involved["name"]))
            if key is not None and (not involved["uid"] or involved["uid"] in rows[key].uids):
                refusals.append((key, event))

    out = []
    for w in rows.values():
        live = [p for p in w.pods if not (p.get("diagnosis") or {}).get("deleting")]
        ready = sum(1 for p in live if (p.get("diagnosis") or {}).get("ready"))
        for pod in live:
            _pod_problems(w, pod, bring_up)
        state = ""
        if w.job is not None:
            state, desired = _job_state(w)
        else:
            desired = len(live) if w.desired is None else w.desired
        if len(live) < desired and not state:
            # Pods are missing: the controller's refused creates say why, counted by the events
            # (each counts its repeats); a ReplicaSet's ReplicaFailure condition, which stays until a
            # create succeeds, speaks for a refusal whose events have aged out.
            for key, event in refusals:
                if rows[key] is w:
                    text = refusal_text(event["message"])
                    w.problem(refusal_reason(text), text).count += event["count"]
            for failure in w.failures:
                text = refusal_text(failure.get("message") or failure.get("reason") or "")
                problem = w.problem(refusal_reason(text), text)
                problem.count = problem.count or 1
        for condition in w.conditions:
            stalled = (
                condition["type"] == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded"
            )
            if stalled and not w.problems and ready < desired:
                w.problem(Reason.STALLED, condition.get("message") or "").count += 1
        state = state or _state(w, len(live), ready, desired)
        held: dict[str, int] = defaultdict(int)
        for pod in live:
            if pod["spec"].get("nodeName"):
                for resource, units in pod_gpu_requests(pod).items():
                    held[resource] += units
        out.append(
            {
                "kind": w.kind,
                "name": w.name,
                "state": state,
                "state_label": STATE_LABELS[state],
                "desired": desired,
                "pods": len(live),
                "ready": ready,
                "gpus_per_pod": dict(sorted(w.gpus.items())),
                "gpus_held": sum(held.values()),
                "created": w.created,
                "problems": sorted(
                    (p.row() for p in w.problems.values()), key=lambda p: (-p["count"], p["reason"])
                ),
            }
        )
    out.sort(
        key=lambda r: (r["state"] not in TROUBLED_STATES, _KIND_ORDER.get(r["kind"], 9), r["kind"], r["name"])
    )
    return out[:MAX_WORKLOADS]


def troubled(rows: Iterable[Json]) -> int:
    """How many rows are not (fully) running."""
    return sum(1 for r in rows if r["state"] in TROUBLED_STATES)
