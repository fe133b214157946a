"""What testbed.py renders for the engines from the topology, without a cluster: NodePools,
Karpenter's instance types, Kueue's configuration and webhooks."""

import copy

import pytest

from tests.testbed import load_testbed_module

tb = load_testbed_module()
PREFIX = "accelerator.platform.example.com/"


@pytest.fixture
def topology() -> dict:
    return tb.load_topology()


def test_every_elastic_pool_is_a_nodepool_whose_nodes_look_like_static_ones(topology):
    static = {n["metadata"]["labels"][f"{PREFIX}pool"]: n for n in tb.render_nodes(topology)}
    nodepools = {n["metadata"]["name"]: n for n in tb.render_nodepools(topology, 45)}
    assert sorted(nodepools) == sorted(p["name"] for p in topology["elasticPools"])
    classes = {p["class"] for p in topology["elasticPools"]}
    assert {"interactive-inference", "batch-inference"} <= classes

    for spec in topology["elasticPools"]:
        nodepool = nodepools[spec["name"]]
        template = nodepool["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert labels[f"{PREFIX}pool"] == spec["name"]
        assert labels[f"{PREFIX}pool-class"] == spec["class"]
        assert labels[f"{PREFIX}lifecycle"] == spec["lifecycle"]
        assert labels["nvidia.com/gpu.product"] == topology["accelerators"][spec["accelerator"]]["product"]
        # The same label keys as a static GPU node, less those Karpenter sets itself.
        a_static_gpu_node = next(n for n in static.values() if "nvidia.com/gpu" in n["status"]["allocatable"])
        assert set(labels) == set(a_static_gpu_node["metadata"]["labels"]) - tb._NODE_ONLY_LABELS
        assert template["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
        assert template["metadata"]["annotations"][tb.BRING_UP_ANNOTATION] == "45"
        assert template["spec"]["taints"] == [
            {"key": f"{PREFIX}gpu", "value": "true", "effect": "NoSchedule"},
            {"key": f"{PREFIX}pool", "value": spec["name"], "effect": "NoSchedule"},
        ]
        requirements = {r["key"]: r["values"] for r in template["spec"]["requirements"]}
        assert requirements["node.kubernetes.io/instance-type"] == [spec["instanceType"]]
        assert requirements["karpenter.sh/capacity-type"] == [spec["lifecycle"]]
        assert requirements["topology.kubernetes.io/zone"] == spec["zones"]
        assert nodepool["spec"]["limits"] == {"nvidia.com/gpu": str(spec["limits"]["gpus"])}
        assert nodepool["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"
        # Elastic pools are not static pools: nothing of them is in the rendered nodes.
        assert spec["name"] not in static


def test_instance_types_offer_every_zone_on_demand_and_spot_priced_per_gpu(topology):
    types = {t["name"]: t for t in tb.render_instance_types(topology)}
    for spec in topology["elasticPools"]:
        entry = types[spec["instanceType"]]
        assert entry["resources"]["nvidia.com/gpu"] == str(spec["gpus"])
        assert entry["resources"]["cpu"] == spec["cpu"] and entry["resources"]["memory"] == spec["memory"]
        offers = {
            tuple(r["values"][0] for r in o["Requirements"]): o["Price"]
            for o in entry["offerings"]
            if o["Available"]
        }
        price = topology["accelerators"][spec["accelerator"]]["hourlyPrice"]
        for zone in spec["zones"]:
            assert offers[("on-demand", zone)] == pytest.approx(price["on-demand"] * spec["gpus"])
            assert offers[("spot", zone)] == pytest.approx(price["spot"] * spec["gpus"])


def test_a_mig_elastic_pool_advertises_and_limits_its_slices(topology):
    topology = copy.deepcopy(topology)
    topology["elasticPools"] = [
        {
            **topology["elasticPools"][0],
            "name": "experimentation-mig-elastic",
            "class": "experimentation",
            "accelerator": "a100-40gb",
            "instanceType": "p4d.24xlarge",
            "mig": {"profile": "1g.10gb", "slicesPerGpu": 4},
            "limits": {"gpus": 64},
        }
    ]
    (entry,) = tb.render_instance_types(topology)
    assert entry["resources"]["nvidia.com/mig-1g.10gb"] == "32"
    assert "nvidia.com/gpu" not in entry["resources"]
    (nodepool,) = tb.render_nodepools(topology)
    assert nodepool["spec"]["limits"] == {"nvidia.com/mig-1g.10gb": "64"}
    assert nodepool["spec"]["template"]["metadata"]["labels"][f"{PREFIX}mig-profile"] == "1g.10gb"


def test_two_shapes_under_one_instance_type_name_are_refused(topology):
    topology = copy.deepcopy(topology)
    first = topology["elasticPools"][0]
    topology["elasticPools"].append({**first, "name": "other", "cpu": "1"})
    with pytest.raises(tb.TestbedError, match="two different shapes"):
        tb.render_instance_types(topology)


def test_kueue_webhooks_are_local_limited_to_grant_namespaces_and_fail_closed():
    manifests = tb.binaries().kueue_dir / "webhook" / "manifests.yaml"
    configurations = tb._kueue_job_webhooks(manifests, 4443, b"CA")
    hooks = [h for c in configurations for h in c["webhooks"]]
    names = {h["name"] for h in hooks}
    assert {"mjob.kueue.x-k8s.io", "vjob.kueue.x-k8s.io", "vclusterqueue.kueue.x-k8s.io"} <= names
    # Only what the testbed enables: no pod, deployment or other frameworks' hooks.
    assert not any(h["name"].startswith(("mpod", "mdeployment", "mrayjob")) for h in hooks)
    for hook in hooks:
        assert hook["clientConfig"]["url"].startswith("https://127.0.0.1:4443/")
        assert hook["clientConfig"]["caBundle"] == "Q0E="
        assert hook["failurePolicy"] == "Fail"
        assert hook["namespaceSelector"] == {
            "matchExpressions": [{"key": tb.GRANT_LABEL, "operator": "Exists"}]
        }


def test_kueue_configuration():
    state = {"ports": {"kueueWebhook": 1, "kueueHealth": 2, "karpenterMetrics": 3, "karpenterHealth": 4}}
    config = tb._kueue_configuration("some-cluster", state)
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["internalCertManagement"] == {"enable": False}
    assert config["webhook"]["host"] == "127.0.0.1" and config["webhook"]["port"] == 1
    assert config["metrics"] == {"bindAddress": "0"}
    assert config["featureGates"]["VisibilityOnDemand"] is False
    assert "batch/job" in config["integrations"]["frameworks"]
