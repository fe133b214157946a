"""Why isn't it running? On the testbed, in Chromium, with the real collector process: a Deployment
the quota stops and one the contract refuses show on the grant page, with the apiserver's own words,
within 10 seconds and without a reload; the API says the same; and no page view or API call asks the
cluster anything (the requests are counted by a proxy in front of the apiserver)."""

import contextlib
import secrets
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import expect
from rest_framework.test import APIClient

from pools.kube import ops
from pools.kube.errors import Invalid, KubeError
from pools.manifests import POLICY_NAME
from pools.models import Accelerator, Cluster, PoolClass
from pools.services import cluster_policies_apply
from pools.utilisation.diagnosis import refusal_text
from quotas.models import Grant
from quotas.reconcile import grant_reconcile
from tests import factories
from tests import testbed as testbed_support
from tests.provisioning.support import HoldingProxy
from tests.testbed import wait_until
from tests.ui.browser import mark_document, same_document, screenshot, signed_in
from tests.ui.conftest import htmx

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

POOL_LABEL = "accelerator.platform.example.com/pool"


def deployment(name: str, *, replicas: int, gpus: int, **pod_spec: Any) -> dict[str, Any]:
    """A plain manifest, as a team writes it: the cluster adds the contract."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    **pod_spec,
                    "containers": [
                        {
                            "name": "server",
                            "image": "registry.example.com/llm/vllm:stable",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


@pytest.fixture
def grant(transactional_db: None, testbed: testbed_support.Testbed) -> Iterator[Grant]:
    """An active 4-GPU grant on the testbed's interactive pool, reconciled in this process."""
    team = factories.team(f"wl{secrets.token_hex(3)}")
    factories.member(team, f"{team.slug}-alice")
    cluster = testbed.cluster(f"wl-{secrets.token_hex(3)}")
    a100 = Accelerator.objects.create(
        slug="a100-80gb",
        name="NVIDIA A100 80GB",
        product="NVIDIA-A100-SXM4-80GB",
        type_label="nvidia-a100",
        memory_gib=80,
        hourly_cost=Decimal("3.40"),
    )
    pool = factories.pool("interactive-a100", PoolClass.INTERACTIVE, a100, capacity=32, cluster=cluster)
    cluster_policies_apply(cluster=cluster)
    made = factories.active_grant(team, pool, 4, f"{team.slug}-interactive")

    def ready() -> Grant | None:
        grant_reconcile(grant_id=made.pk)
        fresh = Grant.objects.select_related("request", "team", "pool__cluster").get(pk=made.pk)
        return (
            fresh if any(c["type"] == "Ready" and c["status"] == "True" for c in fresh.conditions) else None
        )

    yield wait_until(f"grant {made.namespace} to be enforced", ready, timeout=60, interval=1)
    Cluster.objects.update(enabled=False)
    with contextlib.suppress(KubeError):
        ops.delete(testbed.admin, "v1", "Namespace", made.namespace)


def test_refused_deployments_show_with_the_apiservers_words_within_10_seconds_and_cost_no_request(
    grant: Grant, testbed: testbed_support.Testbed, live_server, browser, collector_process
) -> None:
    ns, admin = grant.namespace, testbed.admin
    member = grant.team.memberships.get().user
    collector = collector_process(grant.pool.cluster.name)
    page = signed_in(browser, live_server.url, member)
    page.goto(f"/requests/{grant.request_id}/")
    region = page.locator("#grant-workloads")
    # The collector process needs a moment to start and list the cluster.
    expect(region).to_contain_text(f"Nothing runs in namespace {ns} yet", timeout=30_000)
    mark_document(page)

    big = deployment("big", replicas=2, gpus=3)  # 2 x 3 GPUs in a 4-GPU grant: the second is refused
    odd = deployment(
        "odd", replicas=1, gpus=1, nodeSelector={"accelerator.platform.example.com/type": "nvidia-h100"}
    )
    started = time.monotonic()
    for manifest in (big, odd):
        ops.apply(admin, {**manifest, "metadata": {**manifest["metadata"], "namespace": ns}})

    def remaining_ms() -> float:
        return max(500.0, (10.0 - (time.monotonic() - started)) * 1000)

    big_row = region.locator('tr[data-workload="Deployment/big"][data-state="partly_running"]')
    expect(big_row.locator('.problem[data-reason="QuotaExceeded"]')).to_contain_text(
        "exceeded quota: gpu-grant", timeout=remaining_ms()
    )
    odd_row = region.locator('tr[data-workload="Deployment/odd"][data-state="not_running"]')
    expect(odd_row.locator('.problem[data-reason="ContractRefused"]')).to_contain_text(
        f"grant {ns} (grant {grant.pk}): it covers accelerator type nvidia-a100, the pod selects nvidia-h100",
        timeout=remaining_ms(),
    )
    assert time.monotonic() - started <= 10.5  # the budget, and a little for the assertions themselves
    expect(region.locator('tr[data-workload="Deployment/big"] td').nth(2)).to_contain_text("1 / 2")
    assert same_document(page)
    screenshot(page, "grant-workloads")

    # The API says the same, in the apiserver's own words: what it answers a create of the same pod.
    api = APIClient()
    api.force_authenticate(member)
    answer = api.get(f"/api/v1/grants/{grant.pk}/workloads/").json()
    rows = {w["name"]: w for w in answer["workloads"]}
    assert (rows["big"]["state"], rows["big"]["ready"], rows["big"]["desired"]) == ("partly_running", 1, 2)
    assert (rows["odd"]["state"], rows["odd"]["ready"]) == ("not_running", 0)
    for name, reason in (("big", "QuotaExceeded"), ("odd", "ContractRefused")):
        manifest = {"big": big, "odd": odd}[name]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-probe", "namespace": ns},
            "spec": manifest["spec"]["template"]["spec"],
        }
        with pytest.raises(Invalid) as refused:
            ops.create(admin, pod, dry_run=True)
        (problem,) = rows[name]["problems"]
        assert problem["reason"] == reason
        assert problem["message"] == refusal_text(refused.value.message)
        assert problem["count"] >= 1
    assert POLICY_NAME in rows["odd"]["problems"][0]["message"]

    # No page view asks the cluster: what they show was read by the collector. Point the cluster's
    # credentials at a counting proxy and look at everything the grant offers.
    returncode, output = collector.stop()
    assert returncode == 0, output
    proxy = HoldingProxy(testbed.kubeconfig)
    try:
        Cluster.objects.filter(pk=grant.pool.cluster_id).update(
            kubeconfig="", api_url=proxy.url, token="the-proxy-authenticates"
        )
        browser_client = Client()
        browser_client.force_login(member)
        url = f"/requests/{grant.request_id}/"
        calls = [
            lambda: browser_client.get(url),
            lambda: browser_client.get(url, **htmx("grant-workloads", f"http://testserver{url}")),
            lambda: browser_client.get(url, **htmx("request-live", f"http://testserver{url}")),
            lambda: browser_client.get(f"/grants/{grant.pk}/kubeconfig.yaml"),
            lambda: browser_client.get(f"/grants/{grant.pk}/example.yaml"),
            lambda: api.get(f"/api/v1/grants/{grant.pk}/"),
            lambda: api.get(f"/api/v1/grants/{grant.pk}/workloads/"),
            lambda: api.get(f"/api/v1/grants/{grant.pk}/access/"),
        ]
        for _ in range(3):
            for call in calls:
                # The request's own live part has settled: its poll answers 286 (stop polling).
                assert call().status_code in (200, 286)
        assert "exceeded quota: gpu-grant" in browser_client.get(url).content.decode()
        assert proxy.seen == []
        # The proxy does see what goes to the cluster with those credentials.
        ops.get(Cluster.objects.get(pk=grant.pool.cluster_id), "v1", "Namespace", ns)
        assert proxy.seen and all(request.startswith("GET ") for request in proxy.seen)
    finally:
        proxy.close()
