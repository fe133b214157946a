"""Object scoping and the approval rules, through the API: the same permissions as the UI."""

from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from portal.api.services import api_token_issue
from portal.models import AuditEvent
from quotas.models import CapacityRequest, Membership
from quotas.states import RequestState
from tests import factories
from tests.api.conftest import VisionObjects, request_body
from tests.api.test_tokens import assert_error
from tests.conftest import World

Api = Callable[[str], APIClient]


def vision_endpoints(v: VisionObjects, world: World) -> list[tuple[str, str]]:
    """Every endpoint that addresses one of vision's objects."""
    req, pending, grant, dep = v.approved.pk, v.pending.pk, v.grant.pk, v.deployment.pk
    return [
        ("get", f"/api/v1/teams/{world.vision.pk}/"),
        ("get", f"/api/v1/capacity-requests/{req}/"),
        ("get", f"/api/v1/capacity-requests/{pending}/"),
        ("post", f"/api/v1/capacity-requests/{pending}/approve/"),
        ("post", f"/api/v1/capacity-requests/{pending}/reject/"),
        ("post", f"/api/v1/capacity-requests/{pending}/cancel/"),
        ("post", f"/api/v1/capacity-requests/{pending}/submit/"),
        ("get", f"/api/v1/grants/{grant}/"),
        ("post", f"/api/v1/grants/{grant}/revoke/"),
        ("post", f"/api/v1/grants/{grant}/delete-namespace/"),
        ("get", f"/api/v1/serving-deployments/{dep}/"),
        ("post", f"/api/v1/serving-deployments/{dep}/scale/"),
        ("delete", f"/api/v1/serving-deployments/{dep}/"),
    ]


def test_carol_gets_404_on_every_vision_object(api: Api, vision_objects: VisionObjects, world: World) -> None:
    carol = api("carol")
    for method, path in vision_endpoints(vision_objects, world):
        response = getattr(carol, method)(path, {"comment": "x", "reason": "x", "replicas": 0}, format="json")
        assert_error(response, 404, "not_found")
    vision_objects.pending.refresh_from_db()
    assert vision_objects.pending.state == RequestState.PENDING_LEAD


def test_alice_reaches_the_same_objects(api: Api, vision_objects: VisionObjects, world: World) -> None:
    for method, path in vision_endpoints(vision_objects, world):
        if method == "get":
            assert api("alice").get(path).status_code == 200, path


LISTS = [
    "/api/v1/teams/",
    "/api/v1/capacity-requests/",
    "/api/v1/capacity-requests/inbox/",
    "/api/v1/grants/",
    "/api/v1/serving-deployments/",
    "/api/v1/capacity/teams/",
]


def test_carol_sees_none_of_visions_rows(api: Api, vision_objects: VisionObjects, world: World) -> None:
    own = factories.request(world.carol, world.nlp, world.a100, gpus=1)
    for path in LISTS:
        listed = api("carol").get(path).json()["results"]
        assert "vision" not in str(listed), path
    assert [r["id"] for r in api("carol").get("/api/v1/capacity-requests/").json()["results"]] == [own.pk]
    # Filtering by vision's slug finds nothing rather than leaking anything.
    assert api("carol").get("/api/v1/capacity-requests/?team=vision").json()["count"] == 0
    pool = api("carol").get("/api/v1/capacity/pools/").json()["results"]
    # Pool totals are public (everyone chooses among pools); who holds them is not.
    interactive = next(p for p in pool if p["pool"] == world.interactive.pk)
    assert interactive["granted_gpus"] == 2 and interactive["teams"] == []
    admin_view = api("admin").get("/api/v1/capacity/pools/").json()["results"]
    assert next(p for p in admin_view if p["pool"] == world.interactive.pk)["teams"] == [
        {"team": "vision", "gpus": 2, "grants": 1}
    ]


def test_carol_cannot_request_for_vision(api: Api, world: World) -> None:
    body = assert_error(
        api("carol").post("/api/v1/capacity-requests/", request_body(world), format="json"), 400, "invalid"
    )
    assert list(body["fields"]) == ["team"]
    assert not CapacityRequest.objects.exists()


def test_admin_who_is_not_a_member_cannot_request(api: Api, world: World) -> None:
    body = assert_error(
        api("admin").post("/api/v1/capacity-requests/", request_body(world), format="json"),
        403,
        "permission_denied",
    )
    assert "not a member" in body["message"]


def test_member_cannot_approve(api: Api, world: World) -> None:
    dave = factories.member(world.vision, "dave")
    pending = factories.request(dave, world.vision, world.a100, gpus=2)
    for action, body in [("approve", {}), ("reject", {"comment": "no"})]:
        refusal = assert_error(
            api("alice").post(f"/api/v1/capacity-requests/{pending.pk}/{action}/", body, format="json"),
            403,
            "permission_denied",
        )
        assert "Only a lead of team vision" in refusal["message"]
    pending.refresh_from_db()
    assert pending.state == RequestState.PENDING_LEAD
    assert not pending.decisions.exists()


def test_nobody_approves_their_own_request(api: Api, world: World, tokens: dict) -> None:
    # bob leads vision: his own request skips the lead stage and waits for a platform admin...
    created = api("bob").post("/api/v1/capacity-requests/", request_body(world), format="json").json()
    assert created["state"] == RequestState.PENDING_PLATFORM
    body = assert_error(
        api("bob").post(f"/api/v1/capacity-requests/{created['id']}/approve/", {}, format="json"),
        403,
        "permission_denied",
    )
    assert "own request" in body["message"]
    # ...and a platform admin's own request cannot be approved by that admin either.
    root_user = factories.member(world.vision, "root", is_platform_admin=True)
    root = APIClient()
    root.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_issue(user=root_user, name='t').raw}")
    own = root.post("/api/v1/capacity-requests/", request_body(world), format="json").json()
    assert_error(
        root.post(f"/api/v1/capacity-requests/{own['id']}/approve/", {}, format="json"),
        403,
        "permission_denied",
    )
    assert not CapacityRequest.objects.filter(state=RequestState.APPROVED).exists()


def test_auditor_reads_everything_and_changes_nothing(api: Api, vision_objects: VisionObjects) -> None:
    auditor = api("auditor")
    assert auditor.get("/api/v1/capacity-requests/").json()["count"] == 2
    assert auditor.get("/api/v1/audit-events/").json()["count"] == AuditEvent.objects.count()
    assert_error(
        auditor.post(f"/api/v1/capacity-requests/{vision_objects.pending.pk}/approve/", {}, format="json"),
        403,
        "read_only_user",
    )
    assert_error(
        auditor.post(f"/api/v1/grants/{vision_objects.grant.pk}/revoke/", {"reason": "audit"}, format="json"),
        403,
        "read_only_user",
    )


@pytest.mark.parametrize("username", ["alice", "bob", "carol"])
def test_audit_log_is_for_admins_and_auditors_only(
    api: Api, vision_objects: VisionObjects, username: str
) -> None:
    event = AuditEvent.objects.latest("id")
    assert_error(api(username).get("/api/v1/audit-events/"), 403, "permission_denied")
    assert_error(api(username).get(f"/api/v1/audit-events/{event.pk}/"), 403, "permission_denied")
    assert api("admin").get(f"/api/v1/audit-events/{event.pk}/").json()["action"] == event.action


def test_only_admins_register_or_sync_clusters(api: Api, world: World) -> None:
    cluster = world.interactive.cluster
    # Auditors are refused earlier, by the read-only rule that covers every write.
    for username, code in [
        ("alice", "permission_denied"),
        ("bob", "permission_denied"),
        ("auditor", "read_only_user"),
    ]:
        body = assert_error(
            api(username).post("/api/v1/clusters/", {"name": "x", "kubeconfig": "x"}, format="json"),
            403,
            code,
        )
        assert "admin" in body["message"] or "Auditors" in body["message"]
        assert_error(api(username).post(f"/api/v1/clusters/{cluster.pk}/sync/"), 403, code)


def test_cluster_details_are_for_admins(api: Api, world: World) -> None:
    cluster = world.interactive.cluster
    cluster.last_error = "connection refused by 10.0.0.1"
    cluster.kubeconfig = "apiVersion: v1 # secret"
    cluster.token = "secret-token-value"
    cluster.save()
    member = api("alice").get(f"/api/v1/clusters/{cluster.pk}/").json()
    assert member["api_url"] == "" and member["last_error"] == ""
    admin = api("admin").get(f"/api/v1/clusters/{cluster.pk}/").json()
    assert admin["api_url"] == cluster.api_url and admin["last_error"] == cluster.last_error
    for body in (member, admin):
        assert "secret" not in str(body) and "kubeconfig" not in body and "token" not in body


def test_disabled_pools_are_hidden_from_members(api: Api, world: World) -> None:
    world.embedding.enabled = False
    world.embedding.save()
    ids = lambda who: {p["id"] for p in api(who).get("/api/v1/pools/").json()["results"]}  # noqa: E731
    assert world.embedding.pk not in ids("alice")
    assert world.embedding.pk in ids("admin")
    assert_error(api("alice").get(f"/api/v1/pools/{world.embedding.pk}/"), 404, "not_found")


def test_auditor_in_a_team_still_changes_nothing(
    api: Api, vision_objects: VisionObjects, world: World
) -> None:
    """Team roles do not lift the auditor's read-only rule: not for requests, not for approvals."""
    Membership.objects.create(team=world.vision, user=world.auditor, role=Membership.Role.LEAD)
    auditor = api("auditor")
    created = auditor.post("/api/v1/capacity-requests/", request_body(world), format="json")
    approved = auditor.post(
        f"/api/v1/capacity-requests/{vision_objects.pending.pk}/approve/", {}, format="json"
    )
    for response in (created, approved):
        assert_error(response, 403, "read_only_user")
        assert response.json()["message"] == "Auditors can read everything but change nothing."
    assert CapacityRequest.objects.count() == 2
    vision_objects.pending.refresh_from_db()
    assert vision_objects.pending.state == RequestState.PENDING_LEAD


def test_the_old_utilisation_paths_answer_as_the_capacity_paths(
    api: Api, vision_objects: VisionObjects
) -> None:
    # Deprecated aliases: "utilisation" now means observed usage; granted capacity lives under capacity/.
    for kind in ("pools", "teams"):
        for user in ("carol", "admin"):
            old = api(user).get(f"/api/v1/utilisation/{kind}/")
            new = api(user).get(f"/api/v1/capacity/{kind}/")
            assert old.status_code == new.status_code == 200
            assert old.json() == new.json(), (kind, user)
