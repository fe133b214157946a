"""Requests that may borrow ("nominal N, may borrow up to M"), through the services and the rules:
never more nominal quota than the pool has, borrowing bounded by the pool, its batch cap and its
per-grant limit, and a grant's admission mode fixed at approval."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError

from pools.models import AdmissionMode, AdmissionPolicy, PoolClass
from portal.models import AuditEvent
from quotas import rules, services
from quotas.models import Grant
from quotas.selectors import pool_capacity
from quotas.states import RequestState as S
from tests import factories
from tests.conftest import World


@pytest.fixture
def kueue(world: World) -> World:
    """The world's cluster serves Kueue: its batch and experimentation pools queue."""
    world.batch.cluster.kueue_version = "v1beta2"
    world.batch.cluster.save()
    for pool in (world.batch, world.experimentation, world.interactive):
        pool.refresh_from_db()
    return world


def batch(w: World, gpus: int, borrow: int = 0, **fields: object):
    return factories.request(
        w.alice, w.vision, w.h100, gpus=gpus, pool_class=PoolClass.BATCH, borrow_gpus=borrow, **fields
    )


def test_an_approved_batch_request_becomes_a_queued_grant_with_its_borrowing(kueue: World) -> None:
    req = batch(kueue, 4, borrow=4)
    assert req.borrow_gpus == 4
    grant = factories.approved_grant(req, kueue.bob, kueue.admin)
    assert (grant.admission, grant.borrow_gpus, grant.gpus) == (AdmissionMode.KUEUE, 4, 4)
    assert grant.queued
    created = AuditEvent.objects.get(action="grant.created", object_id=str(grant.pk))
    assert created.after["admission"] == "kueue" and created.after["borrow_gpus"] == 4
    assert (
        AuditEvent.objects.get(action="capacity_request.created", object_id=str(req.pk)).after["borrow_gpus"]
        == 4
    )


def test_borrowing_is_never_counted_as_granted(kueue: World) -> None:
    # batch-h100: 16 GPUs, batch cap 75% = 12.
    factories.approved_grant(batch(kueue, 4, borrow=8), kueue.bob, kueue.admin)
    figures = pool_capacity(pool=kueue.batch)
    assert (figures.granted, figures.batch_granted, figures.free) == (4, 4, 12)
    # Another team's 8 nominal still fit: nominal quota is what is promised, borrowing is not.
    factories.approved_grant(
        factories.request(kueue.carol, kueue.nlp, kueue.h100, gpus=8, pool_class=PoolClass.BATCH),
        kueue.admin,
    )


def test_borrowing_is_bounded_by_the_batch_cap(kueue: World) -> None:
    with pytest.raises(ValidationError) as refused:
        batch(kueue, 8, borrow=5)
    message = refused.value.message_dict["borrow_gpus"][0]
    assert "caps batch inference at 12 GPUs, borrowed ones included" in message
    assert "borrow at most 4" in message
    assert batch(kueue, 8, borrow=4).borrow_gpus == 4


def test_borrowing_is_bounded_by_the_pools_per_grant_limit(kueue: World) -> None:
    kueue.batch.max_borrow_gpus = 2
    kueue.batch.save()
    with pytest.raises(ValidationError) as refused:
        batch(kueue, 2, borrow=3)
    assert refused.value.message_dict["borrow_gpus"] == [
        f"Pool {kueue.batch} lets a grant borrow at most 2 GPUs from its cohort."
    ]


def test_only_batch_and_experimentation_may_borrow(kueue: World) -> None:
    with pytest.raises(ValidationError) as refused:
        factories.request(kueue.alice, kueue.vision, kueue.a100, gpus=2, borrow_gpus=2)
    assert (
        "interactive and embedding grants get exactly their own"
        in refused.value.message_dict["borrow_gpus"][0]
    )


def test_a_pool_without_kueue_lends_nothing(world: World) -> None:
    assert world.batch.admission_mode == AdmissionMode.QUOTA
    with pytest.raises(ValidationError) as refused:
        batch(world, 2, borrow=2)
    assert (
        "admits work through a ResourceQuota, not a Kueue queue"
        in refused.value.message_dict["borrow_gpus"][0]
    )
    grant = factories.approved_grant(batch(world, 2), world.bob, world.admin)
    assert (grant.admission, grant.queued) == (AdmissionMode.QUOTA, False)


def test_the_mode_is_fixed_at_approval_and_a_changed_pool_refuses_borrowing_then(kueue: World) -> None:
    req = batch(kueue, 2, borrow=2)
    services.capacity_request_approve(capacity_request=req, actor=kueue.bob)
    # An admin takes the pool off Kueue before the platform stage: borrowing cannot be granted.
    kueue.batch.admission = AdmissionPolicy.QUOTA
    kueue.batch.save()
    with pytest.raises(ValidationError) as refused:
        services.capacity_request_approve(capacity_request=req, actor=kueue.admin)
    assert refused.value.code == "capacity"
    assert "lends no idle GPUs" in refused.value.message
    req.refresh_from_db()
    assert req.state == S.PENDING_PLATFORM
    # Without borrowing it is granted, as a ResourceQuota grant.
    plain = factories.approved_grant(batch(kueue, 2), kueue.bob, kueue.admin)
    assert plain.admission == AdmissionMode.QUOTA
    assert not Grant.objects.filter(request=req).exists()


def test_experimentation_queues_too(kueue: World) -> None:
    req = factories.experiment(kueue.alice, kueue.vision, kueue.mig, gpus=2, borrow_gpus=2)
    # Within the auto-approval rule: approved at once, and queued.
    assert req.state == S.APPROVED
    grant = Grant.objects.get(request=req)
    assert (grant.admission, grant.borrow_gpus) == (AdmissionMode.KUEUE, 2)


@pytest.mark.parametrize(
    ("gpus", "borrow", "queued", "max_borrow", "batch_cap_fraction", "expected"),
    [
        (4, 0, False, None, "1", None),
        (4, 4, True, None, "1", None),
        (4, 1, False, None, "1", "admits work through a ResourceQuota"),
        (4, 3, True, 2, "1", "at most 2 GPUs"),
        (12, 8, True, None, "1", "borrow at most 4"),
        (4, 8, True, None, "0.5", "caps batch inference at 8 GPUs"),
    ],
)
def test_borrow_refusal(
    gpus: int,
    borrow: int,
    queued: bool,
    max_borrow: int | None,
    batch_cap_fraction: str,
    expected: str | None,
) -> None:
    figures = rules.PoolCapacity(
        capacity=16,
        headroom=0,
        granted=0,
        batch_granted=0,
        batch_fraction=Decimal(batch_cap_fraction),
        team_granted=0,
        max_per_team=None,
    )
    refusal = rules.borrow_refusal(
        figures,
        gpus=gpus,
        borrow=borrow,
        pool_name="c/p",
        is_batch=True,
        queued=queued,
        max_borrow=max_borrow,
    )
    assert (refusal is None) if expected is None else (refusal is not None and expected in refusal)
