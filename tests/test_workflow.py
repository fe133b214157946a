"""The approval workflow and capacity rules, through the services, on PostgreSQL."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, connections
from django.urls import reverse
from django.utils import timezone

from pools.models import PoolClass
from portal.models import AuditEvent
from quotas import services
from quotas.models import ApprovalDecision, CapacityRequest, Grant, Membership
from quotas.states import RequestState as S
from quotas.tasks import grants_expire_due
from tests import factories
from tests.conftest import World


def approve_fully(req: CapacityRequest, w: World) -> CapacityRequest:
    return factories.approved(req, w.bob, w.admin)


# --- routing ----------------------------------------------------------------------------------


def test_member_request_goes_to_lead_then_platform(world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=4)
    assert req.state == S.PENDING_LEAD
    assert req.pool == world.interactive
    services.capacity_request_approve(capacity_request=req, actor=world.bob, comment="ok")
    assert req.state == S.PENDING_PLATFORM
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    assert req.state == S.APPROVED
    grant = Grant.objects.get(request=req)
    assert (grant.gpus, grant.pool, grant.namespace) == (
        4,
        world.interactive,
        f"vision-interactive-r{req.pk}",
    )
    assert list(req.decisions.values_list("stage", "decision")) == [
        (ApprovalDecision.Stage.LEAD, "approve"),
        (ApprovalDecision.Stage.PLATFORM, "approve"),
    ]


def test_lead_request_skips_to_platform(world: World) -> None:
    req = factories.request(world.bob, world.vision, world.a100, gpus=2)
    assert req.state == S.PENDING_PLATFORM


def test_team_without_another_lead_goes_to_platform(world: World) -> None:
    req = factories.request(world.carol, world.nlp, world.a100, gpus=2)
    assert req.state == S.PENDING_PLATFORM


def test_small_experiment_is_auto_approved(world: World) -> None:
    req = factories.experiment(world.alice, world.vision, world.mig, gpus=2, days=7)
    assert req.state == S.APPROVED
    decision = req.decisions.get()
    assert (decision.stage, decision.approver) == (ApprovalDecision.Stage.AUTO, None)
    assert Grant.objects.filter(request=req, gpus=2).exists()


@pytest.mark.parametrize(("gpus", "days"), [(3, 7), (2, 8)])
def test_experiment_beyond_the_rule_needs_humans(world: World, gpus: int, days: int) -> None:
    req = factories.experiment(world.alice, world.vision, world.mig, gpus=gpus, days=days)
    assert req.state == S.PENDING_LEAD


def test_auto_approval_falls_back_to_humans_when_capacity_is_short(world: World) -> None:
    world.experimentation.capacity_gpus = 1
    world.experimentation.save()
    # Creation checks capacity too, so make room first, then take it away before submitting.
    world.experimentation.capacity_gpus = 4
    world.experimentation.save()
    draft = factories.experiment(world.alice, world.vision, world.mig, gpus=2, days=1, submit=False)
    world.experimentation.capacity_gpus = 1
    world.experimentation.save()
    services.capacity_request_submit(capacity_request=draft, actor=world.alice)
    assert draft.state == S.PENDING_LEAD
    event = AuditEvent.objects.get(action="capacity_request.submitted", object_id=str(draft.pk))
    assert "Not auto-approved" in event.message and "only 1 can be granted" in event.message


# --- who may decide ---------------------------------------------------------------------------


def test_nobody_approves_their_own_request(world: World) -> None:
    admin_in_team = factories.member(world.vision, "ada", Membership.Role.LEAD, is_platform_admin=True)
    req = factories.request(admin_in_team, world.vision, world.a100, gpus=2)
    assert req.state == S.PENDING_PLATFORM
    with pytest.raises(PermissionDenied, match="own request"):
        services.capacity_request_approve(capacity_request=req, actor=admin_in_team)
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    assert req.state == S.APPROVED


def test_lead_cannot_approve_own_request_at_lead_stage(world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=2)
    assert req.state == S.PENDING_LEAD
    # Alice becomes a lead while her request waits: the lead-stage role check now passes for her,
    # so only the self-approval rule stands between her and her own request.
    services.membership_set(team=world.vision, user=world.alice, role=Membership.Role.LEAD, actor=world.admin)
    with pytest.raises(PermissionDenied, match="own request"):
        services.capacity_request_approve(capacity_request=req, actor=world.alice)
    with pytest.raises(PermissionDenied, match="own request"):
        services.capacity_request_reject(capacity_request=req, actor=world.alice, comment="no")
    req.refresh_from_db()
    assert req.state == S.PENDING_LEAD
    services.capacity_request_approve(capacity_request=req, actor=world.bob)
    assert req.state == S.PENDING_PLATFORM


def test_the_lead_approver_cannot_also_approve_at_the_platform_stage(world: World) -> None:
    lead_admin = factories.member(world.vision, "ada", Membership.Role.LEAD, is_platform_admin=True)
    req = factories.request(world.alice, world.vision, world.a100, gpus=2)
    services.capacity_request_approve(capacity_request=req, actor=lead_admin)
    assert req.state == S.PENDING_PLATFORM
    with pytest.raises(PermissionDenied, match="a different person must approve at the platform stage"):
        services.capacity_request_approve(capacity_request=req, actor=lead_admin)
    req.refresh_from_db()
    assert req.state == S.PENDING_PLATFORM
    assert not Grant.objects.filter(request=req).exists()
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    assert req.state == S.APPROVED


def _end_window(req: CapacityRequest, ago: timedelta = timedelta(minutes=1)) -> None:
    now = timezone.now()
    CapacityRequest.objects.filter(pk=req.pk).update(starts_at=now - timedelta(days=2), ends_at=now - ago)


@pytest.mark.parametrize("stage", [S.PENDING_LEAD, S.PENDING_PLATFORM])
def test_approval_is_refused_once_the_window_has_ended(world: World, stage: str) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=2)
    approver = world.bob
    if stage == S.PENDING_PLATFORM:
        services.capacity_request_approve(capacity_request=req, actor=world.bob)
        approver = world.admin
    _end_window(req)
    with pytest.raises(ValidationError) as exc:
        services.capacity_request_approve(capacity_request=req, actor=approver)
    assert exc.value.code == "window_ended"
    assert "window ended" in exc.value.messages[0] and "can no longer be approved" in exc.value.messages[0]
    req.refresh_from_db()
    assert req.state == stage
    assert not Grant.objects.filter(request=req).exists()


def test_a_draft_whose_window_ended_is_not_auto_approved(world: World) -> None:
    draft = factories.experiment(world.alice, world.vision, world.mig, gpus=2, days=1, submit=False)
    _end_window(draft)
    with pytest.raises(ValidationError) as exc:
        services.capacity_request_submit(capacity_request=draft, actor=world.alice)
    assert exc.value.code == "window_ended"
    assert not Grant.objects.filter(request=draft).exists()


def test_member_and_other_team_lead_cannot_approve(world: World) -> None:
    nlp_lead = factories.member(world.nlp, "nina", Membership.Role.LEAD)
    req = factories.request(world.alice, world.vision, world.a100, gpus=2)
    for actor in (world.carol, nlp_lead, world.admin):
        with pytest.raises(PermissionDenied, match="lead of team vision"):
            services.capacity_request_approve(capacity_request=req, actor=actor)
    services.capacity_request_approve(capacity_request=req, actor=world.bob)
    with pytest.raises(PermissionDenied, match="platform admin"):
        services.capacity_request_approve(capacity_request=req, actor=world.bob)


def test_reject_needs_a_comment_and_is_final(world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=2)
    with pytest.raises(ValidationError) as exc:
        services.capacity_request_reject(capacity_request=req, actor=world.bob, comment=" ")
    assert "comment" in exc.value.message_dict
    services.capacity_request_reject(capacity_request=req, actor=world.bob, comment="use the batch pool")
    assert req.state == S.REJECTED
    with pytest.raises(ValidationError, match="only pending requests"):
        services.capacity_request_approve(capacity_request=req, actor=world.admin)


def test_cancel(world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=2)
    with pytest.raises(PermissionDenied):
        services.capacity_request_cancel(capacity_request=req, actor=world.carol)
    services.capacity_request_cancel(capacity_request=req, actor=world.alice)
    assert req.state == S.CANCELLED
    with pytest.raises(ValidationError, match="cancelled"):
        services.capacity_request_cancel(capacity_request=req, actor=world.alice)


def test_non_member_cannot_request_for_a_team(world: World) -> None:
    with pytest.raises(PermissionDenied, match="not a member of team vision"):
        factories.request(world.carol, world.vision, world.a100, gpus=1)


# --- capacity ---------------------------------------------------------------------------------


def test_capacity_refusal_names_the_numbers(world: World) -> None:
    # 32 GPUs, 8 kept as headroom: 24 grantable.
    first = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=20), world.bob, world.admin
    )
    assert first.state == S.APPROVED
    second = factories.request(world.carol, world.nlp, world.a100, gpus=4)
    third = factories.request(world.alice, world.vision, world.a100, gpus=2)
    factories.approved(second, world.bob, world.admin)
    services.capacity_request_approve(capacity_request=third, actor=world.bob)
    with pytest.raises(ValidationError) as exc:
        services.capacity_request_approve(capacity_request=third, actor=world.admin)
    assert exc.value.messages == [
        "Pool local/interactive-a100 cannot take 2 more: 24 of 32 already granted and 8 kept as "
        "warm headroom, "
        "so only 0 can be granted."
    ]
    third.refresh_from_db()
    assert third.state == S.PENDING_PLATFORM


def test_request_larger_than_any_pool_is_refused_at_creation(world: World) -> None:
    with pytest.raises(ValidationError) as exc:
        factories.request(world.alice, world.vision, world.a100, gpus=25)
    assert "only 24 can be granted" in exc.value.message_dict["gpus"][0]
    assert not CapacityRequest.objects.exists()


def test_batch_is_capped_at_the_pool_batch_fraction(world: World) -> None:
    # The interactive pool lends a quarter of its 32 GPUs to batch work.
    world.interactive.batch_fraction = Decimal("0.25")
    world.interactive.save()
    world.batch.delete()
    batch = approve_fully(
        factories.request(world.alice, world.vision, world.a100, gpus=8, pool_class=PoolClass.BATCH), world
    )
    assert batch.pool == world.interactive and batch.state == S.APPROVED
    with pytest.raises(ValidationError) as exc:
        factories.request(world.carol, world.nlp, world.a100, gpus=1, pool_class=PoolClass.BATCH)
    assert "caps batch inference at 25% of 32 = 8; 8 already granted to batch" in exc.value.messages[0]
    # Interactive work still fits: the cap protects it.
    approve_fully(factories.request(world.carol, world.nlp, world.a100, gpus=4), world)


def test_max_per_team(world: World) -> None:
    world.interactive.max_gpus_per_team = 6
    world.interactive.save()
    factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=4), world.bob, world.admin
    )
    with pytest.raises(ValidationError, match="at most 6 per team; the team already holds 4"):
        factories.request(world.alice, world.vision, world.a100, gpus=3)


def test_memory_fit_refusal_suggests_types_that_fit(world: World) -> None:
    # 70B at bf16 needs ~156 GiB: two 80 GB GPUs per replica, never one L4.
    world.embedding.pool_class = PoolClass.INTERACTIVE
    world.embedding.save()
    with pytest.raises(ValidationError) as exc:
        factories.request(
            world.alice,
            world.vision,
            world.l4,
            gpus=2,
            gpus_per_replica=2,
            model_parameters_billion=Decimal("70"),
            model_precision="bf16",
        )
    msg = exc.value.message_dict["accelerator"][0]
    assert "needs about 156.5 GiB per replica" in msg
    assert "2 x NVIDIA L4 24GB offers 48 GiB" in msg
    assert "Types that fit with 2 per replica: NVIDIA A100 80GB." in msg
    ok = factories.request(
        world.alice,
        world.vision,
        world.a100,
        gpus=2,
        gpus_per_replica=2,
        model_parameters_billion=Decimal("70"),
        model_precision="bf16",
    )
    assert ok.state == S.PENDING_LEAD


def test_bad_input_gives_field_errors(world: World) -> None:
    now = timezone.now()
    with pytest.raises(ValidationError) as exc:
        factories.request(
            world.alice, world.vision, world.a100, gpus=2, starts_at=now, ends_at=now - timedelta(1)
        )
    assert exc.value.message_dict["ends_at"][0] == "The end must be after the start."
    with pytest.raises(ValidationError) as exc:
        factories.request(world.alice, world.vision, world.h100, gpus=2)
    assert (
        "No pool offers NVIDIA H100 80GB for interactive inference"
        in exc.value.message_dict["accelerator"][0]
    )
    with pytest.raises(ValidationError) as exc:
        factories.request(world.alice, world.vision, world.a100, gpus=2, model_parameters_billion=Decimal(7))
    assert "model_precision" in exc.value.message_dict


@pytest.mark.django_db(transaction=True)
def test_concurrent_approvals_for_the_last_gpus_one_wins(world: World) -> None:
    """Two admins approve two requests for the same last 12 GPUs at the same moment."""
    assert connection.vendor == "postgresql"
    first = factories.request(world.carol, world.nlp, world.a100, gpus=12)
    second = factories.request(world.carol, world.nlp, world.a100, gpus=12)
    factories.approved(
        factories.request(world.bob, world.vision, world.a100, gpus=12), world.bob, world.admin
    )
    admin2 = factories.user("admin2", is_platform_admin=True)
    barrier = threading.Barrier(2)
    results: dict[int, str] = {}

    def decide(req: CapacityRequest, actor: object) -> None:
        try:
            barrier.wait()
            services.capacity_request_approve(capacity_request=req, actor=actor)
            results[req.pk] = "approved"
        except ValidationError as exc:
            results[req.pk] = exc.messages[0]
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=decide, args=(r, a)) for r, a in ((first, world.admin), (second, admin2))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted(results.values(), key=lambda v: v != "approved")
    assert outcomes[0] == "approved"
    assert "only 0 can be granted" in outcomes[1]
    assert Grant.objects.filter(pool=world.interactive).count() == 2
    assert sum(Grant.objects.values_list("gpus", flat=True)) == 24


# --- grants -----------------------------------------------------------------------------------


def test_expiry_task_expires_only_grants_past_their_end(world: World) -> None:
    now = timezone.now()
    short = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=2), world.bob, world.admin
    )
    long_ = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=2), world.bob, world.admin
    )
    Grant.objects.filter(request=short).update(ends_at=now - timedelta(minutes=1))
    expired = grants_expire_due.apply().get()
    assert expired == [short.grant.pk]
    short.refresh_from_db()
    long_.refresh_from_db()
    assert (short.state, long_.state) == (S.EXPIRED, S.APPROVED)
    assert short.grant.generation == 2
    assert AuditEvent.objects.filter(
        action="grant.expired", object_id=str(short.grant.pk), actor=None
    ).exists()
    assert grants_expire_due.apply().get() == []


def test_expiry_task_expires_pending_requests_whose_window_ended(world: World) -> None:
    at_lead = factories.request(world.alice, world.vision, world.a100, gpus=2)
    at_platform = factories.request(world.bob, world.vision, world.a100, gpus=2)
    still_open = factories.request(world.alice, world.vision, world.a100, gpus=2)
    _end_window(at_lead)
    _end_window(at_platform)
    assert grants_expire_due.apply().get() == []
    states = dict(CapacityRequest.objects.values_list("pk", "state"))
    assert states == {at_lead.pk: S.EXPIRED, at_platform.pk: S.EXPIRED, still_open.pk: S.PENDING_LEAD}
    events = AuditEvent.objects.filter(action="capacity_request.expired").order_by("object_id")
    assert [(e.object_id, e.actor, e.before["state"], e.after["state"]) for e in events] == [
        (str(at_lead.pk), None, S.PENDING_LEAD, S.EXPIRED),
        (str(at_platform.pk), None, S.PENDING_PLATFORM, S.EXPIRED),
    ]
    grants_expire_due.apply().get()
    assert AuditEvent.objects.filter(action="capacity_request.expired").count() == 2


# --- shrink -----------------------------------------------------------------------------------

IMAGE = "registry.example.com/llm/vllm:v0.6.3"


def test_only_platform_admins_shrink(world: World) -> None:
    grant = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=8), world.bob, world.admin
    ).grant
    for actor in (world.alice, world.bob, world.auditor):
        with pytest.raises(PermissionDenied, match="Only a platform admin can shrink"):
            services.grant_shrink(grant=grant, actor=actor, gpus=4)
    grant.refresh_from_db()
    assert (grant.gpus, grant.generation) == (8, 1)


@pytest.mark.parametrize(
    ("gpus", "wanted"),
    [(0, "between 1 and 7"), (-1, "revoke it"), (8, "between 1 and 7"), (9, "new request")],
)
def test_shrink_bounds_are_field_errors(world: World, gpus: int, wanted: str) -> None:
    grant = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=8), world.bob, world.admin
    ).grant
    with pytest.raises(ValidationError) as exc:
        services.grant_shrink(grant=grant, actor=world.admin, gpus=gpus)
    assert wanted in exc.value.message_dict["gpus"][0]
    grant.refresh_from_db()
    assert grant.gpus == 8


def test_shrink_refuses_below_what_live_deployments_need_and_names_them(world: World) -> None:
    grant = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=8), world.bob, world.admin
    ).grant
    for name, replicas in (("chat", 2), ("embed", 1), ("gone", 1)):
        services.serving_deployment_create(
            grant=grant,
            actor=world.alice,
            name=name,
            model_name="m",
            image=IMAGE,
            replicas=replicas,
            gpus_per_replica=2,
        )
    services.serving_deployment_delete(deployment=grant.deployments.get(name="gone"), actor=world.alice)
    with pytest.raises(ValidationError) as exc:
        services.grant_shrink(grant=grant, actor=world.admin, gpus=5)
    message = exc.value.message_dict["gpus"][0]
    assert "need 6 GPUs: chat (2 x 2), embed (1 x 2)" in message
    assert "gone" not in message
    grant.refresh_from_db()
    assert (grant.gpus, grant.generation) == (8, 1)
    # Deleted deployments do not count: 6 is exactly what the live ones use.
    services.grant_shrink(grant=grant, actor=world.admin, gpus=6)
    grant.refresh_from_db()
    assert grant.gpus == 6


def test_shrink_lowers_the_grant_audits_it_and_frees_capacity(
    world: World, django_capture_on_commit_callbacks
) -> None:
    req = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=24), world.bob, world.admin
    )
    with django_capture_on_commit_callbacks() as callbacks:
        services.grant_shrink(grant=req.grant, actor=world.admin, gpus=20)
    grant = Grant.objects.get(pk=req.grant.pk)
    assert (grant.gpus, grant.generation) == (20, 2)
    assert len(callbacks) == 1  # the reconcile, queued once the shrink is committed
    event = AuditEvent.objects.get(action="grant.shrunk", object_id=str(grant.pk))
    assert (event.actor, event.before, event.after) == (world.admin, {"gpus": 24}, {"gpus": 20})
    assert event.team == world.vision
    # The pool had 0 left; the 4 given back can be granted again.
    assert (
        factories.approved(
            factories.request(world.carol, world.nlp, world.a100, gpus=4), world.bob, world.admin
        ).state
        == S.APPROVED
    )


def test_an_ended_grant_cannot_be_shrunk(world: World) -> None:
    req = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=8), world.bob, world.admin
    )
    services.grant_revoke(grant=req.grant, actor=world.admin, reason="done")
    with pytest.raises(ValidationError, match="only a running grant can be shrunk"):
        services.grant_shrink(grant=req.grant, actor=world.admin, gpus=4)


def test_admins_shrink_from_the_request_page(world: World, client) -> None:
    req = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=8), world.bob, world.admin
    )
    url = reverse("quotas:grant_shrink", args=[req.grant.pk])
    client.force_login(world.alice)
    page = client.get(reverse("quotas:request_detail", args=[req.pk])).content.decode()
    assert url not in page
    client.post(url, {"gpus": "4"})
    assert Grant.objects.get(pk=req.grant.pk).gpus == 8

    client.force_login(world.admin)
    page = client.get(reverse("quotas:request_detail", args=[req.pk])).content.decode()
    assert f'action="{url}"' in page
    response = client.post(url, {"gpus": "12"}, follow=True)
    assert "Shrink to between 1 and 7 GPUs" in response.content.decode()
    response = client.post(url, {"gpus": "4"}, follow=True)
    assert "shrunk to 4 GPUs" in response.content.decode()
    assert Grant.objects.get(pk=req.grant.pk).gpus == 4


def test_revoke_frees_capacity_and_only_admins_revoke(world: World) -> None:
    req = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=24), world.bob, world.admin
    )
    with pytest.raises(PermissionDenied):
        services.grant_revoke(grant=req.grant, actor=world.bob, reason="x")
    services.grant_revoke(grant=req.grant, actor=world.admin, reason="over budget")
    req.refresh_from_db()
    assert req.state == S.REVOKED
    assert (
        factories.approved(
            factories.request(world.carol, world.nlp, world.a100, gpus=24), world.bob, world.admin
        ).state
        == S.APPROVED
    )
    with pytest.raises(ValidationError, match="already revoked"):
        services.grant_revoke(grant=req.grant, actor=world.admin, reason="again")


def test_every_change_writes_one_audit_row(world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=2)
    services.capacity_request_approve(capacity_request=req, actor=world.bob)
    services.capacity_request_approve(capacity_request=req, actor=world.admin)
    services.grant_revoke(grant=req.grant, actor=world.admin, reason="done")
    events = list(
        AuditEvent.objects.order_by("id").values_list(
            "action", "actor__username", "before__state", "after__state"
        )
    )
    assert events == [
        ("capacity_request.created", "alice", None, "draft"),
        ("capacity_request.submitted", "alice", "draft", "pending_lead"),
        ("capacity_request.lead_approved", "bob", "pending_lead", "pending_platform"),
        ("capacity_request.approved", "admin", "pending_platform", "approved"),
        ("grant.created", "admin", None, None),
        ("grant.revoked", "admin", "approved", "revoked"),
    ]
    assert set(AuditEvent.objects.values_list("team__slug", flat=True)) == {"vision"}


@pytest.mark.django_db(transaction=True)
def test_audit_outside_a_transaction_is_refused() -> None:
    from portal.services import audit_event_record

    team = factories.team("lonely")
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_event_record(actor=None, action="team.touched", obj=team)
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_batched_inserts_are_written_with_their_transaction() -> None:
    from django.db import transaction

    from portal.services import audit_event_record, inserts_batched

    team = factories.team("batched")
    with pytest.raises(RuntimeError, match="inside the transaction"), inserts_batched():
        pass
    with transaction.atomic(), inserts_batched() as pending:
        audit_event_record(actor=None, action="team.touched", obj=team)
        audit_event_record(actor=None, action="team.touched_again", obj=team)
        assert len(pending) == 2 and not AuditEvent.objects.exists()  # not yet: when the block ends
    assert sorted(AuditEvent.objects.values_list("action", flat=True)) == [
        "team.touched",
        "team.touched_again",
    ]
    with pytest.raises(LookupError), transaction.atomic(), inserts_batched():
        audit_event_record(actor=None, action="team.lost", obj=team)
        raise LookupError("the change failed")
    assert not AuditEvent.objects.filter(action="team.lost").exists()


# --- Django admin -----------------------------------------------------------------------------


def test_grant_and_deployment_admin_pages_are_read_only(world: World, client) -> None:
    req = factories.approved(
        factories.request(world.alice, world.vision, world.a100, gpus=8), world.bob, world.admin
    )
    deployment = services.serving_deployment_create(
        grant=req.grant, actor=world.alice, name="chat", model_name="m", image=IMAGE
    )
    superuser = factories.user("root", is_platform_admin=True, is_staff=True, is_superuser=True)
    client.force_login(superuser)
    for obj, model in ((req.grant, "grant"), (deployment, "servingdeployment")):
        change = reverse(f"admin:quotas_{model}_change", args=[obj.pk])
        page = client.get(change)
        assert page.status_code == 200
        assert 'name="_save"' not in page.content.decode()
        assert client.post(change, {"gpus": "1", "replicas": "9"}).status_code == 403
        assert client.get(reverse(f"admin:quotas_{model}_add")).status_code == 403
    grant = Grant.objects.get(pk=req.grant.pk)
    assert (grant.gpus, grant.generation) == (8, 1)
    deployment.refresh_from_db()
    assert deployment.replicas == 1


def test_cluster_admin_form_never_echoes_a_pasted_kubeconfig(world: World, client) -> None:
    superuser = factories.user("root", is_platform_admin=True, is_staff=True, is_superuser=True)
    client.force_login(superuser)
    secret = "apiVersion: v1\nusers:\n- user:\n    token: sup3r-s3cret-t0ken\n"
    # An invalid name makes the admin re-render the form with what was posted.
    response = client.post(
        reverse("admin:pools_cluster_add"), {"name": "", "kubeconfig": secret, "zones": "[]"}
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "errorlist" in page
    assert "sup3r-s3cret-t0ken" not in page
