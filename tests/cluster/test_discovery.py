"""Inventory discovery as a pure function: node dicts in, proposed pools out (no cluster needed)."""

import copy
from typing import Any

from pools.kube.discovery import AcceleratorSpec, discover, node_accelerator
from pools.kube.objects import POOL_LABEL
from pools.models import PoolClass
from tests.testbed import load_testbed_module

tb = load_testbed_module()


def topology() -> dict[str, Any]:
    return tb.load_topology()


def expected_pools(topo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What discovery must report for each GPU pool of a topology, computed from the file."""
    wanted = {}
    for pool in topo["pools"]:
        if "accelerator" not in pool:
            continue
        accel = topo["accelerators"][pool["accelerator"]]
        mig = pool.get("mig") or {}
        per_node = pool["gpus"] * mig.get("slicesPerGpu", 1)
        wanted[pool["name"]] = {
            "pool_class": pool["class"],
            "product": accel["product"],
            "mig_profile": mig.get("profile", ""),
            "capacity": per_node * sum(pool["nodes"].values()),
            "zones": sorted(pool["nodes"]),
            "nodes": sum(pool["nodes"].values()),
        }
    return wanted


def whole_gpu_pools(topo: dict[str, Any]) -> list[dict[str, Any]]:
    """GPU pools without MIG, in file order."""
    return [p for p in topo["pools"] if "accelerator" in p and not p.get("mig")]


def nodes_of(nodes: list[dict[str, Any]], pool: str) -> list[dict[str, Any]]:
    return [n for n in nodes if n["metadata"]["labels"].get(POOL_LABEL) == pool]


def summary(inventory: Any) -> dict[str, dict[str, Any]]:
    return {
        p.name: {
            "pool_class": p.pool_class,
            "product": p.accelerator.product,
            "mig_profile": p.accelerator.mig_profile,
            "capacity": p.capacity,
            "zones": p.zones,
            "nodes": len(p.nodes),
        }
        for p in inventory.pools
    }


def test_discovery_of_the_rendered_topology_matches_the_file():
    topo = topology()
    inventory = discover(tb.render_nodes(topo), pool_classes=PoolClass.values)
    assert summary(inventory) == expected_pools(topo)
    cpu_pools = [p["name"] for p in topo["pools"] if "accelerator" not in p]
    assert cpu_pools and all(inventory.skipped[name] == "no GPUs" for name in cpu_pools)
    assert inventory.warnings == []
    for pool in inventory.pools:
        assert pool.node_selector == {POOL_LABEL: pool.name}
        assert pool.taint == {"key": POOL_LABEL, "value": pool.name, "effect": "NoSchedule"}


def test_mig_nodes_offer_slices_of_the_profile():
    topo = topology()
    spec = next(p for p in topo["pools"] if p.get("mig"))
    node = next(n for n in tb.render_nodes(topo) if n["metadata"]["labels"][POOL_LABEL] == spec["name"])
    accelerator = node_accelerator(node)
    profile = spec["mig"]["profile"]
    assert accelerator is not None
    assert accelerator.mig_profile == profile
    assert accelerator.resource_name == f"nvidia.com/mig-{profile}"
    assert accelerator.memory_gib == int(profile.split(".")[1].removesuffix("gb"))
    assert accelerator.slug.endswith(f"-mig-{profile.replace('.', '-')}")


def test_accelerator_slug_and_name_follow_the_demo_catalogue():
    spec = AcceleratorSpec(product="NVIDIA-A100-SXM4-80GB", type_label="nvidia-a100", gpu_memory_gib=80)
    assert (spec.slug, spec.display_name, spec.resource_name) == (
        "a100-80gb",
        "NVIDIA A100 80GB",
        "nvidia.com/gpu",
    )
    mig = AcceleratorSpec("NVIDIA-A100-SXM4-40GB", "nvidia-a100", 40, "1g.10gb")
    assert (mig.slug, mig.memory_gib) == ("a100-40gb-mig-1g-10gb", 10)


def test_a_pool_mixing_accelerators_is_not_proposed():
    topo = topology()
    nodes = tb.render_nodes(topo)
    home = whole_gpu_pools(topo)[0]
    other = next(p for p in whole_gpu_pools(topo) if p["accelerator"] != home["accelerator"])
    intruder = copy.deepcopy(nodes_of(nodes, other["name"])[0])
    intruder["metadata"]["name"] = "intruder"
    intruder["metadata"]["labels"][POOL_LABEL] = home["name"]
    inventory = discover([*nodes, intruder], pool_classes=PoolClass.values)
    assert inventory.pool(home["name"]) is None
    product = topo["accelerators"][other["accelerator"]]["product"]
    assert "mixes accelerators" in inventory.skipped[home["name"]]
    assert f"{product} (1 node)" in inventory.skipped[home["name"]]


def test_unknown_pool_class_unpooled_and_untainted_gpu_nodes_are_reported():
    topo = topology()
    nodes = tb.render_nodes(topo)
    pool = next(p for p in whole_gpu_pools(topo) if sum(p["nodes"].values()) >= 2)["name"]
    members = nodes_of(nodes, pool)
    odd_class = copy.deepcopy(members[0])
    odd_class["metadata"]["name"] = "odd"
    odd_class["metadata"]["labels"] |= {
        POOL_LABEL: "odd",
        "accelerator.platform.example.com/pool-class": "gaming",
    }
    unpooled = copy.deepcopy(members[0])
    unpooled["metadata"]["name"] = "stray"
    del unpooled["metadata"]["labels"][POOL_LABEL]
    members[1]["spec"]["taints"] = []
    inventory = discover([*nodes, odd_class, unpooled], pool_classes=PoolClass.values)
    assert "'gaming' is not a class the portal offers" in inventory.skipped["odd"]
    assert any(
        "stray" in w and "no accelerator.platform.example.com/pool label" in w for w in inventory.warnings
    )
    assert f"pool {pool}: 1 node(s) lack the pool taint" in inventory.warnings
    # Still proposed, with the taint its other nodes carry.
    assert inventory.pool(pool).taint["value"] == pool


def test_capacity_counts_allocatable_not_labels():
    topo = topology()
    spec = whole_gpu_pools(topo)[0]
    nodes = nodes_of(tb.render_nodes(topo), spec["name"])
    nodes[0]["status"]["allocatable"]["nvidia.com/gpu"] = "1"  # e.g. GPUs that failed health checks
    expected = 1 + spec["gpus"] * (len(nodes) - 1)
    assert discover(nodes, pool_classes=PoolClass.values).pool(spec["name"]).capacity == expected


def test_no_gpu_nodes():
    topo = topology()
    cpu = [n for n in tb.render_nodes(topo) if node_accelerator(n) is None]
    inventory = discover(cpu, pool_classes=PoolClass.values)
    assert cpu and inventory.gpu_nodes == 0 and inventory.pools == []
