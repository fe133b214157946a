"""The request-to-grant workflow end to end through the API, with the services doing the work."""

from collections.abc import Callable
from datetime import timedelta

from django.utils import timezone
from rest_framework.test import APIClient

from pools.models import ClusterUtilisation, CollectorState, PoolUtilisation
from portal.models import AuditEvent
from quotas.models import Grant
from quotas.states import RequestState
from tests.api.conftest import request_body
from tests.api.test_tokens import assert_error
from tests.conftest import World

Api = Callable[[str], APIClient]


def test_request_lead_and_platform_approval_make_a_grant(api: Api, world: World) -> None:
    created = api("alice").post("/api/v1/capacity-requests/", request_body(world), format="json")
    assert created.status_code == 201, created.content
    req = created.json()
    assert req["state"] == RequestState.PENDING_LEAD
    assert req["requester"] == "alice" and req["pool"] == world.interactive.pk and req["grant"] is None

    assert [r["id"] for r in api("bob").get("/api/v1/capacity-requests/inbox/").json()["results"]] == [
        req["id"]
    ]
    assert api("admin").get("/api/v1/capacity-requests/inbox/").json()["count"] == 0
    assert api("alice").get("/api/v1/capacity-requests/inbox/").json()["count"] == 0

    lead = api("bob").post(
        f"/api/v1/capacity-requests/{req['id']}/approve/", {"comment": "ok"}, format="json"
    )
    assert lead.status_code == 200 and lead.json()["state"] == RequestState.PENDING_PLATFORM
    final = api("admin").post(f"/api/v1/capacity-requests/{req['id']}/approve/", {}, format="json").json()
    assert final["state"] == RequestState.APPROVED
    assert [(d["stage"], d["approver"]) for d in final["decisions"]] == [
        ("lead", "bob"),
        ("platform", "admin"),
    ]

    grant = api("alice").get(f"/api/v1/grants/{final['grant']}/").json()
    assert grant["namespace"] == f"vision-interactive-r{req['id']}"
    assert grant["gpus"] == 4 and grant["state"] == RequestState.APPROVED and grant["team"] == "vision"
    assert Grant.objects.get(pk=final["grant"]).request_id == req["id"]

    pools = api("alice").get(f"/api/v1/pools/{world.interactive.pk}/").json()["figures"]
    assert pools["granted_gpus"] == 4 and pools["free_gpus"] == 32 - 8 - 4
    team = api("alice").get("/api/v1/capacity/teams/").json()["results"]
    assert team == [
        {
            "team": "vision",
            "name": "Vision",
            "granted_gpus": 4,
            "grants": 1,
            "hourly_cost": "10.000",
            "pools": [
                {
                    "pool": world.interactive.pk,
                    "name": "local/interactive-a100",
                    "accelerator": "a100-80gb",
                    "gpus": 4,
                    "grants": 1,
                    "hourly_cost": "10.000",
                }
            ],
        }
    ]
    actions = list(AuditEvent.objects.order_by("id").values_list("action", flat=True))
    assert "capacity_request.approved" in actions and "grant.created" in actions


def test_auto_approval_within_the_rule(api: Api, world: World) -> None:
    body = request_body(world, pool_class="experimentation", accelerator=world.mig.slug, gpus=2)
    del body["starts_at"]  # defaults to now
    body["ends_at"] = (timezone.now() + timedelta(days=3)).isoformat()
    req = api("alice").post("/api/v1/capacity-requests/", body, format="json").json()
    assert req["state"] == RequestState.APPROVED and req["grant"] is not None
    assert req["decisions"][0]["stage"] == "auto"


def test_reject_needs_a_comment_and_is_final(api: Api, world: World) -> None:
    req = api("alice").post("/api/v1/capacity-requests/", request_body(world), format="json").json()
    body = assert_error(
        api("bob").post(f"/api/v1/capacity-requests/{req['id']}/reject/", {"comment": "  "}, format="json"),
        400,
        "invalid",
    )
    assert list(body["fields"]) == ["comment"]
    rejected = api("bob").post(
        f"/api/v1/capacity-requests/{req['id']}/reject/", {"comment": "use batch"}, format="json"
    )
    assert rejected.json()["state"] == RequestState.REJECTED
    assert rejected.json()["decisions"][0]["comment"] == "use batch"


def test_draft_submit_and_cancel(api: Api, world: World) -> None:
    draft = (
        api("alice")
        .post("/api/v1/capacity-requests/", request_body(world, submit=False), format="json")
        .json()
    )
    assert draft["state"] == RequestState.DRAFT
    assert_error(
        api("bob").post(f"/api/v1/capacity-requests/{draft['id']}/submit/"), 403, "permission_denied"
    )
    submitted = api("alice").post(f"/api/v1/capacity-requests/{draft['id']}/submit/").json()
    assert submitted["state"] == RequestState.PENDING_LEAD
    cancelled = api("alice").post(f"/api/v1/capacity-requests/{draft['id']}/cancel/").json()
    assert cancelled["state"] == RequestState.CANCELLED
    assert_error(
        api("alice").post(f"/api/v1/capacity-requests/{draft['id']}/cancel/"), 409, "invalid_transition"
    )


def test_admin_revokes_a_grant(api: Api, world: World, vision_objects) -> None:
    grant = vision_objects.grant
    assert_error(
        api("bob").post(f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "x"}, format="json"),
        403,
        "permission_denied",
    )
    body = assert_error(
        api("admin").post(f"/api/v1/grants/{grant.pk}/revoke/", {}, format="json"), 400, "invalid"
    )
    assert list(body["fields"]) == ["reason"]
    revoked = api("admin").post(
        f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "over budget"}, format="json"
    )
    assert revoked.status_code == 200 and revoked.json()["state"] == RequestState.REVOKED
    again = api("admin").post(f"/api/v1/grants/{grant.pk}/revoke/", {"reason": "again"}, format="json")
    assert_error(again, 409, "invalid_transition")


def test_admin_deletes_an_ended_grants_namespace(api: Api, world: World, vision_objects) -> None:
    url = f"/api/v1/grants/{vision_objects.grant.pk}/delete-namespace/"
    assert_error(api("admin").post(url), 409, "invalid_transition")  # still approved
    api("admin").post(f"/api/v1/grants/{vision_objects.grant.pk}/revoke/", {"reason": "done"}, format="json")
    assert_error(api("bob").post(url), 403, "permission_denied")
    deleted = api("admin").post(url)
    assert deleted.status_code == 200 and deleted.json()["namespace_deleted_at"] is not None
    assert_error(api("admin").post(url), 409, "already_deleted")


def test_filters_and_ordering(api: Api, world: World, vision_objects) -> None:
    alice = api("alice")
    pending = alice.get("/api/v1/capacity-requests/?state=pending_lead").json()["results"]
    assert [r["id"] for r in pending] == [vision_objects.pending.pk]
    both = alice.get(
        "/api/v1/capacity-requests/?state=pending_lead&state=approved&ordering=created_at"
    ).json()
    assert [r["id"] for r in both["results"]] == [vision_objects.pending.pk, vision_objects.approved.pk]
    paged = alice.get("/api/v1/capacity-requests/?page_size=1&page=2").json()
    assert paged["count"] == 2 and len(paged["results"]) == 1 and paged["previous"]
    assert alice.get(f"/api/v1/grants/?request={vision_objects.approved.pk}").json()["count"] == 1
    assert alice.get("/api/v1/grants/?state=revoked").json()["count"] == 0
    assert alice.get("/api/v1/serving-deployments/?deleted=false").json()["count"] == 1
    assert alice.get("/api/v1/accelerators/?mig=true").json()["results"][0]["slug"] == world.mig.slug
    assert alice.get("/api/v1/pools/?pool_class=batch-inference").json()["results"][0]["id"] == world.batch.pk
    audit = api("auditor").get("/api/v1/audit-events/?action=grant.created&team=vision").json()
    assert audit["count"] == 1 and audit["results"][0]["object_type"] == "quotas.grant"


def test_pools_show_live_figures_once_the_collector_reports(api: Api, world: World) -> None:
    pool = world.interactive
    assert api("alice").get(f"/api/v1/pools/{pool.pk}/").json()["live"] is None
    now = timezone.now()
    PoolUtilisation.objects.create(
        pool=pool,
        computed_at=now,
        nodes_total=4,
        nodes_ready=4,
        gpus_allocatable=32,
        gpus_requested=12,
        gpus_free=20,
    )
    cluster_state = ClusterUtilisation.objects.create(
        cluster=pool.cluster, state=CollectorState.LIVE, heartbeat_at=now
    )
    live = api("alice").get(f"/api/v1/pools/{pool.pk}/").json()["live"]
    assert live["gpus_free"] == 20 and live["gpus_requested"] == 12 and live["collector_state"] == "live"
    cluster_state.state = CollectorState.STALE
    cluster_state.save()
    assert api("alice").get(f"/api/v1/pools/{pool.pk}/").json()["live"]["collector_state"] == "stale"
