"""The whole journey in real Chromium against the testbed, with a real Celery worker process.

alice requests 4 A100 GPUs for interactive inference, bob (lead) and an admin approve, and alice's
page shows the grant reach Active by itself (the worker applies it to the cluster); then she starts
a model server from the grant page and watches its replicas become Ready. Nothing here is eager or
mocked: the approval is queued on commit, the worker reconciles against the testbed's apiserver.
"""

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from playwright.sync_api import Browser, Page, expect

from pools.kube import ops
from pools.kube.errors import KubeError
from pools.models import Accelerator, Cluster, PoolClass
from pools.services import cluster_policies_apply
from portal.celery import app as celery_app
from portal.models import User
from quotas.models import CapacityRequest, Grant, Membership
from quotas.states import RequestState
from tests import factories
from tests import testbed as testbed_support
from tests.collector import live_collector
from tests.common import database_url
from tests.provisioning.support import Worker, worker_env
from tests.ui.browser import mark_document, same_document, screenshot, signed_in

pytestmark = pytest.mark.cluster

STATE = ".status-line .state"
IMAGE = "registry.example.com/llm/vllm:v0.6.3"


@dataclass
class Org:
    team_slug: str
    alice: User
    bob: User
    admin: User
    a100: Accelerator


def _delete_grant_objects(testbed: testbed_support.Testbed, namespaces: list[str]) -> None:
    for api_version, kind, name in [("v1", "Namespace", ns) for ns in namespaces]:
        try:
            ops.delete(testbed.admin, api_version, kind, name)
        except KubeError:
            continue  # never created, or already gone


@pytest.fixture
def org(
    transactional_db: None, testbed: testbed_support.Testbed, settings_override: None, tmp_path: Path
) -> Iterator[Org]:
    # A team slug of its own: grant namespaces are named after it, and the testbed is shared.
    team = factories.team(f"ui{secrets.token_hex(3)}")
    cluster = testbed.cluster(f"ui-{secrets.token_hex(3)}")
    a100 = Accelerator.objects.create(
        slug="a100-80gb",
        name="NVIDIA A100 80GB",
        product="NVIDIA-A100-SXM4-80GB",
        type_label="nvidia-a100",
        memory_gib=80,
        hourly_cost=Decimal("3.40"),
    )
    # The testbed's own interactive pool: 4 nodes of 8 A100s; one node's worth kept as headroom.
    factories.pool("interactive-a100", PoolClass.INTERACTIVE, a100, capacity=32, headroom=8, cluster=cluster)
    cluster_policies_apply(cluster=cluster)  # what registering a cluster does
    org = Org(
        team_slug=team.slug,
        alice=factories.member(team, "alice"),
        bob=factories.member(team, "bob", Membership.Role.LEAD),
        admin=factories.user("admin", is_platform_admin=True),
        a100=a100,
    )
    # Tasks left by earlier tests name rows that no longer exist. A connection of its own: the app's
    # pool belongs to whoever last configured the app.
    with celery_app.connection_for_write() as conn:
        celery_app.control.purge(connection=conn)
    worker = Worker(
        env=worker_env(
            database_url=database_url(connection.settings_dict), broker_url=settings.CELERY_BROKER_URL
        ),
        workdir=tmp_path,
        name=f"ui-{secrets.token_hex(3)}",
    )
    worker.start()
    try:
        # The approval's pre-flight reads the collector's live inventory of the cluster.
        with live_collector(cluster):
            yield org
    finally:
        worker.stop()
        Cluster.objects.update(enabled=False)
        _delete_grant_objects(testbed, list(Grant.objects.values_list("namespace", flat=True)))


@pytest.fixture
def settings_override(settings: object) -> None:
    # The approval's pre-flight checks, from the collector's inventory of the real cluster, whether the
    # pool's nodes exist and carry its taint.
    settings.PORTAL_PREFLIGHT = True  # type: ignore[attr-defined]


def request_through_the_wizard(page: Page, a100: Accelerator) -> None:
    page.get_by_role("link", name="New request").click()
    page.get_by_label("Pool class").select_option(label="Interactive inference")
    accelerator = page.get_by_label("Accelerator", exact=True)
    expect(accelerator.locator("option")).to_contain_text(
        [re.compile(r"NVIDIA A100 80GB · 80 GiB · 24 free")]
    )
    accelerator.select_option(str(a100.pk))
    page.get_by_label("GPUs", exact=True).fill("4")
    page.get_by_label("Purpose").fill("Low-latency chat for the support team")
    page.get_by_role("button", name="Submit request").click()
    page.wait_for_url(re.compile(r"/requests/\d+/$"))


def approve_in_inbox(page: Page, req: CapacityRequest) -> None:
    page.get_by_role("link", name=re.compile("^Inbox")).click()
    item = page.locator(f"#inbox-item-{req.pk}")
    item.get_by_role("button", name=f"Approve #{req.pk}").click()
    expect(item.locator(".ok")).to_contain_text(f"You approved request #{req.pk}")


def test_a_request_reaches_active_and_serves_without_a_reload(
    org: Org, live_server, browser: Browser, testbed: testbed_support.Testbed
):
    alice = signed_in(browser, live_server.url, org.alice)
    request_through_the_wizard(alice, org.a100)
    req = CapacityRequest.objects.get()
    expect(alice.locator(STATE)).to_have_text("Awaiting team lead")
    mark_document(alice)

    approve_in_inbox(signed_in(browser, live_server.url, org.bob), req)
    expect(alice.locator(STATE)).to_have_text("Awaiting platform admin")
    approve_in_inbox(signed_in(browser, live_server.url, org.admin), req)

    # The worker applies the grant to the testbed; the page follows without a reload.
    expect(alice.locator(STATE)).to_have_text("Active", timeout=60_000)
    grant = Grant.objects.get(request=req)
    live = alice.locator("#request-live")
    expect(live).to_contain_text(
        f"Active: namespace {grant.namespace} may use 4 \N{MULTIPLICATION SIGN} NVIDIA A100 80GB."
    )
    for condition in ["QuotaEnforced", "PolicyBound", "Ready"]:
        expect(live.locator("tr.condition-true", has_text=condition)).to_have_count(1)
    expect(live).to_contain_text("Grant active")  # the timeline, from the audit log
    assert same_document(alice)
    req.refresh_from_db()
    assert req.state == RequestState.ACTIVE
    quota = ops.get(testbed.admin, "v1", "ResourceQuota", "gpu-grant", grant.namespace)
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "4"
    screenshot(alice, "request-active")

    # A model server on the grant, from its page; the same validation as the API.
    alice.get_by_role("link", name="New serving deployment").click()
    alice.get_by_label("Name").fill("chat")
    alice.get_by_label("Model", exact=True).fill("llama-3.1-8b-instruct")
    alice.get_by_label("Image").fill("docker.io/vllm/vllm-openai:latest")
    alice.get_by_label("Replicas").fill("2")
    alice.get_by_role("button", name="Create deployment").click()
    expect(alice.locator("#id_image_error")).to_contain_text("Images must come from an allowlisted registry")
    screenshot(alice, "deployment-form-error")
    alice.get_by_label("Image").fill(IMAGE)
    alice.get_by_role("button", name="Create deployment").click()
    alice.wait_for_url(re.compile(rf"/requests/{req.pk}/#grant$"))
    mark_document(alice)
    row = alice.locator("#grant tr", has_text="llama-3.1-8b-instruct")
    expect(row).to_contain_text("2 / 2", timeout=90_000)
    expect(row).to_contain_text("Ready=True")
    # Everything settled: the last poll answered 286 and the live part carries no trigger any more.
    expect(alice.locator("#request-live")).not_to_have_attribute("hx-trigger", "every 2s", timeout=10_000)
    assert same_document(alice)
    screenshot(alice, "request-active-serving")
