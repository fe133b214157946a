"""The figures of pools.utilisation against a hand-made topology whose answers are worked out below."""

from datetime import UTC, datetime, timedelta

import pytest

from pools.kube.conformance import Allowlist
from pools.kube.objects import GPU_REQUESTS, pod_gpu_requests, with_gpu_requests
from pools.utilisation.figures import GrantSpec, PoolSpec, compute

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
POOL = "accelerator.platform.example.com/pool"
TYPE = "accelerator.platform.example.com/type"
GPU = "nvidia.com/gpu"
MIG = "nvidia.com/mig-1g.10gb"

INTERACTIVE = PoolSpec(1, "int", {POOL: "int"}, GPU, "interactive-inference", headroom=6, interactive=True)
MIG_POOL = PoolSpec(2, "mig", {POOL: "mig"}, MIG, "experimentation")


def node(name, pool=None, *, gpus=8, resource=GPU, ready=True, cordoned=False, zone="zone-a"):
    labels = {"topology.kubernetes.io/zone": zone, TYPE: "nvidia-a100"}
    if pool:
        labels[POOL] = pool
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"cpu": "96", resource: str(gpus)} if gpus else {"cpu": "32"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def container(**resources):
    return {
        "name": "c",
        "resources": {"requests": {k.replace("_", "/", 1): str(v) for k, v in resources.items()}},
    }


def gpus(n, resource=GPU, use_limits=False):
    section = "limits" if use_limits else "requests"
    return {"name": "c", "resources": {section: {"cpu": "1", resource: str(n)}}}


def pod(
    name, namespace="team-ns", *, node=None, containers=(), init=(), phase="Running", created=None, **spec
):
    meta = {"name": name, "namespace": namespace}
    if created is not None:
        meta["creationTimestamp"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "containers": list(containers), "initContainers": list(init), **spec},
        "status": {"phase": phase if node else "Pending"},
    }


def topology():
    nodes = [
        node("n1", "int"),
        node("n2", "int"),
        node("n3", "int", cordoned=True),
        node("n4", "int", ready=False, zone="zone-b"),
        node("n5", "int", zone="zone-b"),
        node("m1", "mig", gpus=32, resource=MIG),
        node("m2", "mig", gpus=32, resource=MIG),
        node("u1", None),  # GPUs, but no pool claims it
        node("c1", "general", gpus=0),  # a CPU node
    ]
    vision, other = "vision-interactive-r1", "nlp-scratch"
    sidecar = {**gpus(1), "restartPolicy": "Always"}
    pods = [
        # n1: 4 + max(init 2, containers 1) = 6 of 8
        pod("a", vision, node="n1", containers=[gpus(4)]),
        pod("b", vision, node="n1", containers=[gpus(1)], init=[gpus(2)]),
        # n3 (cordoned): 1
        pod("c", other, node="n3", containers=[gpus(1, use_limits=True)]),
        # n5: 3 + (sidecar 1 + container 1) = 5; finished pods hold nothing
        pod("d", vision, node="n5", containers=[gpus(3)]),
        pod("e", vision, node="n5", containers=[gpus(1)], phase="Succeeded"),
        pod("f", vision, node="n5", containers=[gpus(2)], phase="Failed"),
        pod("g", vision, node="n5", containers=[gpus(1)], init=[sidecar]),
        # m1: 3 slices; m2 runs a pod asking for a whole GPU, which the MIG pool does not count
        pod("h", vision, node="m1", containers=[gpus(3, MIG)]),
        pod("i", vision, node="m2", containers=[gpus(1)]),
        # non-GPU pods on the GPU node n2: one counts, the GPU operator's daemon does not
        pod("j", "default", node="n2", containers=[container(cpu=1)]),
        pod("k", "gpu-operator", node="n2", containers=[container(cpu=1)]),
        # a non-GPU pod on the CPU node is nobody's business here
        pod("l", "default", node="c1", containers=[container(cpu=1)]),
        # pending
        pod(
            "p1",
            vision,
            containers=[gpus(8)],
            created=NOW - timedelta(seconds=300),
            nodeSelector={POOL: "int"},
        ),
        pod(
            "p2",
            vision,
            containers=[gpus(2)],
            created=NOW - timedelta(seconds=60),
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": POOL, "operator": "In", "values": ["int"]}]}
                        ]
                    }
                }
            },
        ),
        # selects by accelerator type only: the pools offering its resource with a matching node
        {
            **pod("p3", other, containers=[gpus(1)], nodeSelector={TYPE: "nvidia-a100"}),
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "lastTransitionTime": (NOW - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ],
            },
        },
        pod("p4", other, containers=[gpus(1)], created=NOW, nodeSelector={POOL: "unknown"}),
        pod("p5", other, containers=[container(cpu=1)], created=NOW - timedelta(hours=1)),
        pod(
            "p6",
            vision,
            containers=[gpus(2, MIG)],
            created=NOW - timedelta(seconds=10),
            nodeSelector={POOL: "mig"},
        ),
    ]
    grants = {vision: GrantSpec(vision, 11, 5, "vision", INTERACTIVE.id, 8)}
    return nodes, pods, grants


@pytest.fixture
def figures():
    nodes, pods, grants = topology()
    allowlist = Allowlist(namespaces=frozenset({"gpu-operator"}))
    return compute(nodes, pods, [INTERACTIVE, MIG_POOL], grants, NOW, allowed_on_gpu_nodes=allowlist.allows)


def test_node_and_gpu_figures_of_the_interactive_pool(figures):
    f = figures.pools[INTERACTIVE.id]
    assert (f.nodes_total, f.nodes_ready, f.nodes_cordoned) == (5, 4, 1)
    assert f.gpus_allocatable == 40
    # n1 6 + n3 1 + n5 5
    assert f.gpus_requested == 12
    # n1 2 + n2 8 + n5 3; the cordoned n3 and the NotReady n4 offer nothing
    assert f.gpus_free == 13
    assert {n.name: (n.requested, n.free) for n in f.nodes} == {
        "n1": (6, 2),
        "n2": (0, 8),
        "n3": (1, 0),
        "n4": (0, 0),
        "n5": (5, 3),
    }


def test_fragmentation(figures):
    f = figures.pools[INTERACTIVE.id]
    assert f.gpus_stranded == 5  # n1 2 + n5 3: free, but only for pods that fit the gaps
    assert f.largest_free_block == 8  # n2
    assert f.nodes_fully_free == 1  # n2; the non-GPU pod j on it takes no GPU
    m = figures.pools[MIG_POOL.id]
    assert (m.gpus_allocatable, m.gpus_requested, m.gpus_free) == (64, 3, 61)
    assert (m.gpus_stranded, m.largest_free_block, m.nodes_fully_free) == (29, 32, 1)


def test_pending_pods_and_queue_wait(figures):
    f = figures.pools[INTERACTIVE.id]
    assert f.pods_pending == 3
    assert [(p.name, p.gpus, p.wait_seconds) for p in f.pending] == [
        ("p1", 8, 300),
        ("p2", 2, 60),
        ("p3", 1, 30),
    ]
    assert f.pending[2].reason == "Unschedulable"
    assert f.queue_wait_max_seconds == 300
    m = figures.pools[MIG_POOL.id]
    assert [(p.name, p.gpus, p.wait_seconds) for p in m.pending] == [("p6", 2, 10)]
    assert figures.unmatched_pending == 1  # p4 names a pool nobody knows


def test_usage_per_namespace_against_its_grant(figures):
    usage = figures.pools[INTERACTIVE.id].namespaces
    vision = usage["vision-interactive-r1"]
    # a 4 + b 2 + d 3 + g 2 running, p1 8 + p2 2 pending
    assert (vision.gpus, vision.pods, vision.pending_pods, vision.pending_gpus) == (11, 4, 2, 10)
    assert (vision.team, vision.team_id, vision.grant_id, vision.granted) == ("vision", 5, 11, 8)
    other = usage["nlp-scratch"]
    assert (other.gpus, other.pending_gpus, other.team, other.granted) == (1, 1, "", 0)


def test_non_gpu_pods_and_unpooled_nodes(figures):
    f = figures.pools[INTERACTIVE.id]
    assert f.non_gpu_pods == 1
    assert f.non_gpu_pod_names == ["default/j"]
    assert figures.unpooled_gpu_nodes == ["u1"]


def test_headroom_warning_when_free_gpus_drop_below_the_warm_buffer():
    nodes, pods, grants = topology()
    assert not compute(nodes, pods, [INTERACTIVE], grants, NOW).pools[1].headroom_short
    # Fill n2 with 8 GPUs: 13 - 8 = 5 free, below the buffer of 6.
    pods.append(pod("big", "vision-interactive-r1", node="n2", containers=[gpus(8)]))
    tight = compute(nodes, pods, [INTERACTIVE], grants, NOW).pools[1]
    assert (tight.gpus_free, tight.headroom_short) == (5, True)
    batch = PoolSpec(1, "int", {POOL: "int"}, GPU, "batch-inference", headroom=6)
    assert not compute(nodes, pods, [batch], grants, NOW).pools[1].headroom_short


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"containers": [gpus(2), gpus(3)]}, {GPU: 5}),
        ({"containers": [gpus(1)], "initContainers": [gpus(4)]}, {GPU: 4}),
        ({"containers": [gpus(4)], "initContainers": [gpus(2), gpus(3)]}, {GPU: 4}),
        # sidecar 1 runs beside the second init container (1 + 3) and beside the main container (1 + 2)
        (
            {"containers": [gpus(2)], "initContainers": [{**gpus(1), "restartPolicy": "Always"}, gpus(3)]},
            {GPU: 4},
        ),
        ({"containers": [gpus(1, use_limits=True)]}, {GPU: 1}),
        ({"containers": [gpus(2, MIG)], "overhead": {MIG: "1"}}, {MIG: 3}),
        ({"containers": [container(cpu=2)]}, {}),
    ],
)
def test_effective_gpu_request_of_a_pod(spec, expected):
    assert pod_gpu_requests({"spec": spec}) == expected
    # As the collector's pod cache keeps it: worked out once, from the whole pod, next to the trim.
    cached = with_gpu_requests(lambda pod: {"trimmed": True})({"spec": spec})
    assert cached == {"trimmed": True, GPU_REQUESTS: expected}
    assert pod_gpu_requests(cached) == expected


def test_pods_with_the_same_gpu_requests_share_their_cached_requests():
    transform = with_gpu_requests(lambda pod: {})
    a, b = (transform({"spec": {"containers": [gpus(2)]}}) for _ in range(2))
    assert a[GPU_REQUESTS] is b[GPU_REQUESTS]
