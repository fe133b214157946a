"""Bulk decisions through the service: the rules of single decisions, one result per request."""

from datetime import timedelta
from unittest import mock

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pools.models import PoolClass
from portal.models import AuditEvent
from quotas import services
from quotas.models import ApprovalDecision, CapacityRequest, Grant
from quotas.services import decisions
from quotas.states import RequestState as S
from tests import factories
from tests.conftest import World

pytestmark = pytest.mark.django_db


def lead_approved(world: World, n: int, gpus: int = 1) -> list[CapacityRequest]:
    reqs = [factories.request(world.alice, world.vision, world.a100, gpus=gpus) for _ in range(n)]
    for req in reqs:
        services.capacity_request_approve(capacity_request=req, actor=world.bob)
    return reqs


def decide(actor, reqs, decision="approve", comment=""):
    return services.capacity_requests_decide(
        actor=actor, request_ids=[r.pk for r in reqs], decision=decision, comment=comment
    )


def test_bulk_final_approval_grants_each_and_audits_each(
    world: World, django_capture_on_commit_callbacks
) -> None:
    reqs = lead_approved(world, 3, gpus=2)
    with (
        mock.patch("quotas.tasks.grants_provision.delay") as queued,
        django_capture_on_commit_callbacks(execute=True),
    ):
        results = decide(world.admin, reqs, comment="batch ok")
    assert [r.outcome for r in results] == ["approved"] * 3
    assert all(r.ok for r in results)
    grants = Grant.objects.filter(request__in=reqs)
    assert sorted(g.pk for g in grants) == sorted(r.grant_id for r in results)
    # One task for the pool's grants, not one per grant.
    queued.assert_called_once_with(sorted(g.pk for g in grants))
    for req in reqs:
        req.refresh_from_db()
        assert req.state == S.APPROVED
        assert req.decisions.filter(stage=ApprovalDecision.Stage.PLATFORM, comment="batch ok").count() == 1
        actions = set(
            AuditEvent.objects.filter(
                object_id=str(req.pk), object_type="quotas.capacityrequest"
            ).values_list("action", flat=True)
        )
        assert "capacity_request.approved" in actions
    assert AuditEvent.objects.filter(action="grant.created").count() == 3


def test_headroom_is_counted_across_the_batch(world: World) -> None:
    # interactive-a100: 32 GPUs, 8 of headroom: 24 grantable; five requests of 6 fit four times.
    reqs = lead_approved(world, 5, gpus=6)
    results = decide(world.admin, reqs)
    assert [r.outcome for r in results] == ["approved"] * 4 + ["refused"]
    last = results[-1]
    assert isinstance(last.error, ValidationError) and last.error.code == "capacity"
    assert "warm headroom" in last.error.messages[0]
    assert CapacityRequest.objects.get(pk=reqs[-1].pk).state == S.PENDING_PLATFORM
    assert not Grant.objects.filter(request=reqs[-1]).exists()
    assert sum(Grant.objects.values_list("gpus", flat=True)) == 24


def test_batch_cap_and_team_maximum_hold_in_bulk(world: World) -> None:
    world.batch.max_gpus_per_team = 5
    world.batch.save()
    reqs = [
        factories.request(world.carol, world.nlp, world.h100, gpus=2, pool_class=PoolClass.BATCH)
        for _ in range(3)
    ]
    results = decide(world.admin, reqs)
    assert [r.outcome for r in results] == ["approved", "approved", "refused"]
    assert "at most 5 per team" in results[-1].error.messages[0]


def test_partial_success_mixes_stages_and_refusals(world: World) -> None:
    at_lead = factories.request(world.alice, world.vision, world.a100, gpus=1)
    at_platform = lead_approved(world, 1)[0]
    # bob is the lead: he may decide at_lead, and not at_platform (platform stage).
    results = decide(world.bob, [at_lead, at_platform])
    assert [r.outcome for r in results] == ["lead_approved", "refused"]
    assert isinstance(results[1].error, PermissionDenied)
    assert CapacityRequest.objects.get(pk=at_lead.pk).state == S.PENDING_PLATFORM
    assert CapacityRequest.objects.get(pk=at_platform.pk).state == S.PENDING_PLATFORM


def test_never_ones_own_and_the_two_person_rule(world: World) -> None:
    world.bob.is_platform_admin = True
    world.bob.save()
    by_alice = factories.request(world.alice, world.vision, world.a100, gpus=1)
    services.capacity_request_approve(capacity_request=by_alice, actor=world.bob)  # bob as lead
    by_bob = factories.request(world.bob, world.vision, world.a100, gpus=1)
    results = decide(world.bob, [by_alice, by_bob])
    assert [type(r.error) for r in results] == [PermissionDenied, PermissionDenied]
    assert "different person" in str(results[0].error)
    assert "their own request" in str(results[1].error)


def test_bulk_reject_needs_one_comment_and_rejects_each(world: World) -> None:
    reqs = lead_approved(world, 2)
    with pytest.raises(ValidationError) as exc:
        decide(world.admin, reqs, decision="reject", comment=" ")
    assert "comment" in exc.value.message_dict
    results = decide(world.admin, reqs, decision="reject", comment="not this quarter")
    assert [r.outcome for r in results] == ["rejected", "rejected"]
    assert (
        AuditEvent.objects.filter(action="capacity_request.rejected", message="not this quarter").count() == 2
    )


def test_already_decided_and_unknown_requests_are_refused_item_by_item(world: World) -> None:
    done, pending = lead_approved(world, 2)
    services.capacity_request_approve(capacity_request=done, actor=world.admin)
    results = services.capacity_requests_decide(
        actor=world.admin, request_ids=[done.pk, 999_999, pending.pk], decision="approve"
    )
    assert [r.request_id for r in results] == [done.pk, 999_999, pending.pk]
    assert [r.outcome for r in results] == ["refused", "refused", "approved"]
    assert results[0].error.code == "not_pending"
    assert isinstance(results[1].error, CapacityRequest.DoesNotExist)


def test_malformed_batches_are_refused_whole(world: World) -> None:
    req = factories.request(world.alice, world.vision, world.a100, gpus=1)
    for ids, decision in (([], "approve"), ([req.pk, req.pk], "approve"), ([req.pk], "maybe")):
        with pytest.raises(ValidationError):
            services.capacity_requests_decide(actor=world.bob, request_ids=ids, decision=decision)
    with pytest.raises(ValidationError):
        services.capacity_requests_decide(
            actor=world.bob, request_ids=list(range(1, decisions.MAX_BATCH + 2)), decision="approve"
        )
    assert CapacityRequest.objects.get(pk=req.pk).state == S.PENDING_LEAD


def test_window_ended_is_refused_like_a_single_approval(world: World) -> None:
    req = lead_approved(world, 1)[0]
    CapacityRequest.objects.filter(pk=req.pk).update(
        starts_at=timezone.now() - timedelta(days=3), ends_at=timezone.now() - timedelta(minutes=1)
    )
    (result,) = decide(world.admin, [req])
    assert result.error.code == "window_ended"


def test_preflight_runs_once_per_pool_and_refuses_that_pools_finals(world: World, settings) -> None:
    settings.PORTAL_PREFLIGHT = True
    interactive = lead_approved(world, 3)
    batch = factories.request(world.carol, world.nlp, world.h100, gpus=1, pool_class=PoolClass.BATCH)
    calls = []

    def preflight(*, pool):
        calls.append(pool.pk)
        return "Pool has no Ready node" if pool.pk == world.interactive.pk else None

    with mock.patch.object(decisions, "pool_preflight_refusal", side_effect=preflight):
        results = decide(world.admin, [*interactive, batch])
    assert sorted(calls) == sorted([world.interactive.pk, world.batch.pk])
    assert [r.outcome for r in results] == ["refused"] * 3 + ["approved"]
    assert all(r.error.code == "preflight" for r in results[:3])


def test_a_refused_item_has_written_nothing(world: World) -> None:
    # Every rule is checked before a request's first write: the refused request in the middle of a
    # pool's batch leaves no decision, grant or audit row behind, and its neighbours are granted.
    reqs = lead_approved(world, 3)
    now = timezone.now()
    CapacityRequest.objects.filter(pk=reqs[1].pk).update(
        starts_at=now - timedelta(hours=2), ends_at=now - timedelta(minutes=1)
    )
    results = decide(world.admin, reqs)
    assert [r.outcome for r in results] == ["approved", "refused", "approved"]
    assert results[1].error.code == "window_ended"
    failed = CapacityRequest.objects.get(pk=reqs[1].pk)
    assert failed.state == S.PENDING_PLATFORM
    assert not Grant.objects.filter(request=failed).exists()
    assert not failed.decisions.filter(stage=ApprovalDecision.Stage.PLATFORM).exists()
    assert not AuditEvent.objects.filter(
        object_id=str(failed.pk), action="capacity_request.approved"
    ).exists()
    for ok in (reqs[0], reqs[2]):
        assert AuditEvent.objects.filter(object_id=str(ok.pk), action="capacity_request.approved").exists()


def test_a_failing_write_aborts_its_pool_whole(world: World) -> None:
    # The writes refuse nothing; a failure among them (the database's) rolls the pool's whole
    # transaction back, its audit rows included: nothing is half-applied.
    reqs = lead_approved(world, 3)
    real = decisions._approve_final
    seen = []

    def flaky(req, **kwargs):
        seen.append(req.pk)
        if len(seen) == 2:
            real(req, **kwargs)  # the decision, the state move and the grant are written...
            raise DatabaseError("the database said no")  # ...then something fails
        return real(req, **kwargs)

    with mock.patch.object(decisions, "_approve_final", side_effect=flaky), pytest.raises(DatabaseError):
        decide(world.admin, reqs)
    for req in reqs:
        assert CapacityRequest.objects.get(pk=req.pk).state == S.PENDING_PLATFORM
    assert not Grant.objects.filter(request_id__in=reqs).exists()
    assert not AuditEvent.objects.filter(action__in=["capacity_request.approved", "grant.created"]).exists()


def test_query_count_grows_with_the_writes_not_the_reads(world: World) -> None:
    small, big = lead_approved(world, 2), lead_approved(world, 6)
    with CaptureQueriesContext(connection) as few:
        decide(world.admin, small)
    with CaptureQueriesContext(connection) as many:
        decide(world.admin, big)
    per_item = (len(many.captured_queries) - len(few.captured_queries)) / 4
    # The writes of one approval (state, grant); its decision and audit rows are inserted with the
    # pool's, and the pool, its lock, the pre-flight, the two-person rule's lookup and the capacity
    # figures are read once per pool.
    assert per_item <= 2, per_item
