"""The grant page's workloads region ("why isn't it running?") and its access panel, from what the
collector wrote; the same in the API. On the testbed: tests/ui/test_workloads_testbed.py."""

import base64
from datetime import timedelta

import pytest
import yaml
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from pools.models import CollectorState
from pools.utilisation.diagnosis import Reason, State
from pools.utilisation.workloads import workloads_publish
from quotas import services
from quotas.models import Grant
from quotas.states import RequestState
from tests import factories
from tests.ui.conftest import htmx

POLL = 'hx-trigger="every 2s"'
QUOTA = 'pods "…" is forbidden: exceeded quota: gpu-grant, requested: requests.nvidia.com/gpu=3'


def active_grant(world) -> Grant:
    req = factories.request(world.bob, world.vision, world.a100, gpus=4)
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    grant = Grant.objects.get(request=req)
    type(req).objects.filter(pk=req.pk).update(state=RequestState.ACTIVE)
    Grant.objects.filter(pk=grant.pk).update(observed_generation=grant.generation)
    return Grant.objects.select_related("request").get(pk=grant.pk)


def row(name: str, state: str = State.RUNNING, problems: list | None = None) -> dict:
    return {
        "kind": "Deployment",
        "name": name,
        "state": state,
        "state_label": state.replace("_", " ").capitalize(),
        "desired": 2,
        "pods": 1,
        "ready": 1 if state != State.RUNNING else 2,
        "gpus_per_pod": {"nvidia.com/gpu": 3},
        "gpus_held": 3,
        "created": "2026-12-02T12:00:00Z",
        "problems": problems or [],
    }


def publish(grant: Grant, rows: list[dict], *, state: str = CollectorState.LIVE, **fields) -> None:
    now = fields.pop("now", timezone.now())
    workloads_publish(
        cluster_id=grant.pool.cluster_id,
        state=state,
        now=now,
        observed_at=now,
        changed={grant.namespace: rows},
        **fields,
    )


QUOTA_PROBLEM = {
    "reason": Reason.QUOTA_EXCEEDED,
    "title": "Refused by the grant's quota",
    "message": QUOTA,
    "count": 5,
    "pods": [],
}


def poll(client, grant):
    url = f"/requests/{grant.request_id}/"
    return client.get(url, **htmx("grant-workloads", f"http://testserver{url}"))


def test_the_grant_page_shows_what_is_not_running_and_why_and_keeps_following(world, login):
    grant = active_grant(world)
    alice = login(world.alice)
    page = alice.get(f"/requests/{grant.request_id}/").content.decode()
    assert "No collector watches cluster local yet" in page

    publish(grant, [])
    assert f"Nothing runs in namespace {grant.namespace} yet" in poll(alice, grant).content.decode()

    publish(grant, [row("big", State.PARTLY_RUNNING, [QUOTA_PROBLEM]), row("ok")])
    response = poll(alice, grant)
    assert response.status_code == 200
    body = response.content.decode()
    assert POLL in body and 'id="grant-workloads"' in body
    assert 'data-workload="Deployment/big" data-state="partly_running"' in body
    assert 'data-reason="QuotaExceeded"' in body and "exceeded quota: gpu-grant" in body
    assert "1 of 2 not (fully) running" in body
    assert "(5 times)" in body


def test_the_region_stops_polling_once_the_grant_ended_and_nothing_runs(world, login):
    grant = active_grant(world)
    publish(grant, [row("still-running")])
    services.grant_revoke(grant=grant, actor=world.admin, reason="done")
    alice = login(world.alice)
    assert poll(alice, grant).status_code == 200  # its own pods may outlive the grant
    publish(grant, [])
    stopped = poll(alice, grant)
    assert stopped.status_code == 286
    assert POLL not in stopped.content.decode()


def test_freshness_says_when_the_collector_or_the_cluster_went_quiet(world, login):
    grant = active_grant(world)
    alice, admin = login(world.alice), login(world.admin)
    old = timezone.now() - timedelta(minutes=5)
    publish(grant, [row("ok")], now=old)
    assert "The collector has not reported since" in poll(alice, grant).content.decode()
    publish(
        grant, [row("ok")], state=CollectorState.STALE, stale_since=old, last_error="Unreachable: no route"
    )
    stale = poll(alice, grant).content.decode()
    assert "The cluster has not answered since" in stale and "no route" not in stale
    assert "Unreachable: no route" in poll(admin, grant).content.decode()


def test_other_teams_see_neither_the_workloads_nor_the_access(world, login):
    grant = active_grant(world)
    publish(grant, [row("big", State.PARTLY_RUNNING, [QUOTA_PROBLEM])])
    carol = login(world.carol)
    assert poll(carol, grant).status_code == 404
    assert carol.get(f"/grants/{grant.pk}/kubeconfig.yaml").status_code == 404
    assert carol.get(f"/grants/{grant.pk}/example.yaml").status_code == 404


def test_the_access_panel_and_its_downloads_hold_no_secret(world, login):
    cluster = world.interactive.cluster
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    cluster.token, cluster.ca_data = "the-portals-own-token", pem
    cluster.save()
    grant = active_grant(world)
    alice = login(world.alice)
    page = alice.get(f"/requests/{grant.request_id}/").content.decode()
    assert "the-portals-own-token" not in page
    assert "https://127.0.0.1:6443" in page and grant.namespace in page and "team:vision" in page

    download = alice.get(f"/grants/{grant.pk}/kubeconfig.yaml")
    assert download["Content-Disposition"] == f'attachment; filename="{grant.namespace}-kubeconfig.yaml"'
    text = download.content.decode()
    assert "the-portals-own-token" not in text
    config = yaml.safe_load(text)
    assert config["users"] == [{"name": "local-you", "user": {}}]
    assert config["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority-data": base64.b64encode(pem.encode()).decode(),
    }
    assert config["contexts"][0]["context"]["namespace"] == grant.namespace

    example = yaml.safe_load(alice.get(f"/grants/{grant.pk}/example.yaml").content)
    spec = example["spec"]["template"]["spec"]
    assert example["metadata"]["namespace"] == grant.namespace
    assert spec["nodeSelector"] == {"accelerator.platform.example.com/pool": "interactive-a100"}
    assert spec["priorityClassName"] == "gpu-interactive-inference"
    assert spec["containers"][0]["image"] == "registry.example.com/llm/vllm:stable"
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "app.kubernetes.io/managed-by" not in example["metadata"]["labels"]


def test_the_api_answers_the_same_scoped_to_the_team(world):
    grant = active_grant(world)
    publish(grant, [row("big", State.PARTLY_RUNNING, [QUOTA_PROBLEM])])
    alice, carol = APIClient(), APIClient()
    alice.force_authenticate(world.alice)
    carol.force_authenticate(world.carol)
    answer = alice.get(f"/api/v1/grants/{grant.pk}/workloads/").json()
    assert (answer["namespace"], answer["freshness"], answer["troubled"]) == (grant.namespace, "live", 1)
    (big,) = answer["workloads"]
    assert (big["kind"], big["name"], big["state"]) == ("Deployment", "big", "partly_running")
    assert big["problems"][0]["reason"] == "QuotaExceeded" and big["problems"][0]["message"] == QUOTA
    assert carol.get(f"/api/v1/grants/{grant.pk}/workloads/").status_code == 404

    access = alice.get(f"/api/v1/grants/{grant.pk}/access/").json()
    assert (access["api_server"], access["namespace"], access["group"]) == (
        "https://127.0.0.1:6443",
        grant.namespace,
        "team:vision",
    )
    assert yaml.safe_load(access["example_manifest"]) == access["example"]
    assert carol.get(f"/api/v1/grants/{grant.pk}/access/").status_code == 404


def _queries(call) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = call()
    assert response.status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_the_grant_page_and_api_cost_the_same_queries_for_few_and_many_workloads(world, login, who):
    grant = active_grant(world)
    client = login(getattr(world, who))
    api = APIClient()
    api.force_authenticate(getattr(world, who))
    url = f"/requests/{grant.request_id}/"
    calls = [
        lambda: client.get(url),
        lambda: poll(client, grant),
        lambda: api.get(f"/api/v1/grants/{grant.pk}/workloads/"),
        lambda: api.get(f"/api/v1/grants/{grant.pk}/access/"),
    ]
    publish(grant, [row(f"w{i}", State.PARTLY_RUNNING, [QUOTA_PROBLEM]) for i in range(3)])
    few = [_queries(call) for call in calls]
    publish(grant, [row(f"w{i}", State.PARTLY_RUNNING, [QUOTA_PROBLEM]) for i in range(30)])
    # Other namespaces on the cluster are not read either.
    for n in range(10):
        workloads_publish(
            cluster_id=grant.pool.cluster_id,
            state=CollectorState.LIVE,
            now=timezone.now(),
            observed_at=timezone.now(),
            changed={f"other-{n}": [row("x")]},
        )
    assert [_queries(call) for call in calls] == few
    # The workloads region's poll (every 2 s while the page is open): the session and user, the request
    # with its few related rows, the grant, and the collector's two rows.
    assert few[1] <= 10
