"""What users see of queued grants, from the collector's tables (no cluster): the grant page's queue
with positions and estimated starts, Kueue's outage explained, the team page, the pool's cohort,
the approval's cohort state and the API."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from pools.models import KueueStatus, PoolClass
from pools.utilisation.queue_watch import QueueWatch
from quotas.models import Grant
from tests import factories
from tests.provisioning.test_queue_manifests import batch_grant
from tests.ui.conftest import htmx
from tests.utilisation.test_queues import cluster_queue, workload


@pytest.fixture
def kueue_world(world):
    cluster = world.batch.cluster
    cluster.kueue_version = "v1beta2"
    cluster.save()
    world.batch.batch_fraction, world.batch.capacity_gpus = 1, 32  # all batch, room for more
    world.batch.save()
    world.batch.refresh_from_db()
    vision = batch_grant(world, 8, "vision-batch-r1", admission="kueue", borrow_gpus=8)
    nlp_request = factories.request(world.carol, world.nlp, world.h100, gpus=8, pool_class=PoolClass.BATCH)
    nlp = Grant.objects.create(
        request=nlp_request,
        team=world.nlp,
        pool=world.batch,
        gpus=8,
        admission="kueue",
        namespace="nlp-batch-r2",
        starts_at=timezone.now(),
        ends_at=timezone.now() + timedelta(days=1),
    )
    type(nlp_request).objects.filter(pk=nlp_request.pk).update(state="active", pool=world.batch)
    # vision borrows nlp's idle 8: two Jobs run, two wait.
    now = datetime.now(UTC)

    def ago(seconds: float) -> float:
        return (
            datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC) - (now - timedelta(seconds=seconds))
        ).total_seconds()

    workloads = [
        workload("train-0", "vision-batch-r1", 8, created=ago(600), admitted=ago(540)),
        workload("train-1", "vision-batch-r1", 8, created=ago(600), admitted=ago(300)),
        workload("train-2", "vision-batch-r1", 8, created=ago(400)),
        workload("train-3", "vision-batch-r1", 8, created=ago(200)),
    ]
    queues = [
        cluster_queue("vision-batch-r1", 8, used=16, borrowed=8, borrow=8),
        cluster_queue("nlp-batch-r2", 8),
    ]
    QueueWatch(cluster, interval=60)._publish_figures(workloads, queues, now)
    return world, vision, nlp


def test_the_grant_page_lists_pending_jobs_with_positions_waits_and_estimated_starts(kueue_world, login):
    world, vision, _ = kueue_world
    page = login(world.alice).get(f"/requests/{vision.request_id}/").content.decode()
    queue = page[page.index('id="grant-queue"') :]
    assert "kueue.x-k8s.io/queue-name: gpu-grant" in queue
    assert "may borrow up to 8 more from the pool's cohort" in page
    assert "16 GPUs (8 borrowed from the cohort)" in queue
    rows = queue[queue.index("<tbody>") : queue.index("</tbody>")]
    assert rows.index("train-2") < rows.index("train-3") < rows.index("train-0")
    assert (
        '<td class="num">1</td><td>train-2</td>' in rows and '<td class="num">2</td><td>train-3</td>' in rows
    )
    # Two admissions in the last 30 minutes (the first 9 minutes ago): a rate, hence an estimate.
    assert "UTC</td>" in rows and "unknown" not in rows
    assert "Estimated start = now + position ÷ rate" in queue
    assert "is not answering" not in queue


def test_kueue_not_answering_is_explained_on_the_grant_page(kueue_world, login):
    world, vision, _ = kueue_world
    KueueStatus.objects.create(
        cluster=world.batch.cluster,
        heartbeat_at=timezone.now(),
        webhook_ok=False,
        webhook_failing_since=timezone.now(),
        webhook_message='failed calling webhook "mjob.kueue.x-k8s.io": connection refused',
    )
    response = login(world.alice).get(f"/requests/{vision.request_id}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert f"Kueue on cluster {world.batch.cluster.name} is not answering" in page
    assert "failed calling webhook &quot;mjob.kueue.x-k8s.io&quot;" in page


def test_the_queue_section_polls_and_stops_once_the_grant_ended_and_nothing_runs(kueue_world, login):
    world, vision, nlp = kueue_world
    alice = login(world.alice)
    assert alice.get(f"/grants/{vision.pk}/queue/", **htmx("grant-queue")).status_code == 200
    type(nlp.request).objects.filter(pk=nlp.request_id).update(state="revoked")
    carol = login(world.carol)
    assert carol.get(f"/grants/{nlp.pk}/queue/", **htmx("grant-queue")).status_code == 286
    # Another team's queue is not found, like its grant.
    assert carol.get(f"/grants/{vision.pk}/queue/").status_code == 404


def test_the_team_page_shows_its_queued_work(kueue_world, login):
    world, vision, _ = kueue_world
    page = login(world.alice).get("/team/vision/").content.decode()
    section = page[page.index('id="team-queues"') :]
    row = section[section.index(vision.namespace) : section.index("</tr>", section.index(vision.namespace))]
    numbers = '<td class="num">8</td><td class="num">16</td><td class="num">8</td><td class="num">0</td>'
    assert numbers in row  # nominal, in use, borrowed, lent
    assert '<td class="num">2</td><td class="num">2</td>' in row  # admitted, pending


def test_the_pool_page_shows_the_cohort_per_team_and_only_visible_teams_by_name(kueue_world, login):
    world, _, _ = kueue_world
    admin_page = login(world.admin).get(f"/utilisation/pools/{world.batch.pk}/").content.decode()
    cohort = admin_page[admin_page.index('id="pool-cohort"') :]
    assert "2 queues: 16 GPUs nominal, 16 in use (8 borrowed, 8 lent), 0 idle" in cohort
    assert "vision" in cohort and "nlp" in cohort
    alice_page = login(world.alice).get(f"/utilisation/pools/{world.batch.pk}/", **htmx("pool-cohort"))
    partial = alice_page.content.decode()
    assert 'id="pool-cohort"' in partial and "GPUs by node" not in partial
    assert "vision" in partial and "nlp" not in partial
    assert "1 other team in the cohort" in partial


def test_the_approval_shows_the_cohort_state(kueue_world, login):
    world, _, _ = kueue_world
    factories.request(world.bob, world.vision, world.h100, gpus=2, pool_class=PoolClass.BATCH, borrow_gpus=2)
    page = login(world.admin).get("/inbox/").content.decode()
    assert "Jobs queue through Kueue: 2 nominal, may borrow up to 2 more" in page
    assert "Cohort now: 2 queues, 16 GPUs nominal, 16 in use (8 borrowed), 2 Jobs pending" in page


def test_the_api_gives_a_grants_queue_to_its_team_only(kueue_world):
    world, vision, _ = kueue_world
    api = APIClient()
    api.force_authenticate(world.alice)
    body = api.get(f"/api/v1/grants/{vision.pk}/queue/").json()
    assert (body["cluster_queue"], body["local_queue"], body["nominal_gpus"], body["borrowed_gpus"]) == (
        "vision-batch-r1",
        "gpu-grant",
        8,
        8,
    )
    pending = [w for w in body["workloads"] if w["state"] == "pending"]
    assert [(w["job"], w["position"]) for w in pending] == [("train-2", 1), ("train-3", 2)]
    assert all(w["eta"] for w in pending) and body["kueue_webhook_ok"] is None
    grant = api.get(f"/api/v1/grants/{vision.pk}/").json()
    assert (grant["admission"], grant["borrow_gpus"], grant["local_queue"]) == ("kueue", 8, "gpu-grant")
    carol = APIClient()
    carol.force_authenticate(world.carol)
    assert carol.get(f"/api/v1/grants/{vision.pk}/queue/").status_code == 404


def test_the_api_answers_404_for_a_grant_that_does_not_queue(world):
    grant = factories.approved_grant(
        factories.request(world.bob, world.vision, world.a100, gpus=2), world.admin
    )
    api = APIClient()
    api.force_authenticate(world.bob)
    answer = api.get(f"/api/v1/grants/{grant.pk}/queue/")
    assert answer.status_code == 404
    assert "does not queue through Kueue" in answer.json()["message"]


def test_a_request_may_ask_to_borrow_through_the_api(kueue_world):
    world, _, _ = kueue_world
    api = APIClient()
    api.force_authenticate(world.alice)
    ends = (timezone.now() + timedelta(days=2)).isoformat()
    body = {"team": "vision", "pool_class": "batch-inference", "accelerator": "h100-80gb", "gpus": 4}
    created = api.post(
        "/api/v1/capacity-requests/",
        {**body, "borrow_gpus": 4, "ends_at": ends, "purpose": "eval"},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["borrow_gpus"] == 4
    refused = api.post(
        "/api/v1/capacity-requests/",
        {**body, "borrow_gpus": 40, "ends_at": ends, "purpose": "eval"},
        format="json",
    )
    assert refused.status_code == 400
    assert "borrow_gpus" in str(refused.json())
