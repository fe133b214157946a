"""Why isn't it running? The diagnosis of one namespace from objects shaped as the apiserver serves
them, trimmed the way the collector trims them; every answer is worked out here by hand."""

from datetime import UTC, datetime, timedelta
from typing import Any

from pools.manifests import POLICY_NAME
from pools.utilisation.collector import trim_pod
from pools.utilisation.diagnosis import TRIMMERS, Reason, State, diagnose, refusal_text, trim_event, troubled
from pools.utilisation.workloads import with_pod_status

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
NS = "vision-interactive-r7"


def stamp(seconds_ago: float = 0) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def template(gpus: int = 1) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {"spec": {"containers": [{"name": "server", "resources": {"limits": limits}}]}}


def owner(kind: str, name: str, uid: str) -> list[dict[str, Any]]:
    return [{"kind": kind, "name": name, "uid": uid, "controller": True}]


def deployment(name: str, replicas: int = 1, gpus: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": stamp(60)},
        "spec": {"replicas": replicas, "template": template(gpus)},
        "status": status,
    }


def replica_set(
    deployment_name: str, suffix: str = "abc", replicas: int = 1, **status: Any
) -> dict[str, Any]:
    name = f"{deployment_name}-{suffix}"
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "creationTimestamp": stamp(60),
            "ownerReferences": owner("Deployment", deployment_name, f"uid-{deployment_name}"),
        },
        "spec": {"replicas": replicas, "template": template()},
        "status": status,
    }


def pod(
    name: str,
    controller: tuple[str, str] | None = None,
    *,
    gpus: int = 1,
    node: str | None = "a100-0",
    ready: bool = True,
    phase: str = "Running",
    scheduled: dict[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if scheduled is not None:
        conditions.append({"type": "PodScheduled", **scheduled})
    meta: dict[str, Any] = {"name": name, "namespace": NS, "creationTimestamp": stamp(30)}
    if controller is not None:
        meta["ownerReferences"] = owner(controller[0], controller[1], f"uid-{controller[1]}")
    return {
        "metadata": meta,
        "spec": {"nodeName": node, **template(gpus)["spec"]},
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": containers or []},
    }


def event(kind: str, name: str, reason: str, message: str, count: int = 1, seconds_ago: float = 5) -> dict:
    return {
        "metadata": {"name": f"{name}.{reason}.{count}", "namespace": NS},
        "involvedObject": {"kind": kind, "name": name, "uid": f"uid-{name}"},
        "reason": reason,
        "message": message,
        "count": count,
        "lastTimestamp": stamp(seconds_ago),
    }


QUOTA_REFUSAL = (
    'Error creating: pods "big-abc-{}" is forbidden: exceeded quota: gpu-grant, requested: '
    "requests.nvidia.com/gpu=3, used: requests.nvidia.com/gpu=3, limited: requests.nvidia.com/gpu=4"
)
CONTRACT_REFUSAL = (
    f"Error creating: pods \"odd-abc-{{}}\" is forbidden: ValidatingAdmissionPolicy '{POLICY_NAME}' with "
    f"binding '{POLICY_NAME}' denied request: grant {NS} (grant 7): it covers accelerator type nvidia-a100, "
    "the pod selects nvidia-h100"
)


def run(pods=(), workloads=(), events=()) -> dict[str, dict[str, Any]]:
    trimmed = []
    for kind, objects in workloads:
        trimmed += [TRIMMERS[kind](o) for o in objects]
    rows = diagnose(
        pods=[with_pod_status(trim_pod)(p) for p in pods],
        workloads=trimmed,
        events=[trim_event(e) for e in events],
        now=NOW,
    )
    return {f"{r['kind']}/{r['name']}": r for r in rows}


def test_a_deployment_the_quota_stops_is_partly_running_with_the_quotas_words_counted() -> None:
    rows = run(
        pods=[pod("big-abc-1", ("ReplicaSet", "big-abc"), gpus=3)],
        workloads=[
            ("deployments", [deployment("big", 2, 3)]),
            ("replicasets", [replica_set("big", replicas=2)]),
        ],
        # Each attempt names another pod: ten events, then the recorder combines them.
        events=[
            event("ReplicaSet", "big-abc", "FailedCreate", QUOTA_REFUSAL.format(i), seconds_ago=20 - i)
            for i in range(3)
        ]
        + [
            event(
                "ReplicaSet",
                "big-abc",
                "FailedCreate",
                "(combined from similar events): " + QUOTA_REFUSAL.format("z"),
                count=4,
            )
        ],
    )
    big = rows["Deployment/big"]
    assert (big["state"], big["desired"], big["pods"], big["ready"], big["gpus_held"]) == (
        State.PARTLY_RUNNING,
        2,
        1,
        1,
        3,
    )
    assert big["gpus_per_pod"] == {"nvidia.com/gpu": 3}
    (problem,) = big["problems"]
    assert problem["reason"] == Reason.QUOTA_EXCEEDED
    assert problem["count"] == 3 + 4
    assert problem["message"] == refusal_text(QUOTA_REFUSAL.format("x"))
    assert problem["message"].startswith('pods "…" is forbidden: exceeded quota: gpu-grant')


def test_a_deployment_the_contract_refuses_names_the_policy_and_the_grant() -> None:
    rs = replica_set("odd")
    rs["status"] = {
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": CONTRACT_REFUSAL.format("q").removeprefix("Error creating: "),
            }
        ]
    }
    rows = run(
        workloads=[("deployments", [deployment("odd")]), ("replicasets", [rs])],
        events=[event("ReplicaSet", "odd-abc", "FailedCreate", CONTRACT_REFUSAL.format("r"), count=2)],
    )
    odd = rows["Deployment/odd"]
    assert (odd["state"], odd["ready"], odd["desired"]) == (State.NOT_RUNNING, 0, 1)
    (problem,) = odd["problems"]
    assert problem["reason"] == Reason.CONTRACT_REFUSED
    # The event and the ReplicaSet's condition say the same thing: one reason, counted by the event.
    assert problem["count"] == 2
    assert (
        f"denied request: grant {NS} (grant 7): it covers accelerator type nvidia-a100" in problem["message"]
    )
    assert troubled(rows.values()) == 1


def test_a_refusal_that_aged_out_no_longer_explains_anything_but_a_standing_condition_does() -> None:
    old = event("ReplicaSet", "big-abc", "FailedCreate", QUOTA_REFUSAL.format(1), seconds_ago=3600)
    rows = run(
        workloads=[
            ("deployments", [deployment("big", 2, 3)]),
            ("replicasets", [replica_set("big", replicas=2)]),
        ],
        events=[old],
    )
    assert rows["Deployment/big"]["problems"] == []
    assert rows["Deployment/big"]["state"] == State.NOT_RUNNING

    failing = replica_set("big", replicas=2)
    failing["status"] = {
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": QUOTA_REFUSAL.format(2),
            }
        ]
    }
    rows = run(
        workloads=[("deployments", [deployment("big", 2, 3)]), ("replicasets", [failing])], events=[old]
    )
    (problem,) = rows["Deployment/big"]["problems"]
    assert (problem["reason"], problem["count"]) == (Reason.QUOTA_EXCEEDED, 1)


def test_a_running_deployment_shows_no_old_refusals() -> None:
    rows = run(
        pods=[pod("big-abc-1", ("ReplicaSet", "big-abc")), pod("big-abc-2", ("ReplicaSet", "big-abc"))],
        workloads=[
            ("deployments", [deployment("big", 2)]),
            ("replicasets", [replica_set("big", replicas=2)]),
        ],
        events=[event("ReplicaSet", "big-abc", "FailedCreate", QUOTA_REFUSAL.format(1))],
    )
    assert rows["Deployment/big"]["state"] == State.RUNNING
    assert rows["Deployment/big"]["problems"] == []


def test_events_of_a_deleted_replica_set_of_the_same_name_are_not_its_successors() -> None:
    stale = event("ReplicaSet", "big-abc", "FailedCreate", QUOTA_REFUSAL.format(1))
    stale["involvedObject"]["uid"] = "uid-of-the-deleted-one"
    rows = run(
        workloads=[("deployments", [deployment("big")]), ("replicasets", [replica_set("big")])],
        events=[stale],
    )
    assert rows["Deployment/big"]["problems"] == []


def test_pending_pods_are_unschedulable_with_the_schedulers_words_or_wait_for_a_node() -> None:
    message = "0/13 nodes are available: 4 Insufficient nvidia.com/gpu, 9 node(s) didn't match selector."
    unschedulable = {"status": "False", "reason": "Unschedulable", "message": message}
    rows = run(
        pods=[
            pod(
                f"chat-abc-{i}",
                ("ReplicaSet", "chat-abc"),
                node=None,
                ready=False,
                phase="Pending",
                scheduled=unschedulable,
            )
            for i in range(3)
        ]
        + [pod("lonely", node=None, ready=False, phase="Pending", scheduled=unschedulable)],
        workloads=[
            ("deployments", [deployment("chat", 3)]),
            ("replicasets", [replica_set("chat", replicas=3)]),
        ],
        events=[event("Pod", "lonely", "Nominated", "Pod should schedule on: nodeclaim/gpu-8x7kq")],
    )
    chat = rows["Deployment/chat"]
    assert chat["state"] == State.NOT_RUNNING
    (problem,) = chat["problems"]
    assert (problem["reason"], problem["message"], problem["count"]) == (Reason.UNSCHEDULABLE, message, 3)
    assert problem["pods"] == ["chat-abc-0", "chat-abc-1", "chat-abc-2"]
    lonely = rows["Pod/lonely"]
    (waiting,) = lonely["problems"]
    assert (waiting["reason"], waiting["message"]) == (
        Reason.WAITING_FOR_NODE,
        "Pod should schedule on: nodeclaim/gpu-8x7kq",
    )


def test_image_pull_failures_and_crash_loops_in_the_kubelets_words() -> None:
    pulling = {
        "name": "server",
        "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "vllm:nope"'}},
    }
    crashing = {
        "name": "server",
        "restartCount": 7,
        "state": {
            "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container"}
        },
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
    }
    rows = run(
        pods=[
            pod("pull-abc-1", ("ReplicaSet", "pull-abc"), ready=False, containers=[pulling]),
            pod("crash-0", ("StatefulSet", "crash"), ready=False, containers=[crashing]),
        ],
        workloads=[
            ("deployments", [deployment("pull")]),
            ("replicasets", [replica_set("pull")]),
            (
                "statefulsets",
                [
                    {
                        "metadata": {"name": "crash", "namespace": NS, "uid": "uid-crash"},
                        "spec": {"replicas": 1, "template": template(2)},
                    }
                ],
            ),
        ],
    )
    (pull,) = rows["Deployment/pull"]["problems"]
    assert (pull["reason"], pull["message"]) == (
        Reason.IMAGE_PULL,
        'container server: ImagePullBackOff: Back-off pulling image "vllm:nope"',
    )
    crash = rows["StatefulSet/crash"]
    assert crash["gpus_per_pod"] == {"nvidia.com/gpu": 2}
    (loop,) = crash["problems"]
    assert loop["reason"] == Reason.CRASH_LOOP
    assert loop["message"].endswith("; last ended OOMKilled (exit code 137)")


def test_jobs_bare_pods_and_pods_of_unwatched_controllers_are_rows_of_their_own() -> None:
    job = {
        "metadata": {"name": "eval", "namespace": NS, "uid": "uid-eval"},
        "spec": {"parallelism": 2, "completions": 4, "template": template(1)},
        "status": {"active": 1, "succeeded": 3},
    }
    failed = {
        "metadata": {"name": "gave-up", "namespace": NS, "uid": "uid-gave-up"},
        "spec": {"template": template(1)},
        "status": {
            "failed": 7,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        },
    }
    rows = run(
        pods=[
            pod("eval-1", ("Job", "eval")),
            pod("notebook", gpus=0),
            pod("worker-0", ("LeaderWorkerSet", "lws")),
        ],
        workloads=[("jobs", [job, failed])],
    )
    # 4 completions, 3 done: one pod more is all it needs, and it runs.
    assert (rows["Job/eval"]["state"], rows["Job/eval"]["desired"]) == (State.RUNNING, 1)
    assert rows["Job/gave-up"]["state"] == State.FAILED
    assert rows["Job/gave-up"]["problems"][0]["message"] == "Job has reached the specified backoff limit"
    assert (rows["Pod/notebook"]["state"], rows["Pod/notebook"]["gpus_per_pod"]) == (State.RUNNING, {})
    assert rows["LeaderWorkerSet/lws"]["pods"] == 1
    # What needs attention comes first.
    assert next(iter(rows)) == "Job/gave-up"


def test_a_suspended_job_is_not_troubled_and_scaled_down_deployments_are_not_either() -> None:
    suspended = {
        "metadata": {"name": "queued", "namespace": NS, "uid": "uid-queued"},
        "spec": {"suspend": True, "template": template(4)},
        "status": {},
    }
    rows = run(workloads=[("jobs", [suspended]), ("deployments", [deployment("idle", 0)])])
    assert rows["Job/queued"]["state"] == State.SUSPENDED
    assert rows["Deployment/idle"]["state"] == State.SCALED_TO_ZERO
    assert troubled(rows.values()) == 0
